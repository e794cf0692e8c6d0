"""The run summary: what a tracking run read, wrote and how fast, saved as ``<stem>.summary.json``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAGES = ("decode", "inference", "smoothing", "writing")


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
    ``"failed: <reason>"``.
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
    video_frames_skipped: int = 0
    gaps: list = field(default_factory=list)
    reconnects: int = 0
    first_frame: int | None = None
    last_frame: int | None = None
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    finished_at: str | None = None
    wall_time_s: float = 0.0
    waiting_for_frames_s: float = 0.0
    finalize_s: dict = field(default_factory=dict)
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
        doc["stages"] = {name: {"busy_s": _round(s.busy_s), "frames": s.frames, "fps": _round(s.fps)}
                         for name, s in self.stages.items()}
        return doc

    def write(self, path: str | Path) -> None:
        """Write the summary JSON atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def describe(self) -> str:
        """One line for the terminal: status, frames, time and per-stage speed."""
        speeds = ", ".join(f"{name} {s.fps:.1f}" for name, s in self.stages.items() if s.fps)
        text = (f"{self.status}: {self.frames_processed} frames in {self.wall_time_s:.1f} s"
                f" ({self.fps or 0:.1f} fps overall; per stage fps: {speeds or 'n/a'})")
        problems = [f"{n} {label}" for n, label in ((self.decode_errors, "decode errors"),
                                                    (self.frames_dropped, "frames dropped"),
                                                    (len(self.gaps), "gaps")) if n]
        return text + (f"; {', '.join(problems)}" if problems else "")


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
