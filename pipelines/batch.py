"""Many videos in one command: expand the inputs, skip finished ones, track the rest, write a batch summary.

The engine is loaded once per worker (one worker per device, ``--devices``), videos are handed out from one
queue, a video that fails is recorded with its reason and the others go on, and the next video of a worker is
opened (its first frames decoded) before the current one starts, so decoding the next file overlaps the end
of the current one. ``batch_summary.csv`` and ``batch_summary.json`` in the output folder list every input:
video, stem, status (``complete``, ``skipped``, ``failed``, ``interrupted``, ``not run``), frames, frames/s,
warnings and error (and for live streams: frames dropped, p50/p95 latency). See docs/cli.md ("Many videos").
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import PpmtrackError, UsageError
from ppmtrack.pipelines.outputs import (
    ALIAS_VIDEO_SUFFIX,
    SUMMARY_SUFFIX,
    assign_stems,
    complete_run,
    input_identity,
)
from ppmtrack.pipelines.sources import Source, is_live_spec, open_source

logger = logging.getLogger("ppmtrack")

DEFAULT_VIDEOTYPES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".h264")
LIST_SUFFIXES = (".txt", ".list", ".lst")
BATCH_SUMMARY = "batch_summary"
BATCH_FIELDS = ("video", "stem", "status", "frames", "fps", "warnings", "error", "summary", "worker", "dropped",
                "latency_p50_s", "latency_p95_s")


class InputListError(PpmtrackError, ValueError):
    """An input that is neither a video, a folder with videos, a glob that matches, nor a list of videos."""


@dataclass
class BatchItem:
    """One input of a batch and what became of it (a row of ``batch_summary.csv``)."""

    video: str
    stem: str
    status: str = "not run"
    frames: int | None = None
    fps: float | None = None
    warnings: str = ""
    error: str = ""
    summary: str = ""
    worker: str = ""
    dropped: int | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    spec: str | Path = field(default="", repr=False)


@dataclass
class BatchResult:
    """The items of a batch in input order, and where the batch summary was written."""

    items: list[BatchItem]
    csv_path: Path | None = None
    json_path: Path | None = None

    def count(self, status: str) -> int:
        return sum(item.status == status for item in self.items)

    @property
    def failed(self) -> list[BatchItem]:
        return [item for item in self.items if item.status == "failed"]

    def describe(self) -> str:
        """One line: how many videos ended how."""
        parts = [f"{self.count(s)} {s}" for s in ("complete", "skipped", "failed", "interrupted", "not run")
                 if self.count(s)]
        return f"{len(self.items)} videos: " + ", ".join(parts)


def parse_videotypes(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``".mp4,avi"`` → ``(".mp4", ".avi")``; None gives :data:`DEFAULT_VIDEOTYPES`."""
    if text is None:
        return DEFAULT_VIDEOTYPES
    items = text.split(",") if isinstance(text, str) else list(text)
    types = tuple("." + t.strip().lstrip(".").lower() for t in items if t.strip())
    if not types:
        raise InputListError("--videotype needs at least one extension, e.g. .mp4,.avi")
    return types


def expand_inputs(specs: Iterable[str | Path], videotypes=None, recursive: bool = False) -> list[str]:
    """The videos named by ``specs``, in order, each once (by resolved path).

    Each spec is a stream URL, a video file, a folder (its files with one of ``videotypes``, sorted, except the
    annotated videos ppmtrack wrote there; with ``recursive`` also those in sub-folders), a glob
    (``"sessions/*/cam1.mp4"``, quoted so the shell leaves it) or a text file (``.txt``, ``.list``, ``.lst``)
    listing one video, folder, glob or URL per line (blank lines and lines starting with ``#`` ignored;
    relative paths are relative to the list file).

    Raises
    ------
    InputListError
        A spec matches nothing, or a folder holds no video of ``videotypes``.
    """
    types = parse_videotypes(videotypes)
    found: list[str] = []
    seen: set[str] = set()

    def add(path_or_url: str) -> None:
        key = input_identity(path_or_url)
        if key not in seen:
            seen.add(key)
            found.append(path_or_url)

    def expand(spec: str, base: Path | None) -> None:
        if is_live_spec(spec):
            add(spec)
            return
        path = Path(spec).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            videos = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in types
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)
                            and not is_annotated_video(p))
            if not videos:
                raise InputListError(f"{path}: no videos ({', '.join(types)}) in this folder"
                                     f"{'' if recursive else ' (add --recursive to look in sub-folders)'}; "
                                     "set the extensions with --videotype")
            for video in videos:
                add(str(video))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                line = line.strip()
                if line and not line.startswith("#"):
                    try:
                        expand(line, path.parent)
                    except InputListError as e:  # say which list and line named it
                        raise InputListError(f"{path}, line {number}: {e}") from None
        elif path.is_file():
            add(str(path))
        elif glob.has_magic(str(path)):
            matches = sorted(glob.glob(str(path), recursive=True))
            videos = [m for m in matches if Path(m).is_file() and Path(m).suffix.lower() in types
                      and not is_annotated_video(Path(m))]
            if not videos:
                raise InputListError(f"{spec}: the pattern matches no video ({', '.join(types)})")
            for video in videos:
                add(video)
        else:
            raise InputListError(f"{path}: no such file or folder")

    for spec in specs:
        expand(str(spec), None)
    return found


