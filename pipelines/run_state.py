"""The per-frame state of a file run, spilled to disk: what the final smoothing and ``track --resume`` read.

While a video file is tracked, every frame's filter inputs and outputs are appended to ``STEM.state/frames.bin``
beside the CSV: frame number, time, the detections and their confidence, the causal position and visibility,
the optical flow from the previous frame (displacement and forward-backward error) and the anchor, if that frame
is a support frame. A run's memory therefore does not grow with the length of the video: the forward-backward
smoothing at the end reads this file a window at a time (:func:`tracker.smoothing.smooth_on_disk`, its
scratch files in the same folder), and a resumed run replays the filter from it, so it continues exactly where
the interrupted run was (docs/cli.md, "Resuming").

The folder is removed when the run completes; an unfinished run keeps it for ``--resume``. Records are
fixed-size, so a record half-written by a killed run is recognised by the file's length and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ppmtrack.pipelines.outputs import STATE_SUFFIX

FRAMES_FILE = "frames.bin"
LAYOUT_FILE = "layout.json"
LAYOUT_VERSION = 1


class RunStateError(ValueError):
    """The run state folder is missing, unreadable or for other keypoints."""


def state_dir(out_dir: str | Path, stem: str) -> Path:
    """``OUT/STEM.state``: the run state folder of the output set ``stem``."""
    return Path(out_dir) / f"{stem}{STATE_SUFFIX}"


def record_dtype(k: int) -> np.dtype:
    """One frame's record for K keypoints."""
    return np.dtype([("frame", "<i8"), ("time", "<f8"), ("filter_time", "<f8"), ("raw", "<f8", (k, 2)),
                     ("confidence", "<f8", (k,)), ("xy", "<f8", (k, 2)), ("visible", "?", (k,)),
                     ("flow", "<f8", (k, 2)), ("flow_error", "<f8", (k,)), ("anchor", "<f8", (k, 2))])


class RunState:
    """Append frames to a run state folder, and read them back a window at a time.

    Parameters
    ----------
    folder : Path
        ``STEM.state``; created (emptied) unless ``keep`` frames of an earlier run are to be continued.
    names : list of str
        Keypoint names.
    keep : int, optional
        Continue an existing state: keep its first ``keep`` records and append after them.
    """

    def __init__(self, folder: str | Path, names, keep: int | None = None):
        self.folder = Path(folder)
        self.names = list(names)
        self.dtype = record_dtype(len(self.names))
        self.path = self.folder / FRAMES_FILE
        if keep is None:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            (self.folder / LAYOUT_FILE).write_text(json.dumps({
                "version": LAYOUT_VERSION, "keypoints": self.names, "record_bytes": self.dtype.itemsize,
                "fields": [name for name in self.dtype.names]}) + "\n", encoding="utf-8")
            self.n = 0
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        else:
            self.n = int(keep)
            self._file = open(self.path, "r+b")  # noqa: SIM115 - closed by close()
            self._file.truncate(self.n * self.dtype.itemsize)
            self._file.seek(0, os.SEEK_END)
        self._record = np.zeros(1, self.dtype)

    @staticmethod
    def count(folder: str | Path, names) -> int:
        """The complete records in an existing state folder (of keypoints ``names``); RunStateError if none."""
        folder = Path(folder)
        try:
            layout = json.loads((folder / LAYOUT_FILE).read_text(encoding="utf-8"))
            size = (folder / FRAMES_FILE).stat().st_size
        except (OSError, ValueError) as exc:
            raise RunStateError(f"{folder}: no readable run state ({exc})") from None
        if layout.get("version") != LAYOUT_VERSION or layout.get("keypoints") != list(names) or \
                layout.get("record_bytes") != record_dtype(len(names)).itemsize:
            raise RunStateError(f"{folder}: the run state is of other keypoints or another ppmtrack version")
        return size // record_dtype(len(names)).itemsize

    def append(self, frame: int, time: float, filter_time: float, raw_xy, confidence, xy, visible,
               flow_displacement=None, flow_error=None, anchor_xy=None) -> None:
        """Write one frame's record (buffered; :meth:`flush` hands it to the operating system)."""
        r = self._record[0]
        r["frame"], r["time"], r["filter_time"] = frame, time, filter_time
        r["raw"], r["confidence"], r["xy"], r["visible"] = raw_xy, confidence, xy, visible
        r["flow"] = np.nan if flow_displacement is None else flow_displacement
        r["flow_error"] = np.inf if flow_error is None else flow_error
        r["anchor"] = np.nan if anchor_xy is None else anchor_xy
        self._file.write(self._record.tobytes())
        self.n += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def window(self, start: int, stop: int) -> np.ndarray:
        """Records ``start`` to ``stop`` (excluded), mapped read-only (flush first)."""
        stop = min(stop, self.n)
        if stop <= start:
            return np.zeros(0, self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=start * self.dtype.itemsize,
                         shape=(stop - start,))

    def column(self, name: str) -> np.ndarray:
        """One field of every record, in memory (e.g. the frame times: 8 bytes a frame)."""
        out = []
        for start in range(0, self.n, 1 << 16):
            out.append(np.array(self.window(start, start + (1 << 16))[name]))
        return np.concatenate(out) if out else np.zeros((0, *self.dtype[name].shape), self.dtype[name].base)

    def filter_inputs(self, start: int, stop: int, flow: bool = True):
        """``(raw, confidence, flow, flow_error, anchor)`` of records ``start``–``stop``, as the filter takes them."""
        w = self.window(start, stop)
        return (np.array(w["raw"]), np.array(w["confidence"]), np.array(w["flow"]) if flow else None,
                np.array(w["flow_error"]) if flow else None, np.array(w["anchor"]))

    def remove(self) -> None:
        """Delete the state folder (the run is complete: nothing left to resume)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.folder)
