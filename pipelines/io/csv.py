"""The tidy tracks CSV: one row per frame and keypoint; see docs/outputs.md.

Columns: ``frame,time,keypoint,x,y,confidence,visible,raw_x,raw_y``. Pixels (x, y, raw_x, raw_y) are written
with 3 decimals, confidence with 4, time (seconds) with 6; a NaN value (a lost keypoint's x and y) is an empty
field; visible is 0 or 1. Every row ends with a newline.

Several animals (``ppmtrack track --animals``): an ``individual`` column after ``time``
(``frame,time,individual,keypoint,...``), one row per frame, animal and keypoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time as _time
from pathlib import Path

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.summary import SUMMARY_SUFFIX
from ppmtrack.tracker.track import Tracks

COLUMNS = ("frame", "time", "keypoint", "x", "y", "confidence", "visible", "raw_x", "raw_y")
HEADER = ",".join(COLUMNS)
MULTI_COLUMNS = COLUMNS[:2] + ("individual",) + COLUMNS[2:]
MULTI_HEADER = ",".join(MULTI_COLUMNS)
FSYNC_INTERVAL_S = 1.0


def _number(value: float, decimals: int) -> str:
    return "" if math.isnan(value) else f"{value:.{decimals}f}"


class TracksFileError(PpmtrackError, ValueError):
    """A tracks CSV that is missing or not in ppmtrack's format."""