def is_annotated_video(path: Path) -> bool:
    """True if ``path`` is an annotated video ppmtrack wrote (so a folder of inputs and outputs is not re-tracked).

    Recognised by its name (``STEM.ppmtrack.mp4``; ``STEM.fromN.mp4``, the part of a resumed run, beside
    ``STEM.summary.json``), by a summary in its folder that lists it among its videos, or by the ``comment`` tag
    every annotated video carries (:data:`pipelines.io.video.ANNOTATED_VIDEO_COMMENT`), which holds wherever
    the file was copied or renamed.
    """
    if path.name.endswith(ALIAS_VIDEO_SUFFIX):
        return True
    stem, dot, part = path.stem.rpartition(".")
    if dot and part.startswith("from") and part[4:].isdigit() and path.with_name(stem + SUMMARY_SUFFIX).is_file():
        return True
    resolved = path.resolve()
    for summary in path.parent.glob(f"*{SUMMARY_SUFFIX}"):
        try:
            outputs = json.loads(summary.read_text(encoding="utf-8")).get("outputs") or {}
            videos = [outputs.get("video"), *(outputs.get("video_parts") or [])]
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if any(video and Path(video).resolve() == resolved for video in videos):
            return True
    return _has_own_tag(path)


def _has_own_tag(path: Path) -> bool:
    """True if the video's container carries ppmtrack's annotated-video tag."""
    import av

    from ppmtrack.pipelines.io.video import ANNOTATED_VIDEO_COMMENT

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return container.metadata.get("comment") == ANNOTATED_VIDEO_COMMENT
    except Exception:  # noqa: BLE001 - not readable as a video here: tracking it reports the problem
        return False


def warnings_of(doc: dict) -> str:
    """The problems a run summary records, as a short text (empty if none)."""
    counts = [(doc.get("decode_errors"), "decode errors"), (doc.get("frames_dropped"), "frames dropped"),
              (len(doc.get("gaps") or []), "gaps"), (doc.get("reconnects"), "reconnects"),
              (doc.get("video_frames_skipped"), "frames left out of the video")]
    return "; ".join(f"{n} {label}" for n, label in counts if n)


def fill_from_summary(item: BatchItem, doc: dict | None) -> None:
    """Copy frames, frames/s, warnings and the summary's path from a run summary into ``item``."""
    if not doc:
        return
    item.frames = doc.get("frames_processed")
    item.fps = doc.get("fps")
    item.warnings = warnings_of(doc)
    item.summary = (doc.get("outputs") or {}).get("summary") or item.summary
    if (doc.get("input") or {}).get("live"):
        item.dropped = doc.get("frames_dropped")
        latency = doc.get("latency_s") or {}
        item.latency_p50_s, item.latency_p95_s = latency.get("p50"), latency.get("p95")


