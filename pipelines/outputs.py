"""The output set of one input: its file names, whether it is complete, and its removal before a redo.

One input (a video file or a stream URL) gets one *stem* in the output folder; every file of its run starts
with it: ``STEM.csv``, ``STEM.mp4`` (the annotated video), ``STEM.summary.json`` and the extra formats
(``STEMppmtrack_ENGINE.h5``/``.csv``, ``STEM.analysis.h5``, ``STEM.nwb``). Rules (docs/outputs.md):

- **Inputs are never written over.** Where ``STEM.mp4`` would be the input video itself (``-o`` is the
  video's own folder), the annotated video is named ``STEM.ppmtrack.mp4``; any other output that would be an
  input (same resolved path or same inode) is refused.
- **Stems are unique for distinct inputs.** The summary records the input's resolved path; an input whose
  plain stem is taken by another input (in the same batch or by earlier results in the folder) gets
  ``PARENT_STEM`` (another folder) or ``STEM_EXT`` (same folder, another extension), then ``STEM_2``, ...
  A rerun finds the stem the input had before.
- **A camera's sessions are all kept.** A live stream whose stem has results already gets
  ``STEM_YYYYmmdd-HHMMSS`` (its start time).
- **Results are never overwritten silently.** Complete outputs of the same input, engine and frame selection
  (``--start``/``--stop``/``--stride``) are skipped (batch runs) or refused (single runs) unless ``overwrite``;
  results of another engine or another frame selection, or files this input's summary does not explain, are
  refused unless ``overwrite``. A previous run of the same input that
  did not complete (failed, interrupted, killed) is redone. Redoing removes the whole previous set of the
  stem first, so no stale ``.nwb`` or DLC file of an older run stays beside the new CSV.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ppmtrack.engine.engine_file import file_sha256, load_engine_file
from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.io.formats import TRACK_FORMAT_REGISTRY
from ppmtrack.pipelines.sources import is_live_spec, redact_url
from ppmtrack.pipelines.summary import SUMMARY_SUFFIX

logger = logging.getLogger("ppmtrack")

ALIAS_VIDEO_SUFFIX = ".ppmtrack.mp4"
STATE_SUFFIX = ".state"  # STEM.state/: the per-frame run state (pipelines.run_state)


class OutputExistsError(PpmtrackError, FileExistsError):
    """Results for this input already exist and ``--overwrite`` was not given."""


class InputAliasError(PpmtrackError, OSError):
    """An output file would be one of the inputs."""


class OutputError(PpmtrackError, OSError):
    """The output folder cannot be created or written to."""


@dataclass
class OutputSet:
    """The files of one input's run in ``out_dir``; ``video`` is None when no annotated video is written."""

    out_dir: Path
    stem: str
    csv: Path
    video: Path | None
    summary: Path
    previous: dict | None = field(default=None, repr=False)

    def paths(self) -> dict:
        """The dict ``track_video`` uses: csv, video, summary."""
        return {"csv": self.csv, "video": self.video, "summary": self.summary}


def output_stem(spec: str | Path) -> str:
    """The start of the output file names: a file's stem, or for a URL its host, port and path.

    ``rtsp://user:pw@10.0.0.5:554/live/cam1?x=1`` → ``10.0.0.5_554_live_cam1`` (credentials and query
    dropped; characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_``).
    """
    if not is_live_spec(spec):
        return Path(spec).stem
    parts = urlsplit(redact_url(spec))  # parsed after redaction: no part of a password can reach a file name
    host = parts.hostname if parts.hostname and parts.hostname != "***" else "stream"
    try:
        port = parts.port
    except ValueError:  # a port that is no number
        port = None
    pieces = [host] + ([str(port)] if port else []) + [p for p in parts.path.split("/") if p]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(pieces)).strip("._")
    return stem or "stream"


def prepare_output_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and check that files can be written there; raise OutputError if not."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".ppmtrack-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way (the path or one of its parents is a file, not a folder)"
        raise OutputError(f"{out_dir}: cannot write outputs there: {reason}; choose another folder with -o"
                          ) from None
    return out_dir


def input_identity(spec: str | Path) -> str:
    """What identifies an input across runs: a file's resolved absolute path, or the URL (credentials hidden)."""
    if is_live_spec(spec):
        return redact_url(spec)
    return str(Path(spec).expanduser().resolve())


def base_stem(spec: str | Path) -> str:
    """The plain stem: a file's name without extension, or a URL's host, port and path (no credentials)."""
    return output_stem(spec)


