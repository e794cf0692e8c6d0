"""A tracking run: video (file or stream) → engine → smoother → tracks CSV, annotated video, summary.

Three threads share the work: the source's decoding thread, the calling thread (batches frames and runs the
engine) and a writer thread (smooths causally, appends to the CSV, encodes the annotated video). Queues
between them are bounded, so memory does not grow with the length of the run. See docs/cli.md.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.engine_file import file_sha256
from ppmtrack.engine.errors import PpmtrackError, UsageError
from ppmtrack.pipelines.anchor_discovery import AnchorFinder
from ppmtrack.pipelines.batching import BatchStats, iter_batches
from ppmtrack.pipelines.crops import crop_policy_for, crop_settings, predict_with_crops
from ppmtrack.pipelines.detection_noise import (
    describe_detection_noise,
    parse_detection_noise,
    resolve_detection_noise,
)
from ppmtrack.pipelines.io.csv import TracksCsvWriter, read_tracks_csv, write_tracks_csv
from ppmtrack.pipelines.io.formats import OUTPUT_FORMATS, check_output_formats, write_tracks
from ppmtrack.pipelines.io.video import DEFAULT_VIDEO_FPS, AnnotatedVideoWriter
from ppmtrack.pipelines.outputs import (
    OutputError,
    assign_stems,
    engine_identity,
    frame_selection,
    input_identity,
    output_stem,
    prepare_output_dir,
    prepare_output_set,
)
from ppmtrack.pipelines.outputs import (
    engine_sha256 as engine_file_sha256,
)
from ppmtrack.pipelines.progress import expected_frames, progress_bar
from ppmtrack.pipelines.run_state import RunState, RunStateError, record_dtype, state_dir
from ppmtrack.pipelines.self_check import self_check
from ppmtrack.pipelines.sources import Source, VideoFrame, is_live_spec, open_source, redact, redact_url

__all__ = [  # also importable from here (their homes: engine.engine_file, pipelines.outputs, pipelines.io.formats)
    "OUTPUT_FORMATS", "OutputError", "ResumeError", "SelectionError", "check_output_formats", "check_selection",
    "file_sha256", "output_stem", "prepare_output_dir", "redact_url", "resumable", "track_video",
]
from ppmtrack.pipelines.summary import RunSummary, record_source_counts
from ppmtrack.tracker import OnlineSmoother, SmoothingParams, Tracks
from ppmtrack.tracker.flow import FlowParams
from ppmtrack.tracker.smoothing import SPILL_CHUNK, smooth_on_disk

if TYPE_CHECKING:
    from ppmtrack.engine.interface import EngineLike

logger = logging.getLogger("ppmtrack")

SMOOTH_MODES = ("auto", "rts", "causal")
FLOW_MODES = ("auto", "off")
STATUS_INTERVAL_S = 5.0
WRITER_QUEUE_BATCHES = 2
LATENCY_WINDOW = 100_000  # live: latency percentiles over the last this many frames


class SelectionError(PpmtrackError, ValueError):
    """The frames asked for (start, stop, stride) make no sense or select nothing."""


class ResumeError(PpmtrackError, ValueError):
    """A run cannot be resumed: nothing to resume, or the earlier run used another input or settings."""


SUMMARY_INTERVAL_S = 2.0
"""How often the summary file is rewritten while a run goes (frames processed, last frame written)."""


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


class _TrackWriter:
    """The writer thread: causal smoothing, the growing CSV and the annotated video, one frame at a time.

    With a ``state`` (file runs), each frame's filter inputs and outputs are appended to the run state on disk
    (:mod:`pipelines.run_state`) for the smoothing at the end of a file and for ``--resume``; nothing grows in
    memory. With ``flow``, each frame's optical flow from the previous one is fused in (the previous frame, grey
    and downscaled, is all that is kept of the images); ``anchors`` (frame index → support-frame record, see
    :mod:`pipelines.anchors`) pin the labelled support frames that lie in this video. A state holding frames of
    an earlier run (``--resume``) is replayed through the filter first; frames up to ``reference`` (the last of
    them, decoded again) only give the image the next frame's flow starts from.
    """

    def __init__(self, engine, csv_path: Path, video: AnnotatedVideoWriter | None, params: SmoothingParams,
                 summary: RunSummary, state: RunState | None = None, flow: FlowParams | None = None,
                 anchors: dict | None = None, clock_origin: float | None = None, reference: int | None = None):
        self.k = len(engine.names)
        self.smoother = OnlineSmoother(self.k, params, flow=flow)
        self.anchors = anchors  # an AnchorFinder (pipelines.anchor_discovery), or None
        self.state = state
        self.keep = state is not None
        self.reference = reference
        self.csv = TracksCsvWriter(csv_path, engine.names, append=bool(state is not None and state.n))
        self.video = video
        self.summary = summary
        self.queue: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.last_time: float | None = None
        self.first_time: float | None = None
        self.clock_origin = clock_origin  # live: the monotonic time frame times count from (for latency)
        self.latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        if state is not None and state.n:
            self._continue_after(state)
        self.thread = threading.Thread(target=self._run, daemon=True, name="ppmtrack-writer")
        self.thread.start()

    def _continue_after(self, state: RunState) -> None:
        """Resume after an earlier run's frames: replay them through the filter with the flow and anchors
        recorded then, so it is in the state it had when the run stopped."""
        anchor_frames = []
        flow = self.smoother.flow is not None
        for start in range(0, state.n, SPILL_CHUNK):
            window = state.window(start, start + SPILL_CHUNK)
            raw, conf, displacement, fb_error, anchor = state.filter_inputs(start, start + SPILL_CHUNK, flow)
            self.smoother.replay(np.array(window["filter_time"]), raw, conf, displacement, fb_error, anchor)
            anchor_frames += window["frame"][np.isfinite(anchor).all(-1).any(-1)].tolist()
            self.last_time = float(window["filter_time"][-1])
        if anchor_frames:
            self.summary.settings["anchor_frames"] = anchor_frames

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
                if self.state is not None:  # what --resume reads: handed to the system batch by batch
                    with _naming_the_file(self.state.path, self.summary.last_frame):
                        self.state.flush()
        except BaseException as exc:  # reported by the run, which then stops
            self.error = exc
            while True:  # keep draining so the producer never blocks on a dead writer
                if self.queue.get() is None:
                    return

    def _write_frame(self, frame: VideoFrame, raw_xy: np.ndarray, confidence: np.ndarray) -> None:
        if self.reference is not None and frame.index <= self.reference:  # resuming: tracked before the stop
            self.smoother.set_reference_image(frame.image)
            return
        stages = self.summary.stages
        # The filter needs strictly increasing times; a file with repeated timestamps gets them nudged.
        t = frame.time if self.last_time is None else max(frame.time, self.last_time + 1e-6)
        self.last_time = t
        if self.first_time is None:
            self.first_time = frame.time
        t0 = time.perf_counter()
        anchor = (self.anchors.match(frame.index, frame.image, self.state.n if self.state is not None else None)
                  if self.anchors else None)
        xy, visible = self.smoother.update(t, raw_xy, confidence, frame.image, anchor)
        t1 = time.perf_counter()
        stages["smoothing"].add(t1 - t0, 1)
        if anchor is not None:
            self.summary.settings.setdefault("anchor_frames", []).append(frame.index)
        if self.state is not None:
            flow = self.smoother.last_flow if self.smoother.flow is not None else (None, None)
            with _naming_the_file(self.state.path, frame.index):
                self.state.append(frame.index, frame.time, t, raw_xy, confidence, xy, visible, *flow, anchor)
        with _naming_the_file(self.csv.path, frame.index):
            self.csv.write_frame(frame.index, frame.time, xy, confidence, visible, raw_xy)
        # counted once its CSV rows are written: the summary's count and the CSV agree even if the video fails
        self.summary.frames_processed += 1
        if self.summary.first_frame is None:
            self.summary.first_frame = frame.index
        self.summary.last_frame = frame.index
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

    def finish(self) -> None:
        """Wait for the queued frames to be written, then close the CSV and the video."""
        self.queue.put(None)
        self.thread.join()
        last = self.summary.last_frame  # a file that fails on closing failed after the last frame written
        try:
            with _naming_the_file(self.csv.path, last):
                self.csv.close()
        finally:
            try:
                if self.state is not None:
                    with _naming_the_file(self.state.path, last):
                        self.state.close()
            finally:
                if self.video is not None:
                    with _naming_the_file(self.video.path, last):
                        self.video.close()

    def smoothed_rows(self):
        """RTS smoothing of the run's frames, computed on disk (:func:`tracker.smoothing.smooth_on_disk`):
        ``rows(start, stop)`` → (xy, visible). Its scratch files are in the state folder."""
        workspace = self.state.folder / "smoothing"
        workspace.mkdir(exist_ok=True)
        flow = self.smoother.flow is not None
        by_content = dict(self.anchors.found_by_content()) if self.anchors else {}  # row → (K, 2), found by pixels
        if self.anchors is not None and self.anchors.report:
            self.summary.settings["anchors"] = self.anchors.summary()
            if by_content:
                frames = self.state.column("frame")
                found = {int(frames[r]) for r in by_content}
                self.summary.settings["anchor_frames"] = sorted(
                    set(self.summary.settings.get("anchor_frames", [])) | found)

        def read_chunk(start, stop):
            raw, confidence, displacement, fb_error, anchor = self.state.filter_inputs(start, stop, flow)
            for row, xy in by_content.items():
                if start <= row < stop:
                    anchor[row - start] = np.where(np.isfinite(xy), xy, anchor[row - start])
            return raw, confidence, displacement, fb_error, anchor

        return smooth_on_disk(read_chunk, self.state.column("filter_time"), self.k, self.smoother.params, workspace)

    def tracks(self, names, skeleton, rows=None) -> Tracks:
        """The run's frames as Tracks in memory (for the extra formats and plots), with the positions of
        ``rows`` (see :meth:`smoothed_rows`) or the causal ones."""
        n = self.state.n
        xy, visible = (self.state.column("xy"), self.state.column("visible")) if rows is None else rows(0, n)
        return Tracks(
            names=list(names), frame=self.state.column("frame").astype(np.int64), time=self.state.column("time"),
            raw_xy=self.state.column("raw").reshape(-1, self.k, 2),
            confidence=self.state.column("confidence").reshape(-1, self.k),
            xy=np.asarray(xy).reshape(-1, self.k, 2), visible=np.asarray(visible).reshape(-1, self.k),
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
                  engine_sha256: str | None) -> tuple[int, dict, int]:
    """How far an earlier, unfinished run of the same input and settings got: the frames in its run state
    (:mod:`pipelines.run_state`), its summary, and the complete frames of its CSV.

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
    try:
        n_state = RunState.count(state_dir(summary_path.parent, summary_path.name[:-len(".summary.json")]),
                                 engine.names)
    except RunStateError as exc:
        raise ResumeError(f"{summary_path}: the earlier run left no run state to continue from ({exc}); it was "
                          "made by an older ppmtrack or its state was removed: start over without --resume"
                          ) from None
    return n_state, previous, _csv_frames(csv_path, len(engine.names))


