"""The run summary: what a tracking run read, wrote and how fast, saved as ``<stem>.summary.json``."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ppmtrack.engine.atomic import atomic_path

STAGES = ("decode", "inference", "smoothing", "writing")
RESERVED_BYTES = 64 * 1024
SUMMARY_SUFFIX = ".summary.json"
"""A run's summary is ``STEM.summary.json`` beside its ``STEM.csv``."""
"""The summary file is padded (with JSON whitespace) to at least this size, so that on a full disk the final
status can still be written over it in place, in space the file already holds."""

logger = logging.getLogger("ppmtrack")


@dataclass
class StageTime:
    """Busy seconds of one pipeline stage and the frames it handled."""

    busy_s: float = 0.0
    frames: int = 0

    def add(self, seconds: float, frames: int = 0) -> None:
        self.busy_s += seconds
        self.frames += frames

    @property
    def fps(self) -> float | None:
        """Frames per busy second: how fast the stage alone would run; None before it did any work."""
        return self.frames / self.busy_s if self.busy_s > 0 and self.frames else None


@dataclass
class RunSummary:
    """Everything ``<stem>.summary.json`` records about one run; see docs/cli.md for the fields.

    ``status`` is ``"running"`` while the run goes (so a killed run never claims completion),
    then ``"complete"``, ``"interrupted"`` (stopped by Ctrl-C/SIGTERM or ``stop_event``) or
    ``"failed: <reason>"``. While the run goes, the file is rewritten every few seconds, so a killed run
    still tells how far it got (``frames_processed``, ``last_frame``: the last frame written to the CSV).
    ``frames_damaged``, ``frames_missing`` and ``truncated`` account for the frames of a damaged file that
    were read but not tracked, or never decoded (see docs/sources.md); ``resumed`` is set by ``--resume``;
    ``crops`` counts the frames the engine saw as animal-centred crops or whole, and the re-acquisitions.
    """

    input: dict
    engine: dict
    settings: dict
    status: str = "running"
    outputs: dict = field(default_factory=dict)
    csv_positions: str = "causal"
    frames_read: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    decode_errors: int = 0
    frames_damaged: int = 0
    frames_missing: int = 0
    truncated: bool = False
    video_frames_skipped: int = 0
    gaps: list = field(default_factory=list)
    reconnects: int = 0
    first_frame: int | None = None
    last_frame: int | None = None
    resumed: dict | None = None
    crops: dict | None = None  # pipelines.crops.CropStats of a run with --crop auto
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    finished_at: str | None = None
    wall_time_s: float = 0.0
    waiting_for_frames_s: float = 0.0
    latency_s: dict = field(default_factory=dict)
    finalize_s: dict = field(default_factory=dict)
    detector: dict | None = None  # the detector's self-check (pipelines.self_check): agreement vs chance, outliers
    identities: dict | None = None  # several animals: names, uncertain identity decisions (docs/multi-animal.md)
    stages: dict = field(default_factory=lambda: {name: StageTime() for name in STAGES})

    @property
    def fps(self) -> float | None:
        """Frames processed per wall-clock second of the whole run."""
        return self.frames_processed / self.wall_time_s if self.wall_time_s > 0 else None

    def to_dict(self) -> dict:
        """The JSON document: the fields above, with per-stage ``busy_s``, ``frames`` and ``fps``."""
        doc = asdict(self)
        doc["fps"] = _round(self.fps)
        doc["wall_time_s"] = _round(self.wall_time_s)
        doc["waiting_for_frames_s"] = _round(self.waiting_for_frames_s)
        doc["finalize_s"] = {k: _round(v) for k, v in self.finalize_s.items()}
        doc["latency_s"] = {k: _round(v) if k != "frames" else v for k, v in self.latency_s.items()}
        doc["stages"] = {name: {"busy_s": _round(s.busy_s), "frames": s.frames, "fps": _round(s.fps)}
                         for name, s in self.stages.items()}
        return doc

    def write(self, path: str | Path, *, quiet: bool = False) -> bool:
        """Write the summary JSON atomically (temporary file, then rename); True if it was written.

        If that fails (disk full), the temporary file is removed and the text is written in place over the
        previous summary, whose reserved size (``RESERVED_BYTES``) needs no new disk space. If that fails too,
        the error is raised, or with ``quiet`` logged and False returned (the run then tries again later).
        """
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        data = text.encode("utf-8")
        data += b" " * max(0, RESERVED_BYTES - len(data) - 1) + b"\n"
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return True
        except OSError as exc:
            try:
                _write_in_place(path, data)
                return True
            except OSError:
                if not quiet:
                    raise
                logger.debug("%s: cannot write the summary: %s", path, exc.strerror or exc)
                return False

    def describe(self) -> str:
        """One line for the terminal: status, frames, time and per-stage speed."""
        speeds = ", ".join(f"{name} {s.fps:.1f}" for name, s in self.stages.items() if s.fps)
        text = (f"{self.status}: {self.frames_processed} frames in {self.wall_time_s:.1f} s"
                f" ({self.fps or 0:.1f} fps overall; per stage fps: {speeds or 'n/a'})")
        problems = [f"{n} {label}" for n, label in ((self.decode_errors, "decode errors"),
                                                    (self.frames_damaged, "damaged frames skipped"),
                                                    (self.frames_missing, "frames missing"),
                                                    (self.frames_dropped, "frames dropped"),
                                                    (len(self.gaps), "gaps")) if n]
        if self.truncated:
            problems.append("the file is truncated")
        return text + (f"; {', '.join(problems)}" if problems else "")


def _write_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` from its start without freeing its blocks first; padded with spaces to its old size."""
    size = path.stat().st_size
    if len(data) > size:
        raise OSError(f"{path}: the summary no longer fits in its reserved space")
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data[:-1] + b" " * (size - len(data)) + b"\n")
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def record_source_counts(summary: RunSummary, stats, batch_stats, crops=None) -> None:
    """Copy the source's counters (``SourceStats``), the batcher's waiting time (``BatchStats``) and the crop
    policy's counters into the summary; the one place both runs (one or several animals) take them from."""
    summary.frames_read = stats.frames_read
    summary.frames_dropped = stats.frames_dropped
    summary.decode_errors = stats.decode_errors
    summary.frames_damaged = stats.frames_damaged
    summary.frames_missing = stats.frames_missing
    summary.truncated = stats.truncated
    summary.reconnects = stats.reconnects
    summary.waiting_for_frames_s = batch_stats.waiting_s
    # the source's list of outages is the one record of gaps: also one the run ended in, or whose gap marker the
    # run never took from the queue
    summary.gaps = [{"start_time": round(gap.start_time, 3), "end_time": round(gap.end_time, 3),
                     "duration_s": round(gap.duration, 3), "reason": gap.reason} for gap in stats.outages]
    if crops is not None:
        summary.crops = crops.stats.to_dict()