def read_previous_summary(out_dir: Path, stem: str) -> dict | None:
    """The ``STEM.summary.json`` in ``out_dir`` as a dict, or None (missing or unreadable)."""
    path = Path(out_dir) / f"{stem}{SUMMARY_SUFFIX}"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summary_input(doc: dict | None) -> str | None:
    """The input identity a summary records (``input.path``; older summaries: ``input.source``)."""
    if not doc:
        return None
    info = doc.get("input") or {}
    return info.get("path") or info.get("source")


def stem_files(out_dir: Path, stem: str, previous: dict | None = None) -> list[Path]:
    """Every existing file of the output set ``stem`` in ``out_dir`` (also those a previous summary lists)."""
    out_dir = Path(out_dir)
    names = [f"{stem}.csv", f"{stem}.mp4", f"{stem}{ALIAS_VIDEO_SUFFIX}", f"{stem}{SUMMARY_SUFFIX}"]
    found = {out_dir / n for n in names}
    # each track format's files (also the raw ones of --with-raw); the NWB files of several animals
    # (STEM.<individual>.nwb) are found through the summary's list, not by a pattern that could match another stem
    for fmt in TRACK_FORMAT_REGISTRY.values():
        for pattern in fmt.file_patterns:
            found.update(out_dir.glob(pattern.format(stem=glob_escape(stem))))
    # videos of resumed parts (--resume)
    found.update(p for p in out_dir.glob(f"{glob_escape(stem)}.from*.mp4") if p.name[len(stem) + 5:-4].isdigit())
    state = out_dir / f"{stem}{STATE_SUFFIX}"  # the run state an unfinished run keeps for --resume
    if state.is_dir():
        found.update(state.rglob("*"))
    if previous:
        listed = previous.get("outputs") or {}
        for key in ("csv", "video", "summary"):
            if listed.get(key):
                found.add(Path(listed[key]))
        found.update(Path(p) for p in listed.get("formats") or [])
        found.update(Path(p) for p in listed.get("plots") or [])
    return sorted(p for p in found if p.is_file() and (p.parent.resolve() == out_dir.resolve()
                                                       or state in p.parents))