def _csv_frames(path: Path, n_keypoints: int) -> int:
    """Complete frames in a tracks CSV (its complete lines after the header, K a frame), read in blocks."""
    lines = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
    return max(0, lines - 1) // max(1, n_keypoints)


def _write_csv_from_state(state: RunState, path: Path, names, rows=None) -> None:
    """Rewrite a tracks CSV atomically from the run state, with the positions of ``rows`` (``rows(start, stop)``
    → (xy, visible), e.g. :meth:`_TrackWriter.smoothed_rows`) or the causal ones; a window of frames at a time."""
    with atomic_path(path) as tmp, TracksCsvWriter(tmp, names) as out:
        for start in range(0, state.n, SPILL_CHUNK):
            w = state.window(start, start + SPILL_CHUNK)
            xy, visible = (w["xy"], w["visible"]) if rows is None else rows(start, start + len(w))
            for i in range(len(w)):
                out.write_frame(w["frame"][i], w["time"][i], xy[i], w["confidence"][i], visible[i], w["raw"][i])


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
        selection in ``out_dir`` and give the tracks of an uninterrupted run: the filter is replayed over the
        earlier frames' detections, flow and anchors from the run state ``<stem>.state/``
        (:mod:`pipelines.run_state`), tracking restarts after the last frame it holds (the CSV is cut to those
        frames; ``summary.resumed`` counts the ones tracked again), and the final smoothing covers the whole run.
        The annotated video of the resumed part goes to ``<stem>.from<FRAME>.mp4``.
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
    engine_sha256 = engine_file_sha256(engine, engine_path)  # from the engine's own read of its file
    identity = engine_identity(engine, engine_path, engine_sha256)
    previous_summary = None
    n_before = csv_before = 0
    first = start
    reference = None  # resuming: the last frame tracked before, decoded again for the next frame's flow
    state_folder = None if (is_live_spec(source_spec) if live is None else live) else state_dir(out_dir, stem)
    if resume:
        if state_folder is None:
            raise ResumeError("--resume works for video files only; a live stream cannot be resumed")
        n_before, previous_summary, csv_before = _resume_point(paths, source_spec, engine, start, stop, stride,
                                                               engine_sha256)
        n_before = min(n_before, csv_before)  # frames in both the run state and the CSV
        if n_before:
            window = np.memmap(state_folder / "frames.bin", dtype=record_dtype(len(engine.names)), mode="r",
                               shape=(n_before,))
            reference = int(window["frame"][-1])
            first_before = int(window["frame"][0])
            del window
            first = reference + stride
        if write_video:
            paths["video"] = out_dir / f"{stem}.from{first}.mp4"
    elif state_folder is not None:
        _offer_resume(paths["summary"])

    open_at = first if reference is None else reference
    if source is not None and open_at != start:  # resuming: the batch opened it from --start
        source.close()
        source = None
    if source is None:
        source = open_source(source_spec, start=open_at, stop=stop, stride=stride, live=live,
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
                                            identity=identity, overwrite=overwrite,
                                            selection=frame_selection(start, stop, stride))
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
                "keypoints": list(engine.names), "skeleton": [list(e) for e in engine.skeleton],
                "resolution": engine.resolution,
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
    if resume:
        summary.resumed = {"from_frame": first, "frames_before": n_before,
                           "frames_retracked": max(0, csv_before - n_before), "reference_frame": reference,
                           "previous_status": previous_summary.get("status")}
        earlier = previous_summary.get("outputs") or {}
        parts = [*(earlier.get("video_parts") or []), *([earlier["video"]] if earlier.get("video") else [])]
        if parts:
            summary.outputs["video_parts"] = parts
        summary.frames_processed = n_before
        if n_before:
            summary.first_frame, summary.last_frame = first_before, reference
        summary.started_at = previous_summary.get("started_at", summary.started_at)
        logger.info("resuming after frame %s (%d frames tracked before%s)", reference, n_before,
                    f"; {csv_before - n_before} frames of the CSV are tracked again" if csv_before > n_before else "")
    state = None
    try:
        video = None
        if write_video:
            video = AnnotatedVideoWriter(paths["video"], info.width, info.height,
                                         info.fps_fraction or info.fps or DEFAULT_VIDEO_FPS, engine.names,
                                         engine.skeleton, **video_style)
        if not is_live:
            # a URL read as a file (not a live stream) gets its run state too
            state = RunState(state_folder or state_dir(out_dir, stem), engine.names,
                             keep=n_before if resume else None)
            if resume:  # the CSV of exactly the frames the state holds (no half-written or unrecorded frame)
                with _naming_the_file(paths["csv"]):
                    _write_csv_from_state(state, paths["csv"], engine.names)
        anchors = None if flow == "off" else AnchorFinder(getattr(engine, "info", {}), str(source_spec),
                                                          len(engine.names))
        writer = _TrackWriter(engine, paths["csv"], video, params, summary, state=state,
                              flow=None if flow == "off" else FlowParams(), anchors=anchors,
                              clock_origin=source.started_at if is_live else None, reference=reference)
        with _naming_the_file(paths["summary"]):
            summary.write(paths["summary"])
    except BaseException:
        source.close()
        if state is not None:
            state.close()
        raise

    logger.info("tracking %s (%dx%d%s) → %s", redact_url(source_spec), info.width, info.height,
                f", {info.fps:.2f} fps" if info.fps else "", out_dir)
    bar = None
    if progress and not is_live:
        bar = progress_bar(expected_frames(info.n_frames, first, stop, stride), stem, "frame")
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
                gap = batch.gap  # recorded in the summary from the source's outages (record_source_counts)
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
                record_source_counts(summary, source.stats, batch_stats, crops)
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
            failure = failure or writer.error or exc
    failure = failure or writer.error

    stats = source.stats
    record_source_counts(summary, stats, batch_stats, crops)
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
    elif summary.status == "complete" and writer.state is not None:
        writer.state.remove()  # nothing left to resume; an unfinished run keeps it for --resume
    if failure is not None:
        raise failure
    if keyboard_interrupt:
        raise KeyboardInterrupt
    return summary


