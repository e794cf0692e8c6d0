"""Write a file so that it appears whole or not at all: the one temporary-file-then-rename of ppmtrack.

Every output (tracks CSV, DeepLabCut/SLEAP/NWB files, run and batch summaries, plots, annotation files, engine
files) is written to a temporary file in the destination's own folder, flushed to disk, then renamed over the
destination with ``os.replace`` (atomic on one file system). A crash or a full disk leaves the earlier file, or
none, and at most a hidden temporary file, never half a file under the real name.

The temporary file is ``.<stem>.<8 hex digits>.partial<suffix>`` beside the destination: hidden, unique per
write (two writers of one file never share it), and with the destination's suffix kept (matplotlib and pandas
choose the file type by it). It is removed if the write fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".partial"
"""What every temporary file's name holds (``.<stem>.<hex>.partial<suffix>``)."""


def temporary_path(path: str | Path) -> Path:
    """The temporary file a write of ``path`` goes to first (see the module docstring for the naming)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}{TEMP_MARK}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Give a temporary path to write ``path``'s content to; on leaving the block without an error, flush it to
    disk and rename it over ``path``. On an error the temporary file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_path(out / "clip.analysis.h5") as tmp:  # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f:
    ...         f.create_dataset("tracks", data=xy)
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def move_into_place(source: str | Path, path: str | Path) -> None:
    """Move the finished file ``source`` to ``path`` atomically: a rename where both are on one file system, else
    a copy to a temporary file beside ``path`` and a rename (``source`` is then left where it was)."""
    try:
        os.replace(source, path)
    except OSError:  # another file system
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