class TracksCsvWriter:
    """Append tracked frames to a tracks CSV as they finish, so the file is always a valid CSV.

    The header is written when the writer opens (an existing file is overwritten). Each frame's rows go to
    the operating system in a single write, so a crashed or killed run leaves every finished frame in the
    file; the file is also synced to disk at most every ``FSYNC_INTERVAL_S`` seconds and on close.

    Parameters
    ----------
    path : str or Path
        The CSV file, written in place (it is a growing log, not written atomically).
    names : list of str
        Keypoint names (K), in the order of the keypoint axis of the arrays given to ``write_frame``.
    append : bool
        Add frames to an existing tracks CSV (same keypoints) instead of starting a new one.
    individuals : bool
        Write the ``individual`` column (several animals); ``write_frame`` then needs ``individual``.
    """

    def __init__(self, path, names, append: bool = False, individuals: bool = False):
        self.path = Path(path)
        self.names = list(names)
        self.individuals = bool(individuals)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and self.path.is_file():  # continue a tracks CSV (``track --resume``)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._write(((MULTI_HEADER if self.individuals else HEADER) + "\n").encode())
        os.fsync(self._fd)
        self._last_sync = _time.monotonic()

    def write_frame(self, frame: int, time: float, xy: np.ndarray, confidence: np.ndarray,
                    visible: np.ndarray, raw_xy: np.ndarray, individual: str | None = None) -> None:
        """Append the K rows of one frame (of one animal, ``individual``, when the file has that column).

        ``xy`` and ``raw_xy`` are (K, 2) pixel positions (NaN: lost, written as empty fields), ``confidence``
        (K,) in [0, 1], ``visible`` (K,) bool; ``time`` is the frame's presentation time in seconds.
        """
        if self._fd is None:
            raise ValueError(f"{self.path}: the tracks CSV writer is closed")
        k = len(self.names)
        xy = np.asarray(xy, dtype=np.float64).reshape(k, 2)
        raw_xy = np.asarray(raw_xy, dtype=np.float64).reshape(k, 2)
        confidence = np.asarray(confidence, dtype=np.float64).reshape(k)
        visible = np.asarray(visible, dtype=bool).reshape(k)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        who = (str(individual),) if self.individuals else ()
        for i, name in enumerate(self.names):
            writer.writerow((
                int(frame), _number(float(time), 6), *who, name,
                _number(xy[i, 0], 3), _number(xy[i, 1], 3), _number(confidence[i], 4), int(visible[i]),
                _number(raw_xy[i, 0], 3), _number(raw_xy[i, 1], 3),
            ))
        self._write(buffer.getvalue().encode())
        if _time.monotonic() - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._last_sync = _time.monotonic()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        """Sync the file to disk and close it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)  # also when the sync fails (disk full): never leak the descriptor

    def __enter__(self) -> TracksCsvWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_tracks_csv(tracks: Tracks, path) -> None:
    """Write all of ``tracks`` to a tracks CSV atomically (a temporary file, then a rename over ``path``).

    Used to replace the causal CSV written during a run with the smoothed one at its end; a reader never
    sees a half-written file.
    """
    with atomic_path(path) as tmp, TracksCsvWriter(tmp, tracks.names) as writer:
        for t in range(len(tracks)):
            writer.write_frame(tracks.frame[t], tracks.time[t], tracks.xy[t], tracks.confidence[t],
                               tracks.visible[t], tracks.raw_xy[t])


def _field(value: str, path: Path, line: int, column: str) -> float:
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise TracksFileError(f"{path}: line {line}: {column} must be a number or empty, got {value!r}") from None


def read_tracks_csv(path, skeleton=None) -> Tracks:
    """Read a tracks CSV into Tracks; keypoints and frames are ordered by first appearance.

    A last line without a newline is what a killed writer leaves: it is ignored, and so is its frame if that
    frame has fewer rows than there are keypoints. A keypoint missing from some other frame reads as lost
    (NaN position and confidence, not visible).

    The CSV holds no skeleton: ``skeleton`` (edges between keypoint names) when given, else the one the run's
    summary beside the CSV records (``STEM.summary.json`` whose ``outputs.csv`` is this file, see
    :func:`recorded_skeleton`), else none.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TracksFileError(f"{path}: no such tracks CSV file") from None
    lines = text.split("\n")
    truncated = lines[-1] != ""
    lines = lines[:-1]
    header = lines[0].rstrip("\r") if lines else ""
    if header != HEADER:
        raise TracksFileError(f"{path}: not a tracks CSV: the header is {header!r}, expected {HEADER!r}")

    frame_index: dict[int, int] = {}
    name_index: dict[str, int] = {}
    times: list[float] = []
    rows: list[tuple[int, int, list[float], int]] = []
    seen: set[tuple[int, int]] = set()
    for line, fields in enumerate(csv.reader(lines[1:]), start=2):
        if len(fields) != len(COLUMNS):
            raise TracksFileError(
                f"{path}: line {line}: expected {len(COLUMNS)} fields ({HEADER}), got {len(fields)}"
            )
        try:
            frame = int(fields[0])
        except ValueError:
            raise TracksFileError(f"{path}: line {line}: frame must be an integer, got {fields[0]!r}") from None
        if fields[6] not in ("0", "1"):
            raise TracksFileError(f"{path}: line {line}: visible must be 0 or 1, got {fields[6]!r}")
        values = [_field(fields[c], path, line, COLUMNS[c]) for c in (1, 3, 4, 5, 7, 8)]
        t = frame_index.setdefault(frame, len(frame_index))
        if t == len(times):
            times.append(values[0])
        k = name_index.setdefault(fields[2], len(name_index))
        if (t, k) in seen:
            raise TracksFileError(f"{path}: line {line}: keypoint {fields[2]!r} appears twice in frame {frame}")
        seen.add((t, k))
        rows.append((t, k, values[1:], int(fields[6])))

    n_frames, n_names = len(frame_index), len(name_index)
    if truncated and n_frames and sum(1 for r in rows if r[0] == n_frames - 1) < n_names:
        n_frames -= 1
        rows = [r for r in rows if r[0] < n_frames]
    xy = np.full((n_frames, n_names, 2), np.nan)
    raw_xy = np.full((n_frames, n_names, 2), np.nan)
    confidence = np.full((n_frames, n_names), np.nan)
    visible = np.zeros((n_frames, n_names), dtype=bool)
    for t, k, (x, y, conf, raw_x, raw_y), vis in rows:
        xy[t, k] = x, y
        raw_xy[t, k] = raw_x, raw_y
        confidence[t, k] = conf
        visible[t, k] = bool(vis)
    return Tracks(
        skeleton=list(skeleton) if skeleton is not None else recorded_skeleton(path),
        names=list(name_index),
        frame=np.fromiter(frame_index, dtype=np.int64, count=len(frame_index))[:n_frames],
        time=np.array(times[:n_frames], dtype=np.float64),
        raw_xy=raw_xy,
        confidence=confidence,
        xy=xy,
        visible=visible,
    )