SELF_CHECK_MAX_FRAMES = 100_000
"""The detector's self-check holds the run's tracks in memory (about 1 KB a frame for 20 keypoints): longer runs
skip it (and say so in the summary) to keep memory independent of the video's length."""


def _check_detector(writer: _TrackWriter, engine, rows, fps: float | None) -> dict:
    """The summary's ``detector`` (:mod:`pipelines.self_check`) of a file run with optical flow; under the key
    ``tracks`` the run's tracks with the confidence capped where the detections are no better than chance."""
    if writer.smoother.flow is None:
        return {"skipped": "no optical flow in this run (--flow off): nothing to check the detections against"}
    n = writer.state.n
    if n > SELF_CHECK_MAX_FRAMES:
        return {"skipped": f"{n} frames: the self-check runs on runs of up to {SELF_CHECK_MAX_FRAMES} frames"}
    tracks = writer.tracks(engine.names, engine.skeleton, rows)
    checked, report = self_check(tracks, writer.state.column("flow").reshape(n, -1, 2),
                                 writer.state.column("flow_error").reshape(n, -1), writer.smoother.params, fps)
    report["tracks"] = checked
    return report


def _finish_outputs(summary: RunSummary, writer: _TrackWriter, engine, paths: dict, extra_formats: list[str],
                    stem: str, engine_name: str, source_spec, fps: float | None, rts: bool,
                    format_options: dict, plots: bool = False) -> None:
    """End of run: RTS-smooth and atomically rewrite the CSV (complete file runs), the extra formats, the plots."""
    if not summary.frames_processed:
        return
    rows = tracks = None
    if rts:
        t0 = time.perf_counter()
        rows = writer.smoothed_rows()
        t1 = time.perf_counter()
        summary.detector = _check_detector(writer, engine, rows, fps)
        if summary.detector.get("tracks") is not None:  # positions no better than chance: confidence capped
            tracks = summary.detector.pop("tracks")
            write_tracks_csv(tracks, paths["csv"])
        else:
            summary.detector.pop("tracks", None)
            _write_csv_from_state(writer.state, paths["csv"], engine.names, rows)
        summary.csv_positions = "rts"
        summary.finalize_s.update(rts_smoothing=t1 - t0, csv_rewrite=time.perf_counter() - t1)
    if tracks is None and writer.keep and (extra_formats or plots):  # these take the whole run in memory
        tracks = writer.tracks(engine.names, engine.skeleton, rows)
    if extra_formats:
        t0 = time.perf_counter()
        if tracks is None:  # a stream keeps nothing in memory: read back what the CSV holds
            tracks = read_tracks_csv(paths["csv"], skeleton=engine.skeleton)
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