def glob_escape(text: str) -> str:
    """``text`` with glob wildcards escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _existing_summaries(out_dir: Path) -> dict[str, str | None]:
    """Stem → recorded input identity, for every summary in ``out_dir``."""
    found = {}
    for path in Path(out_dir).glob(f"*{SUMMARY_SUFFIX}"):
        stem = path.name[: -len(SUMMARY_SUFFIX)]
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        found[stem] = summary_input(doc)
    return found


def _candidate_stems(spec: str | Path, owner: str | None) -> list[str]:
    """Stems to try for ``spec`` in order, given the input (``owner``) that holds its plain stem."""
    stem = base_stem(spec)
    if is_live_spec(spec):  # a new session of a camera never replaces an earlier one
        return [stem, f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}"]
    path = Path(input_identity(spec))
    ext = path.suffix.lstrip(".").lower()
    parent = re.sub(r"[^A-Za-z0-9._-]+", "_", path.parent.name) or "root"
    with_ext = f"{stem}_{ext}" if ext else stem
    with_parent = f"{parent}_{stem}"
    same_folder = owner is not None and not is_live_spec(owner) and Path(owner).parent == path.parent
    ordered = [with_ext, with_parent] if same_folder else [with_parent, with_ext]
    return [stem, *ordered, f"{with_parent}_{ext}" if ext else with_parent]


def assign_stems(specs: list, out_dir: str | Path) -> dict[str, str]:
    """A unique stem for each input (keyed by :func:`input_identity`), stable across reruns.

    An input whose earlier summary is in ``out_dir`` keeps that summary's stem. Otherwise it takes the first
    free stem among its plain stem, ``PARENT_STEM`` / ``STEM_EXT`` (see the module's docstring), then
    ``STEM_2``, ``STEM_3``, ... A live stream gets its plain stem if free, else the stem followed by the start
    time (``_YYYYmmdd-HHMMSS``): each session of a camera is kept. A stem is taken when another input of
    ``specs`` has it, when a summary has it, or when files of that stem are in the folder.
    """
    out_dir = Path(out_dir)
    existing = _existing_summaries(out_dir) if out_dir.is_dir() else {}
    by_input = {ident: stem for stem, ident in existing.items() if ident}
    owners: dict[str, str] = {stem: ident for stem, ident in existing.items() if ident}
    stems: dict[str, str] = {}
    pending = []
    for spec in specs:
        ident = input_identity(spec)
        if ident in stems:
            continue
        if ident in by_input and not is_live_spec(spec):
            stems[ident] = by_input[ident]
            owners[by_input[ident]] = ident
        else:
            pending.append((spec, ident))
    for spec, ident in pending:
        plain = base_stem(spec)
        candidates = _candidate_stems(spec, owners.get(plain))
        numbered = (f"{plain}_{n}" for n in itertools.count(2))
        stem = next(s for s in itertools.chain(candidates, numbered)
                    if s not in owners and not _orphan_files(out_dir, s, spec))
        stems[ident] = stem
        owners[stem] = ident
    return stems


def _orphan_files(out_dir: Path, stem: str, spec) -> bool:
    """True if output-like files of ``stem`` are in ``out_dir`` (no summary), other than the input itself."""
    if not out_dir.is_dir():
        return False
    return any(not _is_input(p, [spec]) for p in stem_files(out_dir, stem))


def _is_input(path: Path, inputs: list) -> bool:
    """True if ``path`` is (resolves to, or shares the inode of) one of the file ``inputs``."""
    for spec in inputs:
        if is_live_spec(spec):
            continue
        src = Path(spec)
        try:
            if path.resolve() == src.resolve() or (path.exists() and src.exists() and os.path.samefile(path, src)):
                return True
        except OSError:
            continue
    return False


def frame_selection(start: int = 0, stop: int | None = None, stride: int = 1) -> dict:
    """The frame selection of a request (``--start``/``--stop``/``--stride``), as a summary's ``input`` records it."""
    return {"start": int(start), "stop": None if stop is None else int(stop), "stride": int(stride)}


def same_selection(doc: dict | None, selection: dict | None) -> bool:
    """True if the summary ``doc`` tracked the frames ``selection`` asks for (any, when ``selection`` is None).

    A summary without a recorded selection (older runs) counts as the whole video (start 0, every frame).
    """
    if selection is None:
        return True
    info = (doc or {}).get("input") or {}
    recorded = frame_selection(info.get("start") or 0, info.get("stop"), info.get("stride") or 1)
    return recorded == frame_selection(**selection)


def describe_selection(selection: dict) -> str:
    """``--start 10 --stop 24 --stride 2`` (only what differs from the whole video), or ``all frames``."""
    parts = []
    if selection.get("start"):
        parts.append(f"--start {selection['start']}")
    if selection.get("stop") is not None:
        parts.append(f"--stop {selection['stop']}")
    if (selection.get("stride") or 1) != 1:
        parts.append(f"--stride {selection['stride']}")
    return " ".join(parts) or "all frames"


def is_complete(doc: dict | None, out_dir: Path, spec, engine_identity: dict | None = None,
                selection: dict | None = None) -> bool:
    """True if the summary ``doc`` is a complete run of ``spec`` (with this engine and frame selection, if given)
    whose files exist."""
    if not doc or doc.get("status") != "complete" or summary_input(doc) != input_identity(spec):
        return False
    if engine_identity is not None and not same_engine(doc.get("engine") or {}, engine_identity):
        return False
    if not same_selection(doc, selection):
        return False
    listed = doc.get("outputs") or {}
    files = [listed.get("csv"), listed.get("video"), *(listed.get("formats") or [])]
    return all(Path(p).is_file() for p in files if p)


def engine_identity(engine, engine_path: str | Path | None, sha256: str | None = None) -> dict:
    """What decides "the same engine" between runs: the engine file's resolved path, model, keypoints and, when
    known, the file's SHA-256 (an engine file adapted again in place is another engine)."""
    model = getattr(engine, "model", None)
    return {"path": str(Path(engine_path).resolve()) if engine_path else None,
            "model": getattr(model, "name", None), "keypoints": list(engine.names), "sha256": sha256}


def engine_sha256(engine, engine_path: str | Path | None) -> str | None:
    """SHA-256 of the engine file ``engine_path``: the one ``engine`` took when it read that file
    (``engine.sha256``, see :func:`engine.load_engine`), else the file's hash; None without a file."""
    loaded_from, known = getattr(engine, "path", None), getattr(engine, "sha256", None)
    if known and loaded_from is not None and engine_path is not None and (
            Path(loaded_from).resolve() == Path(engine_path).resolve()):
        return known
    return file_sha256(engine_path) if engine_path and Path(engine_path).is_file() else None


def engine_file_identity(engine_path: str | Path, model: str | None = None) -> dict:
    """:func:`engine_identity` from the engine file's metadata alone (no model loaded); ``model`` overrides."""
    content = load_engine_file(engine_path)  # one read: the metadata and the hash
    return {"path": str(Path(engine_path).resolve()), "model": model or content.meta["model"]["name"],
            "keypoints": list(content.meta["keypoints"]), "sha256": content.sha256}


def same_engine(recorded: dict, identity: dict) -> bool:
    """True if a summary's ``engine`` section describes the engine ``identity`` (see :func:`engine_identity`)."""
    recorded_path = recorded.get("path")
    if recorded_path is not None:
        recorded_path = str(Path(recorded_path).resolve())
    then, now = recorded.get("sha256"), identity.get("sha256")
    if then and now and then != now:
        return False
    return (recorded_path == identity["path"] and recorded.get("model") == identity["model"]
            and list(recorded.get("keypoints") or []) == identity["keypoints"])


def complete_run(spec, out_dir: str | Path, stem: str, identity: dict | None = None,
                 selection: dict | None = None) -> dict | None:
    """The summary of a complete earlier run of ``spec`` with stem ``stem`` (and engine ``identity``, frame
    ``selection``), or None."""
    doc = read_previous_summary(Path(out_dir), stem)
    return doc if is_complete(doc, Path(out_dir), spec, identity, selection) else None


def prepare_output_set(spec, out_dir: str | Path, *, stem: str | None = None, write_video: bool = True,
                       identity: dict | None = None, overwrite: bool = False,
                       selection: dict | None = None) -> OutputSet:
    """Name the outputs of ``spec`` in ``out_dir`` and clear the way for a new run (see the module docstring).

    Raises
    ------
    OutputExistsError
        Without ``overwrite``: complete results of this input exist (same engine and frame ``selection``:
        nothing to do; another engine or selection: would be lost), or files of the stem exist that no summary
        of this input explains.
    InputAliasError
        An output would be one of the inputs.
    """
    out_dir = Path(out_dir)
    if stem is None:
        stem = assign_stems([spec], out_dir)[input_identity(spec)]
    video = out_dir / f"{stem}.mp4" if write_video else None
    if video is not None and _is_input(video, [spec]):
        video = out_dir / f"{stem}{ALIAS_VIDEO_SUFFIX}"
        logger.info("the input is %s itself: the annotated video is written to %s", out_dir / f"{stem}.mp4",
                    video.name)
    outputs = OutputSet(out_dir, stem, out_dir / f"{stem}.csv", video, out_dir / f"{stem}{SUMMARY_SUFFIX}")
    for path in (outputs.csv, outputs.video, outputs.summary):
        if path is not None and _is_input(path, [spec]):
            raise InputAliasError(f"{path}: the output would replace the input {spec}; choose another folder "
                                  "with -o")
    previous = read_previous_summary(out_dir, stem)
    outputs.previous = previous
    existing = [p for p in stem_files(out_dir, stem, previous) if not _is_input(p, [spec])]
    if not existing:
        return outputs
    same_input = summary_input(previous) == input_identity(spec)
    if not overwrite:
        if previous is None or not same_input:
            raise OutputExistsError(f"{out_dir}: files of an earlier run named {stem}.* are there "
                                    f"({', '.join(p.name for p in existing[:3])}); use --overwrite to replace "
                                    "them or choose another folder with -o")
        if previous.get("status") == "complete":
            other = identity is not None and not same_engine(previous.get("engine") or {}, identity)
            what = "of another engine" if other else "of the same engine"
            if not other and not same_selection(previous, selection):
                then = describe_selection(frame_selection(**{k: (previous.get("input") or {}).get(k, d) for k, d
                                                             in (("start", 0), ("stop", None), ("stride", 1))}))
                what = f"of another frame selection ({then}, now {describe_selection(frame_selection(**selection))})"
            raise OutputExistsError(f"{outputs.summary}: complete results {what} exist for {spec}; use "
                                    "--overwrite to redo them or choose another folder with -o")
        logger.info("%s: the earlier run ended %r; redoing it", spec, previous.get("status"))
    remove_output_set(existing, spec)
    return outputs


def remove_output_set(files: list[Path], spec) -> None:
    """Delete ``files`` (an output set found by :func:`stem_files`), never an input."""
    for path in files:
        if _is_input(path, [spec]):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for folder in sorted({p.parent for p in files if p.parent.name.endswith(STATE_SUFFIX)}, reverse=True):
        with contextlib.suppress(OSError):  # the run state folder (and its scratch folder), once empty
            for sub in sorted(folder.rglob("*"), reverse=True):
                sub.rmdir()
            folder.rmdir()
