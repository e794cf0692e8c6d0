"""A tracking run: video (file or stream) → engine → smoother → tracks CSV, annotated video, summary.

Three threads share the work: the source's decoding thread, the calling thread (batches frames and runs the
engine) and a writer thread (smooths causally, appends to the CSV, encodes the annotated video). Queues
between them are bounded, so memory does not grow with the length of the run. See docs/cli.md.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.util
import logging
import queue
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from ppmtrack.engine.errors import MissingExtraError, PpmtrackError, UsageError
from ppmtrack.pipelines.anchors import anchors_for_source, matching_anchor
from ppmtrack.pipelines.batching import BatchStats, iter_batches
from ppmtrack.pipelines.crops import crop_policy_for, crop_settings, predict_with_crops
from ppmtrack.pipelines.detection_noise import (
    describe_detection_noise,
    parse_detection_noise,
    resolve_detection_noise,
)
from ppmtrack.pipelines.io.csv import TracksCsvWriter, read_tracks_csv, write_tracks_csv
from ppmtrack.pipelines.io.formats import TRACK_FORMATS, write_tracks
from ppmtrack.pipelines.io.video import AnnotatedVideoWriter
from ppmtrack.pipelines.outputs import assign_stems, engine_identity, input_identity, prepare_output_set
from ppmtrack.pipelines.progress import progress_bar
from ppmtrack.pipelines.sources import Source, VideoFrame, is_live_spec, open_source, redact, redact_url
from ppmtrack.pipelines.summary import RunSummary
from ppmtrack.tracker import OnlineSmoother, SmoothingParams, Tracks
from ppmtrack.tracker.flow import FlowParams
from ppmtrack.tracker.fusion import Anchors, FlowTrack, fuse_keypoints

if TYPE_CHECKING:
    from ppmtrack.engine.interface import EngineLike

logger = logging.getLogger("ppmtrack")

OUTPUT_FORMATS = ("csv", *TRACK_FORMATS)
FORMAT_PACKAGES = {"dlc": ("pandas", "tables"), "sleap": ("h5py",), "nwb": ("pynwb", "ndx_pose")}
SMOOTH_MODES = ("auto", "rts", "causal")
FLOW_MODES = ("auto", "off")
STATUS_INTERVAL_S = 5.0
WRITER_QUEUE_BATCHES = 2
LATENCY_WINDOW = 100_000  # live: latency percentiles over the last this many frames
DEFAULT_VIDEO_FPS = 30.0  # for the annotated video of a stream that declares no rate (frame times are kept)


class OutputError(PpmtrackError, OSError):
    """The output folder cannot be created or written to."""


class SelectionError(PpmtrackError, ValueError):
    """The frames asked for (start, stop, stride) make no sense or select nothing."""


class ResumeError(PpmtrackError, ValueError):
    """A run cannot be resumed: nothing to resume, or the earlier run used another input or settings."""


SUMMARY_INTERVAL_S = 2.0
"""How often the summary file is rewritten while a run goes (frames processed, last frame written)."""
RESUME_WARMUP_FRAMES = 30
"""Frames of the earlier CSV fed to the causal filter when a run resumes, to re-initialise its state."""


def check_selection(start: int, stop: int | None, stride: int, n_frames: int | None = None) -> None:
    """Raise SelectionError if ``start``/``stop``/``stride`` select no frame (of ``n_frames``, if known)."""
    if stride < 1:
        raise SelectionError(f"--stride must be 1 or more, got {stride}")
    if start < 0:
        raise SelectionError(f"--start must be 0 or more, got {start}")
    if stop is not None and stop <= start:
        raise SelectionError(f"--stop {stop} is not after --start {start}: no frame is selected")
    if n_frames is not None and start >= n_frames:
        raise SelectionError(f"--start {start} is past the end of the video: it has {n_frames} frames "
                             f"(0 to {n_frames - 1})")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), e.g. to trace results to the engine file that made them."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_stem(spec: str | Path) -> str:
    """The start of the output file names: a file's stem, or for a URL its host, port and path.

    ``rtsp://user:pw@10.0.0.5:554/live/cam1?x=1`` → ``10.0.0.5_554_live_cam1`` (credentials and query
    dropped; characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_``).
    """
    if not is_live_spec(spec):
        return Path(spec).stem
    parts = urlsplit(str(spec))
    host = parts.hostname or "stream"
    pieces = [host] + ([str(parts.port)] if parts.port else []) + [p for p in parts.path.split("/") if p]
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


def check_output_formats(formats) -> list[str]:
    """Validate requested output formats (``csv`` always written) and that their packages are installed.

    Returns the formats beyond csv, in order, without duplicates.
    """
    formats = [f.strip().lower() for f in formats if f.strip()]
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise UsageError(f"unknown output format {unknown[0]!r}; choose among {', '.join(OUTPUT_FORMATS)}")
    extra = [f for f in dict.fromkeys(formats) if f != "csv"]
    for fmt in extra:
        missing = [m for m in FORMAT_PACKAGES[fmt] if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingExtraError(f"output format {fmt!r} needs the Python package(s) {', '.join(missing)}; "
                             "install them with: pip install 'ppmtrack[formats]'")
    return extra


class _TrackWriter:
    """The writer thread: causal smoothing, the growing CSV and the annotated video, one frame at a time.

    ``keep`` keeps the per-frame arrays (a few numbers per keypoint) for the smoothing at the end of a file.
    With ``flow``, each frame's optical flow from the previous one is fused in (the previous frame, grey and
    downscaled, is all that is kept of the images); ``anchors`` (frame index → support-frame record, see
    :mod:`pipelines.anchors`) pin the labelled support frames that lie in this video.
    """

    def __init__(self, engine, csv_path: Path, video: AnnotatedVideoWriter | None, params: SmoothingParams,
                 summary: RunSummary, keep: bool, previous: Tracks | None = None, flow: FlowParams | None = None,
                 anchors: dict | None = None, clock_origin: float | None = None):
        self.k = len(engine.names)
        self.smoother = OnlineSmoother(self.k, params, flow=flow)
        self.anchors = anchors or {}
        self.anchor_rows: list[tuple[int, np.ndarray]] = []  # (row, (K, 2)) of the anchors used
        self.flow_displacement: list[np.ndarray] = []
        self.flow_error: list[np.ndarray] = []
        self.csv = TracksCsvWriter(csv_path, engine.names, append=previous is not None)
        self.video = video
        self.summary = summary
        self.keep = keep
        self.frames: list[int] = []
        self.times: list[float] = []  # the frames' own times, as in the CSV
        self.filter_times: list[float] = []  # strictly increasing, as the filter saw them
        self.raw: list[np.ndarray] = []
        self.conf: list[np.ndarray] = []
        self.xy: list[np.ndarray] = []
        self.visible: list[np.ndarray] = []
        self.queue: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.last_time: float | None = None
        self.first_time: float | None = None
        self.clock_origin = clock_origin  # live: the monotonic time frame times count from (for latency)
        self.latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        if previous is not None:
            self._continue_after(previous)
        self.thread = threading.Thread(target=self._run, daemon=True, name="ppmtrack-writer")
        self.thread.start()

    def _continue_after(self, previous: Tracks) -> None:
        """Resume after an earlier run's frames: keep them for the final smoothing and re-initialise the causal
        filter from the last ``RESUME_WARMUP_FRAMES`` of them."""
        times: list[float] = []
        for t in previous.time.tolist():
            times.append(t if not times else max(t, times[-1] + 1e-6))
        n = len(times)
        for i in range(max(0, n - RESUME_WARMUP_FRAMES), n):
            self.smoother.update(times[i], previous.raw_xy[i], np.nan_to_num(previous.confidence[i]))
        self.last_time = times[-1] if times else None
        if self.keep:
            self.frames = previous.frame.tolist()
            self.times = previous.time.tolist()
            self.filter_times = times
            self.raw = list(previous.raw_xy)
            self.conf = list(np.nan_to_num(previous.confidence))
            self.xy = list(previous.xy)
            self.visible = list(previous.visible)
            if self.smoother.flow is not None:  # no flow was kept of the earlier run's frames
                self.flow_displacement = [np.full((self.k, 2), np.nan)] * len(previous)
                self.flow_error = [np.full(self.k, np.inf)] * len(previous)

    def put(self, frames: list[VideoFrame], prediction) -> bool:
        """Hand a predicted batch over; False if the writer has failed (its error is in ``self.error``)."""
        while self.error is None:
            try:
                self.queue.put((frames, prediction), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                frames, prediction = item
                for i, frame in enumerate(frames):
                    self._write_frame(frame, prediction.keypoints[i], prediction.confidence[i])
        except BaseException as exc:  # reported by the run, which then stops
            self.error = exc
            while True:  # keep draining so the producer never blocks on a dead writer
                if self.queue.get() is None:
                    return

    def _write_frame(self, frame: VideoFrame, raw_xy: np.ndarray, confidence: np.ndarray) -> None:
        stages = self.summary.stages
        # The filter needs strictly increasing times; a file with repeated timestamps gets them nudged.
        t = frame.time if self.last_time is None else max(frame.time, self.last_time + 1e-6)
        self.last_time = t
        if self.first_time is None:
            self.first_time = frame.time
        t0 = time.perf_counter()
        anchor = matching_anchor(self.anchors, frame.index, frame.image) if self.anchors else None
        xy, visible = self.smoother.update(t, raw_xy, confidence, frame.image, anchor)
        t1 = time.perf_counter()
        stages["smoothing"].add(t1 - t0, 1)
        if anchor is not None:
            self.summary.settings.setdefault("anchor_frames", []).append(frame.index)
        with _naming_the_file(self.csv.path, frame.index):
            self.csv.write_frame(frame.index, frame.time, xy, confidence, visible, raw_xy)
        if self.video is not None:
            if frame.image.shape[:2] == (self.video.height, self.video.width):
                with _naming_the_file(self.video.path, frame.index):
                    self.video.write(frame.image, xy, confidence, visible, time=frame.time - self.first_time,
                                     index=frame.index, source_time=frame.time)
            else:
                if not self.summary.video_frames_skipped:
                    logger.warning("frame %d is %dx%d, the annotated video %dx%d; such frames are left out "
                                   "of the video (they are in the CSV)", frame.index, frame.image.shape[1],
                                   frame.image.shape[0], self.video.width, self.video.height)
                self.summary.video_frames_skipped += 1
        stages["writing"].add(time.perf_counter() - t1, 1)
        if self.clock_origin is not None:
            self.latencies.append(time.monotonic() - self.clock_origin - frame.time)
        self.summary.frames_processed += 1
        if self.summary.first_frame is None:
            self.summary.first_frame = frame.index
        self.summary.last_frame = frame.index
        if self.keep:
            self.frames.append(frame.index)
            self.times.append(frame.time)
            self.filter_times.append(t)
            self.raw.append(np.asarray(raw_xy, dtype=np.float64))
            self.conf.append(np.asarray(confidence, dtype=np.float64))
            self.xy.append(xy)
            self.visible.append(visible)
            if anchor is not None:
                self.anchor_rows.append((len(self.frames) - 1, anchor))
            if self.smoother.flow is not None:
                self.flow_displacement.append(self.smoother.last_flow[0])
                self.flow_error.append(self.smoother.last_flow[1])

    def finish(self) -> None:
        """Wait for the queued frames to be written, then close the CSV and the video."""
        self.queue.put(None)
        self.thread.join()
        try:
            with _naming_the_file(self.csv.path):
                self.csv.close()
        finally:
            if self.video is not None:
                with _naming_the_file(self.video.path):
                    self.video.close()

    def smoothed(self) -> tuple[np.ndarray, np.ndarray]:
        """RTS-smoothed positions and visibility of the kept frames, with the flow and anchors of the run."""
        k = self.k
        flow = anchors = None
        if self.flow_displacement:
            flow = FlowTrack(np.array(self.flow_displacement).reshape(-1, k, 2),
                             np.array(self.flow_error).reshape(-1, k))
        if self.anchor_rows:
            anchors = Anchors(np.array([r for r, _ in self.anchor_rows]),
                              np.array([xy for _, xy in self.anchor_rows]).reshape(-1, k, 2))
        return fuse_keypoints(np.array(self.raw).reshape(-1, k, 2), np.array(self.conf).reshape(-1, k),
                              np.array(self.filter_times), flow, anchors, self.smoother.params, smooth=True)

    def tracks(self, names, skeleton) -> Tracks:
        """The kept frames as Tracks with the causal positions."""
        k = self.k
        return Tracks(
            names=list(names), frame=np.array(self.frames, dtype=np.int64), time=np.array(self.times),
            raw_xy=np.array(self.raw).reshape(-1, k, 2), confidence=np.array(self.conf).reshape(-1, k),
            xy=np.array(self.xy).reshape(-1, k, 2), visible=np.array(self.visible).reshape(-1, k),
            skeleton=list(skeleton),
        )


def annotation_style(engine, min_confidence: float | None) -> dict:
    """The annotated video's hollow-point cut-off, dot radius and colormap.

    ``min_confidence`` (``--min-confidence``) when given, else the labelling tool's settings the engine
    carries from adaptation (``engine.info["display"]``: DeepLabCut's ``pcutoff``, ``dotsize``, ``colormap``),
    else the defaults of :class:`pipelines.io.video.AnnotatedVideoWriter`.
    """
    display = (getattr(engine, "info", None) or {}).get("display") or {}
    cutoff = min_confidence if min_confidence is not None else display.get("pcutoff")
    return {"min_confidence": None if cutoff is None else float(cutoff),
            "dot_radius": display.get("dotsize"), "colormap": display.get("colormap")}


class _naming_the_file:  # noqa: N801 - used as a statement: ``with _naming_the_file(path): ...``
    """Turn an OSError (disk full, ...) raised while writing ``path`` into an OutputError that names it."""

    def __init__(self, path, frame: int | None = None):
        self.path, self.frame = path, frame

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError) and not isinstance(exc, PpmtrackError):
            at = f" at frame {self.frame}" if self.frame is not None else ""
            raise OutputError(f"{self.path}: writing failed{at}: {exc.strerror or exc}") from exc
        return False


def _resume_point(paths: dict, source, engine, start: int, stop: int | None, stride: int,
                  engine_sha256: str | None) -> tuple[Tracks, dict]:
    """The frames an earlier, unfinished run of the same input and settings wrote, and its summary.

    Raises ResumeError when there is nothing to resume or the earlier run differs.
    """
    import json

    summary_path, csv_path = paths["summary"], paths["csv"]
    if not summary_path.is_file() or not csv_path.is_file():
        raise ResumeError(f"{summary_path}: no earlier run to resume in this folder; run without --resume")
    try:
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{summary_path}: cannot read the earlier run's summary ({exc})") from None
    if previous.get("status") == "complete":
        raise ResumeError(f"{summary_path}: the earlier run is complete; there is nothing to resume")
    before = previous.get("input", {})
    differences = [name for name, now, then in (
        ("input", redact_url(source), before.get("source")), ("--start", start, before.get("start")),
        ("--stop", stop, before.get("stop")), ("--stride", stride, before.get("stride")),
        ("keypoints", list(engine.names), previous.get("engine", {}).get("keypoints")),
    ) if now != then]
    then_sha = previous.get("engine", {}).get("sha256")
    if engine_sha256 and then_sha and engine_sha256 != then_sha:
        differences.append("engine file")
    if differences:
        raise ResumeError(f"{summary_path}: the earlier run differs in {', '.join(differences)}; resume with "
                          "the same input, engine and frame selection, or start over")
    tracks = read_tracks_csv(csv_path)  # ignores a last frame a killed writer left incomplete
    if len(tracks) and tracks.names != list(engine.names):
        raise ResumeError(f"{csv_path}: its keypoints {tracks.names} are not the engine's {list(engine.names)}")
    return tracks, previous


def resumable(out_dir: Path, stem: str) -> bool:
    """True if ``out_dir`` holds an unfinished run (summary not ``complete``, and its CSV) of the stem ``stem``."""
    import json

    summary_path, csv_path = Path(out_dir) / f"{stem}.summary.json", Path(out_dir) / f"{stem}.csv"
    try:
        earlier = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return earlier.get("status") != "complete" and csv_path.is_file()


def _offer_resume(summary_path: Path) -> None:
    """Warn when an unfinished earlier run of this input is about to be started over: --resume continues it."""
    import json

    try:
        earlier = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    status = str(earlier.get("status", ""))
    if status and status != "complete" and earlier.get("frames_processed"):
        logger.warning("%s: an earlier run of this input stopped (%s) after frame %s; starting over (use --resume "
                       "to continue it instead)", summary_path, status.split(":")[0], earlier.get("last_frame"))


def _expected_frames(n_frames: int | None, start: int, stop: int | None, stride: int) -> int | None:
    if n_frames is None:
        return None
    end = n_frames if stop is None else min(stop, n_frames)
    return len(range(start, end, stride))


def track_video(
    source_spec: str | Path,
    engine: EngineLike,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    write_video: bool = True,
    output_formats=("csv",),
    smoothing: SmoothingParams | None = None,
    smooth: str = "auto",
    flow: str = "auto",
    detection_noise: str | float = "auto",
    crop: str = "auto",
    crop_size: int | None = None,
    live: bool | None = None,
    drop_policy: str | None = None,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    engine_path: str | Path | None = None,
    engine_name: str | None = None,
    ffmpeg_options: dict | None = None,
    max_reconnect_s: float = 60.0,
    resume: bool = False,
    plots: bool = False,
    with_raw: bool = False,
    subject_id: str | None = None,
    species: str | None = None,
    stem: str | None = None,
    overwrite: bool = False,
    source: Source | None = None,
) -> RunSummary:
    """Track keypoints through a video file or live stream and write the outputs to ``out_dir``.

    Writes ``<stem>.csv`` (tracks, see docs/outputs.md), ``<stem>.mp4`` (annotated video, unless
    ``write_video`` is False), the files of the other ``output_formats`` and ``<stem>.summary.json``.
    ``<stem>`` is :func:`output_stem` of the source, made unique among the inputs whose results are in
    ``out_dir`` (:func:`pipelines.outputs.assign_stems`); the video is ``<stem>.ppmtrack.mp4`` where
    ``<stem>.mp4`` would be the input itself. Inputs and complete results are never overwritten.

    Parameters
    ----------
    source_spec
        A video file or a stream URL (see docs/sources.md).
    engine
        An adapted :class:`engine.Engine`.
    out_dir
        Output folder; created if needed, checked for writing before any work.
    batch_size
        Frames per engine call. Files fill each batch; live streams take the frames already waiting, up
        to this many, so no frame waits for the next.
    start, stop, stride
        Frame selection by index (for streams: by arrival index).
    write_video
        Write the annotated video.
    output_formats
        Any of "csv" (always written), "dlc", "sleap", "nwb"; the extra formats are written at the end.
    smoothing
        Filter parameters (default ``SmoothingParams()``). When given, its ``min_confidence`` is also the
        video's hollow-point cut-off; when left out, the cut-off is the engine's labelling-tool setting
        (DeepLabCut's ``pcutoff``), else the same default (see :func:`annotation_style`).
    smooth
        "auto": RTS for files, causal for streams; "rts": forward-backward smoothing at the end of a file
        (the CSV is rewritten atomically); "causal": keep the forward filter's positions. Streams are
        always causal.
    flow
        "auto": fuse Lucas-Kanade optical flow between consecutive frames with the detections (and anchor the
        engine's support frames when they lie in this video, see :mod:`pipelines.anchors`); "off": detections
        only. See docs/smoothing.md.
    detection_noise
        How far the filter trusts a detection: its noise in pixels at confidence 1. "auto": each keypoint's
        held-out error measured when the engine was adapted (``info["validation"]``, scaled to this video's
        pixels), or ``smoothing.measurement_noise_px`` when the engine has no validation; a number: that many
        pixels. The summary's ``settings.detection_noise`` says which (:mod:`pipelines.detection_noise`).
    crop, crop_size
        "on": the engine sees square crops around where the animal is expected (resized to ``crop_size``,
        default the engine's resolution), with a whole-frame pass when it is lost (:mod:`pipelines.crops`);
        "off": whole frames; "auto": crops when the engine was adapted on crops (``adapt --crop-views``).
        The summary's ``crops`` counts cropped and whole frames and re-acquisitions.
    live, drop_policy
        Passed to :func:`pipelines.sources.open_source`.
    progress
        Show progress on stderr: for files a tqdm bar in a terminal, else a status line every 10 % or 30 s
        (:func:`pipelines.progress.progress_bar`); for streams a status line every ~5 s.
    stop_event
        Set it (e.g. from a SIGINT handler) to stop: every output is flushed and closed, and the summary
        says "interrupted".
    engine_path, engine_name
        Recorded in the summary. One rule for the scorer ``ppmtrack_<name>`` of the DeepLabCut/NWB outputs,
        CLI and Python alike: the name defaults to the stem of the engine file (``engine_path``, else the file
        the engine was loaded from or saved to, ``engine.path``), and is "engine" only for an engine never
        saved.
    ffmpeg_options, max_reconnect_s
        Passed to :func:`pipelines.sources.open_source` (e.g. ``{"rtsp_transport": "udp"}``).
    resume
        Continue an interrupted, failed or killed run of the same file with the same engine and frame
        selection in ``out_dir``: tracking restarts after the last complete frame of its CSV, the filter is
        re-initialised from its last rows, and the CSV grows from there (the final smoothing covers the whole
        run). The annotated video of the resumed part goes to ``<stem>.from<FRAME>.mp4``.
    plots
        At the end, write PNG plots of the tracks (:func:`pipelines.plots.write_plots`), listed in the
        summary's ``outputs["plots"]``; a plot that fails is a warning and ``outputs["plots_error"]``.
    with_raw, subject_id, species
        Passed to :func:`pipelines.io.formats.write_tracks`: also write the raw measurements in the extra
        formats (``<stem>….raw.h5``, ``<stem>.raw.analysis.h5``, ``<stem>.raw.nwb``); the NWB ``Subject``.
    stem, overwrite
        The output set (:mod:`pipelines.outputs`): ``stem`` (default: a unique stem for this input), and
        whether earlier complete results of it may be replaced (else :class:`OutputExistsError`).
    source
        The source already opened with these selection arguments (a batch opens the next video early).

    Returns
    -------
    RunSummary
        Also written to ``<stem>.summary.json``; its ``status`` is "complete", "interrupted" or
        "failed: …" (the exception is then raised after the summary is written).

    Raises
    ------
    OutputError
        ``out_dir`` cannot be written (before anything else happens).
    pipelines.outputs.OutputExistsError
        Results of this input are in ``out_dir`` and ``overwrite`` is False (see :mod:`pipelines.outputs`).
    pipelines.sources.SourceError
        The file is missing or not a video, or the stream cannot be reached.
    SelectionError
        ``start``/``stop``/``stride`` select no frame.
    ResumeError
        ``resume`` with nothing to resume, or an earlier run with another input, engine or selection.
    ValueError
        Bad arguments (unknown smoothing mode or output format, a format's package missing).
    """
    if smooth not in SMOOTH_MODES:
        raise UsageError(f"smooth must be one of {', '.join(SMOOTH_MODES)}, got {smooth!r}")
    if flow not in FLOW_MODES:
        raise UsageError(f"flow must be one of {', '.join(FLOW_MODES)}, got {flow!r}")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    crops = crop_policy_for(engine, crop, crop_size)
    detection_noise = parse_detection_noise(detection_noise)
    params = smoothing if smoothing is not None else SmoothingParams()
    check_selection(start, stop, stride)
    video_style = annotation_style(engine, None if smoothing is None else smoothing.min_confidence)
    extra_formats = check_output_formats(output_formats)
    out_dir = prepare_output_dir(out_dir)
    halt = stop_event if stop_event is not None else threading.Event()
    if stem is None:  # unique in out_dir, and the stem of this input's earlier results there (pipelines.outputs)
        stem = assign_stems([source_spec], out_dir)[input_identity(source_spec)]
    paths = {"csv": out_dir / f"{stem}.csv", "video": out_dir / f"{stem}.mp4" if write_video else None,
             "summary": out_dir / f"{stem}.summary.json"}
    engine_path = engine_path or getattr(engine, "path", None)
    engine_sha256 = file_sha256(engine_path) if engine_path and Path(engine_path).is_file() else None
    identity = engine_identity(engine, engine_path, engine_sha256)
    previous = previous_summary = summary_resumed = None
    first = start
    if resume:
        if is_live_spec(source_spec) if live is None else live:
            raise ResumeError("--resume works for video files only; a live stream cannot be resumed")
        previous, previous_summary = _resume_point(paths, source_spec, engine, start, stop, stride, engine_sha256)
        if len(previous):
            first = int(previous.frame[-1]) + stride
        else:  # killed before its first frame was written: start from the beginning
            previous = None
            summary_resumed = {"from_frame": start, "frames_before": 0,
                               "previous_status": previous_summary.get("status")}
        if write_video:
            paths["video"] = out_dir / f"{stem}.from{first}.mp4"
    elif not (is_live_spec(source_spec) if live is None else live):
        _offer_resume(paths["summary"])

    if source is not None and first != start:  # resuming: the batch opened it from --start
        source.close()
        source = None
    if source is None:
        source = open_source(source_spec, start=first, stop=stop, stride=stride, live=live,
                             queue_size=max(8, batch_size), drop_policy=drop_policy, stop_event=halt,
                             ffmpeg_options=ffmpeg_options, max_reconnect_s=max_reconnect_s)
    info = source.info
    is_live = info.is_live
    params, noise_record = resolve_detection_noise(getattr(engine, "info", {}), list(engine.names), params,
                                                   detection_noise, (info.height, info.width))
    logger.info(describe_detection_noise(noise_record))
    if not resume:
        try:
            check_selection(start, stop, stride, None if is_live else info.n_frames)
        except SelectionError:
            source.close()
            raise
    if is_live and smooth == "rts":
        logger.warning("a live stream is smoothed causally; --smooth rts applies to files only")
    final_rts = not is_live and smooth in ("auto", "rts")
    try:
        if not resume:
            output_set = prepare_output_set(source_spec, out_dir, stem=stem, write_video=write_video,
                                            identity=identity, overwrite=overwrite)
            paths = output_set.paths()
    except BaseException:
        source.close()
        raise
    name = engine_name or (Path(engine_path).stem if engine_path else "engine")
    summary = RunSummary(
        input={"source": redact_url(source_spec), "path": input_identity(source_spec), "live": is_live,
               "width": info.width, "height": info.height, "fps": info.fps, "codec": info.codec,
               "n_frames_estimate": info.n_frames, "rotation": info.rotation,
               "start": start, "stop": stop, "stride": stride},
        engine={"path": identity["path"], "name": name, "sha256": engine_sha256, "model": engine.model.name,
                "keypoints": list(engine.names), "resolution": engine.resolution,
                "device": str(engine.model.device)},
        settings={"batch_size": batch_size, "smooth": "rts" if final_rts else "causal",
                  "flow": "off" if flow == "off" else "lk", "detection_noise": noise_record,
                  "detector": getattr(engine, "detector", "ppm"),  # track --detector (engine.correspond_engine)
                  "crop": crop_settings(engine, crop, crops),
                  "smoothing": dataclasses.asdict(params), "output_formats": ["csv", *extra_formats],
                  "write_video": write_video, "video_style": video_style if write_video else None,
                  "drop_policy": drop_policy or ("drop_oldest" if is_live else "block")},
        outputs={"csv": str(paths["csv"]), "video": str(paths["video"]) if paths["video"] else None,
                 "summary": str(paths["summary"]), "formats": []},
    )
    if summary_resumed is not None:
        summary.resumed = summary_resumed
    if previous is not None:
        summary.resumed = {"from_frame": first, "frames_before": len(previous),
                           "previous_status": previous_summary.get("status")}
        summary.frames_processed = len(previous)
        if len(previous):
            summary.first_frame, summary.last_frame = int(previous.frame[0]), int(previous.frame[-1])
        summary.started_at = previous_summary.get("started_at", summary.started_at)
        logger.info("resuming after frame %s (%d frames tracked before)", summary.last_frame, len(previous))
    try:
        video = None
        if write_video:
            video = AnnotatedVideoWriter(paths["video"], info.width, info.height,
                                         info.fps_fraction or info.fps or DEFAULT_VIDEO_FPS, engine.names,
                                         engine.skeleton, **video_style)
        if previous is not None:  # the CSV without a frame a killed writer left half-written
            write_tracks_csv(previous, paths["csv"])
        anchors = {} if flow == "off" else anchors_for_source(getattr(engine, "info", {}), str(source_spec),
                                                             len(engine.names))
        writer = _TrackWriter(engine, paths["csv"], video, params, summary, keep=not is_live, previous=previous,
                              flow=None if flow == "off" else FlowParams(), anchors=anchors,
                              clock_origin=source.started_at if is_live else None)
        with _naming_the_file(paths["summary"]):
            summary.write(paths["summary"])
    except BaseException:
        source.close()
        raise

    logger.info("tracking %s (%dx%d%s) → %s", redact_url(source_spec), info.width, info.height,
                f", {info.fps:.2f} fps" if info.fps else "", out_dir)
    bar = None
    if progress and not is_live:
        bar = progress_bar(_expected_frames(info.n_frames, first, stop, stride), stem, "frame")
    batch_stats = BatchStats()
    t_start = time.perf_counter()
    decode_cpu = None
    failure: BaseException | None = None
    keyboard_interrupt = False
    engine.reset_stream()  # a new source: nothing carried over from frames tracked before (feature reuse)
    batches = iter_batches(source, batch_size, fill=not is_live, stop_event=halt, stats=batch_stats)
    try:
        next_status = time.monotonic() + STATUS_INTERVAL_S
        next_summary = time.monotonic() + SUMMARY_INTERVAL_S
        for batch in batches:
            decode_cpu = source.decode_cpu_seconds() or decode_cpu
            if batch.gap is not None:
                gap = batch.gap  # recorded in the summary from the source's outages (_update_counts)
                logger.warning("stream gap of %.1f s (%s)", gap.duration, gap.reason)
                engine.reset_stream()  # the frames after a gap do not follow the ones before
                continue
            images = np.stack([f.image for f in batch.frames])
            t0 = time.perf_counter()
            prediction = engine.predict(images) if crops is None else predict_with_crops(engine, images, crops)
            summary.stages["inference"].add(time.perf_counter() - t0, len(batch.frames))
            if not writer.put(batch.frames, prediction):
                break
            if time.monotonic() >= next_summary:  # so a killed run still tells how far it got
                next_summary = time.monotonic() + SUMMARY_INTERVAL_S
                _update_counts(summary, source.stats, batch_stats, crops)
                summary.write(paths["summary"], quiet=True)
            if bar is not None:
                bar.update(len(batch.frames))
            elif progress and time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_INTERVAL_S
                elapsed = time.perf_counter() - t_start
                logger.info("%d frames processed (%.1f fps), %d dropped, %d decode errors, %d gaps",
                            summary.stages["inference"].frames, summary.stages["inference"].frames / elapsed,
                            source.stats.frames_dropped, source.stats.decode_errors, source.stats.gaps)
    except KeyboardInterrupt:
        keyboard_interrupt = True
        halt.set()
    except BaseException as exc:  # recorded in the summary, raised again below
        failure = exc
    finally:
        source.close()
        batches.close()
        if bar is not None:
            bar.close()
        try:
            writer.finish()
        except BaseException as exc:  # closing the outputs failed (disk full, ...)
            failure = failure or exc
    failure = failure or writer.error

    stats = source.stats
    _update_counts(summary, stats, batch_stats, crops)
    if writer.latencies:
        latency = np.array(writer.latencies)
        summary.latency_s = {"p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
                             "max": float(latency.max()), "frames": len(latency)}
    if decode_cpu:
        summary.stages["decode"].add(decode_cpu, stats.frames_read)
    if failure is None:
        summary.status = "interrupted" if halt.is_set() else "complete"
        try:
            _finish_outputs(summary, writer, engine, paths, extra_formats, stem, name, source_spec,
                            info.fps, final_rts and summary.status == "complete",
                            {"with_raw": with_raw, "subject_id": subject_id, "species": species}, plots)
        except BaseException as exc:
            failure = exc
    if failure is not None:
        summary.status = f"failed: {redact(failure)}" if str(failure) else f"failed: {type(failure).__name__}"
    summary.wall_time_s = time.perf_counter() - t_start
    summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not summary.write(paths["summary"], quiet=failure is not None):
        logger.error("%s: the summary could not be written; status: %s", paths["summary"], summary.status)
    if failure is not None:
        raise failure
    if keyboard_interrupt:
        raise KeyboardInterrupt
    return summary


def _update_counts(summary: RunSummary, stats, batch_stats: BatchStats, crops=None) -> None:
    """Copy the source's counters (and the crop policy's) into the summary."""
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


def _finish_outputs(summary: RunSummary, writer: _TrackWriter, engine, paths: dict, extra_formats: list[str],
                    stem: str, engine_name: str, source_spec, fps: float | None, rts: bool,
                    format_options: dict, plots: bool = False) -> None:
    """End of run: RTS-smooth and atomically rewrite the CSV (complete file runs), the extra formats, the plots."""
    if not summary.frames_processed:
        return
    tracks = None
    if writer.keep:
        tracks = writer.tracks(engine.names, engine.skeleton)
    if rts:
        t0 = time.perf_counter()
        xy, visible = writer.smoothed()
        tracks = dataclasses.replace(tracks, xy=xy, visible=visible)
        t1 = time.perf_counter()
        write_tracks_csv(tracks, paths["csv"])
        summary.csv_positions = "rts"
        summary.finalize_s.update(rts_smoothing=t1 - t0, csv_rewrite=time.perf_counter() - t1)
    if extra_formats:
        t0 = time.perf_counter()
        if tracks is None:  # a stream keeps nothing in memory: read back what the CSV holds
            tracks = dataclasses.replace(read_tracks_csv(paths["csv"]), skeleton=list(engine.skeleton))
        written = write_tracks(tracks, paths["csv"].parent, stem, extra_formats, engine_name=engine_name,
                               video_path=None if is_live_spec(source_spec) else source_spec, fps=fps,
                               **format_options)
        summary.outputs["formats"] = [str(p) for p in written]
        summary.finalize_s["formats"] = time.perf_counter() - t0
    if plots:
        from ppmtrack.pipelines.plots import write_plots

        t0 = time.perf_counter()
        try:
            written = write_plots(paths["csv"], video=None if is_live_spec(source_spec) else source_spec,
                                  tracks=tracks)
            summary.outputs["plots"] = [str(p) for p in written]
        except (OSError, ValueError, ImportError, RuntimeError) as exc:
            logger.warning("the plots could not be written: %s", exc)
            summary.outputs["plots_error"] = str(exc)
        summary.finalize_s["plots"] = time.perf_counter() - t0