def write_batch_summary(items: list[BatchItem], out_dir: str | Path, extra: dict | None = None
                        ) -> tuple[Path, Path]:
    """Write ``batch_summary.csv`` and ``batch_summary.json`` (atomically) in ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    rows = [{k: v for k, v in asdict(item).items() if k in BATCH_FIELDS} for item in items]
    csv_path, json_path = out_dir / f"{BATCH_SUMMARY}.csv", out_dir / f"{BATCH_SUMMARY}.json"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=BATCH_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "skipped", "failed", "interrupted",
                                                                 "not run")}
    doc = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": counts, **(extra or {}),
           "videos": rows}
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path


def plan_batch(specs: list[str], out_dir: str | Path, identity: dict | None, overwrite: bool,
               selection: dict | None = None) -> list[BatchItem]:
    """One :class:`BatchItem` per input with its unique stem; complete earlier runs (of this engine ``identity``
    and frame ``selection``, see :func:`pipelines.outputs.frame_selection`) marked ``skipped``."""
    stems = assign_stems(specs, out_dir)
    items = []
    for spec in specs:
        item = BatchItem(video=input_identity(spec), stem=stems[input_identity(spec)], spec=spec)
        done = None if overwrite or is_live_spec(spec) else complete_run(spec, out_dir, item.stem, identity, selection)
        if done is not None:
            item.status = "skipped"
            fill_from_summary(item, done)
        items.append(item)
    return items


class _Opened:
    """A video opened ahead of its turn (its decoding thread fills the source's queue), or why it failed."""

    def __init__(self, spec, open_kwargs: dict):
        self.source: Source | None = None
        self.error: BaseException | None = None
        try:
            self.source = open_source(spec, **open_kwargs)
        except Exception as exc:  # reported when the video's turn comes
            self.error = exc


def run_batch(
    items: list[BatchItem],
    out_dir: str | Path,
    engines: list[tuple[str, Callable[[], object]]],
    *,
    track_kwargs: dict,
    overwrite: bool = False,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    on_done: Callable[[BatchItem], None] | None = None,
) -> list[BatchItem]:
    """Track the items not ``skipped``, one worker thread per entry of ``engines``, from one queue.

    Parameters
    ----------
    items
        From :func:`plan_batch`; updated in place (status, frames, fps, warnings, error).
    out_dir
        The output folder.
    engines
        ``(worker name, loader)`` per worker; the loader returns the worker's engine (called once, on the
        worker's thread, so several devices load at the same time).
    track_kwargs
        Passed to :func:`pipelines.track.track_video` (engine_path, batch_size, start, stop, stride, ...).
    overwrite
        Replace complete earlier results (see :mod:`pipelines.outputs`).
    progress
        One bar over the videos, plus each video's own bar when there is one worker.
    stop_event
        When set, the running videos stop (their summaries say "interrupted") and no new video starts.
    on_done
        Called with each item when it ends (from the worker's thread).
    """
    from ppmtrack.pipelines.track import resumable, track_video

    halt = stop_event or threading.Event()
    todo: queue.Queue = queue.Queue()
    for item in items:
        if item.status != "skipped":
            todo.put(item)
    n_todo = todo.qsize()
    bar = None
    if progress and n_todo:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - n_todo, unit="video", file=sys.stderr, desc="videos",
                   dynamic_ncols=True, position=0)
    lock = threading.Lock()
    open_kwargs = {k: track_kwargs[k] for k in ("start", "stop", "stride", "max_reconnect_s", "ffmpeg_options",
                                                "drop_policy") if k in track_kwargs}
    open_kwargs["queue_size"] = max(8, track_kwargs.get("batch_size", 8))
    open_kwargs["stop_event"] = halt

    def take() -> BatchItem | None:
        if halt.is_set():
            return None
        try:
            return todo.get_nowait()
        except queue.Empty:
            return None

    def finish(item: BatchItem) -> None:
        with lock:
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{item.stem}: {item.status}", refresh=True)
        if on_done is not None:
            on_done(item)

    def work(name: str, loader) -> None:
        try:
            engine = loader()
        except Exception as exc:
            logger.error("worker %s could not load the engine: %s", name, exc)
            return
        current = take()
        opened = _Opened(current.spec, open_kwargs) if current else None
        while current is not None:
            nxt = take()
            opened_next = _Opened(nxt.spec, open_kwargs) if nxt is not None else None  # decodes ahead
            run_one(current, opened, engine, name)
            finish(current)
            current, opened = nxt, opened_next
        if opened is not None and opened.source is not None:
            opened.source.close()

    def run_one(item: BatchItem, opened: _Opened, engine, name: str) -> None:
        item.worker = name
        if halt.is_set():
            if opened.source is not None:
                opened.source.close()
            return
        if opened.error is not None:
            item.status, item.error = "failed", _reason(opened.error)
            return
        kwargs = dict(track_kwargs)
        if kwargs.get("resume") and not resumable(Path(out_dir), item.stem):
            kwargs["resume"] = False  # --resume with several videos: resume the unfinished ones, track the others
        try:
            summary = track_video(item.spec, engine, out_dir, stem=item.stem, overwrite=overwrite,
                                  source=opened.source, stop_event=halt,
                                  progress=progress and len(engines) == 1, **kwargs)
        except KeyboardInterrupt:
            item.status = "interrupted"
            halt.set()
            return
        except Exception as exc:
            item.status, item.error = "failed", _reason(exc)
            from ppmtrack.pipelines.outputs import read_previous_summary

            fill_from_summary(item, read_previous_summary(Path(out_dir), item.stem))
            logger.error("%s: failed: %s", item.video, item.error)
            return
        item.status = "complete" if summary.status == "complete" else summary.status
        fill_from_summary(item, summary.to_dict())

    threads = [threading.Thread(target=work, args=(name, loader), daemon=True, name=f"ppmtrack-worker {name}")
               for name, loader in engines]
    try:
        run_threads(threads, halt)
    finally:
        if bar is not None:
            bar.close()
    for item in items:
        if item.status == "not run" and not halt.is_set():
            item.status, item.error = "failed", "no worker could load the engine"
    return items


def run_threads(threads: list[threading.Thread], halt: threading.Event) -> None:
    """Start ``threads`` and wait for them, still answering Ctrl-C: it sets ``halt`` and waits for them to end."""
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        halt.set()
        for thread in threads:
            thread.join()


def _reason(exc: BaseException) -> str:
    from ppmtrack.pipelines.sources import redact

    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def parse_devices(text: str | None) -> list[str]:
    """``"cuda:0,cuda:1"`` → that list; ``"all"`` → every CUDA device (``["cpu"]`` without CUDA)."""
    if not text:
        return []
    if text.strip().lower() == "all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise UsageError("--devices needs a comma-separated list, e.g. cuda:0,cuda:1, or 'all'")
    return devices