def write_multi_tracks_csv(tracks: dict[str, Tracks], path) -> None:
    """Write several animals' tracks (individual name → Tracks on one frame axis) atomically, like
    :func:`write_tracks_csv`, with the ``individual`` column; per frame the animals come in dict order."""
    first = next(iter(tracks.values()))
    with atomic_path(path) as tmp, TracksCsvWriter(tmp, first.names, individuals=True) as writer:
        for t in range(len(first)):
            for name, animal in tracks.items():
                writer.write_frame(animal.frame[t], animal.time[t], animal.xy[t], animal.confidence[t],
                                   animal.visible[t], animal.raw_xy[t], individual=name)


def read_multi_tracks_csv(path, skeleton=None) -> dict[str, Tracks]:
    """Read a tracks CSV with an ``individual`` column: individual name → Tracks, all on the same frames.

    An animal without rows in some frame reads as lost there (NaN, not visible); a last line without a
    newline (a killed writer) is ignored. ``skeleton``: as for :func:`read_tracks_csv`.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such tracks CSV file") from None
    lines = lines[:-1]
    if not lines or lines[0].rstrip("\r") != MULTI_HEADER:
        raise ValueError(f"{path}: not a multi-animal tracks CSV: expected the header {MULTI_HEADER!r}")
    frames: dict[int, float] = {}
    animals: dict[str, dict] = {}
    names: dict[str, int] = {}
    for line, fields in enumerate(csv.reader(lines[1:]), start=2):
        if len(fields) != len(MULTI_COLUMNS):
            raise ValueError(f"{path}: line {line}: expected {len(MULTI_COLUMNS)} fields ({MULTI_HEADER})")
        frame = int(fields[0])
        frames.setdefault(frame, _field(fields[1], path, line, "time"))
        names.setdefault(fields[3], len(names))
        values = [_field(fields[c], path, line, MULTI_COLUMNS[c]) for c in (4, 5, 6, 8, 9)]
        animals.setdefault(fields[2], {})[(frame, fields[3])] = (values, fields[7] == "1")
    order = list(frames)
    edges = list(skeleton) if skeleton is not None else recorded_skeleton(path)
    out = {}
    for individual, rows in animals.items():
        xy = np.full((len(order), len(names), 2), np.nan)
        raw = np.full_like(xy, np.nan)
        confidence = np.full((len(order), len(names)), np.nan)
        visible = np.zeros((len(order), len(names)), bool)
        position = {f: t for t, f in enumerate(order)}
        for (frame, name), ((x, y, conf, rx, ry), vis) in rows.items():
            t, k = position[frame], names[name]
            xy[t, k], raw[t, k], confidence[t, k], visible[t, k] = (x, y), (rx, ry), conf, vis
        out[individual] = Tracks(names=list(names), frame=np.array(order, dtype=np.int64),
                                 time=np.array([frames[f] for f in order]), raw_xy=raw, confidence=confidence,
                                 xy=xy, visible=visible, skeleton=list(edges))
    return out


def recorded_skeleton(csv_path) -> list[tuple[str, str]]:
    """The skeleton a run recorded for its tracks CSV ``csv_path``: ``engine.skeleton`` of the summary
    ``STEM.summary.json`` beside it, if that summary lists this CSV as its output; else an empty list."""
    csv_path = Path(csv_path)
    try:
        doc = json.loads(csv_path.with_name(csv_path.stem + SUMMARY_SUFFIX).read_text(encoding="utf-8"))
        listed = Path((doc.get("outputs") or {}).get("csv") or "")
        if listed.name != csv_path.name or not listed.exists() or not listed.samefile(csv_path):
            return []
        return [(str(a), str(b)) for a, b in (doc.get("engine") or {}).get("skeleton") or []]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
