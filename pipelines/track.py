"""A tracking run: video (file or stream) → engine → smoother → tracks CSV, annotated video, summary.

Three threads share the work: the source's decoding thread, the calling thread (batches frames and runs the
engine) and a writer thread (smooths causally, appends to the CSV, encodes the annotated video). Queues
between them are bounded, so memory does not grow with the length of the run. See docs/cli.md.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import logging
import queue
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.batching import BatchStats, iter_batches
from ppmtrack.pipelines.io.csv import TracksCsvWriter, read_tracks_csv, write_tracks_csv
from ppmtrack.pipelines.io.formats import TRACK_FORMATS, write_tracks
from ppmtrack.pipelines.io.video import AnnotatedVideoWriter
from ppmtrack.pipelines.outputs import engine_identity, input_identity, prepare_output_set
from ppmtrack.pipelines.sources import Source, VideoFrame, is_live_spec, open_source
from ppmtrack.pipelines.summary import RunSummary
from ppmtrack.tracker import OnlineSmoother, SmoothingParams, Tracks, smooth_keypoints

logger = logging.getLogger("ppmtrack")

OUTPUT_FORMATS = ("csv", *TRACK_FORMATS)
FORMAT_PACKAGES = {"dlc": ("pandas", "tables"), "sleap": ("h5py",), "nwb": ("pynwb", "ndx_pose")}
SMOOTH_MODES = ("auto", "rts", "causal")
STATUS_INTERVAL_S = 5.0
WRITER_QUEUE_BATCHES = 2
LATENCY_WINDOW = 100_000  # live: latency percentiles over the last this many frames
DEFAULT_VIDEO_FPS = 30.0  # for the annotated video of a stream that declares no rate (frame times are kept)


class OutputError(PpmtrackError, OSError):
    """The output folder cannot be created or written to."""


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


def redact_url(spec: str | Path) -> str:
    """The source as it may be written into files: a URL's user name and password replaced by ``***``."""
    text = str(spec)
    if not is_live_spec(text):
        return text
    parts = urlsplit(text)
    if parts.username is None and parts.password is None:
        return text
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=netloc).geturl()


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
        raise ValueError(f"unknown output format {unknown[0]!r}; choose among {', '.join(OUTPUT_FORMATS)}")
    extra = [f for f in dict.fromkeys(formats) if f != "csv"]
    for fmt in extra:
        missing = [m for m in FORMAT_PACKAGES[fmt] if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"output format {fmt!r} needs the Python package(s) {', '.join(missing)}; "
                             "install them with: pip install 'ppmtrack[formats]'")
    return extra


class _TrackWriter:
    """The writer thread: causal smoothing, the growing CSV and the annotated video, one frame at a time.

    ``keep`` keeps the per-frame arrays (a few numbers per keypoint) for the smoothing at the end of a file.
    """

    def __init__(self, engine, csv_path: Path, video: AnnotatedVideoWriter | None, params: SmoothingParams,
                 summary: RunSummary, keep: bool, clock_origin: float | None = None):
        self.k = len(engine.names)
        self.smoother = OnlineSmoother(self.k, params)
        self.csv = TracksCsvWriter(csv_path, engine.names)
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
        self.thread = threading.Thread(target=self._run, daemon=True, name="ppmtrack-writer")
        self.thread.start()

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
        xy, visible = self.smoother.update(t, raw_xy, confidence)
        t1 = time.perf_counter()
        stages["smoothing"].add(t1 - t0, 1)
        self.csv.write_frame(frame.index, frame.time, xy, confidence, visible, raw_xy)
        if self.video is not None:
            if frame.image.shape[:2] == (self.video.height, self.video.width):
                self.video.write(frame.image, xy, confidence, visible, time=frame.time - self.first_time)
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

    def finish(self) -> None:
        """Wait for the queued frames to be written, then close the CSV and the video."""
        self.queue.put(None)
        self.thread.join()
        try:
            self.csv.close()
        finally:
            if self.video is not None:
                self.video.close()

    def tracks(self, names, skeleton) -> Tracks:
        """The kept frames as Tracks with the causal positions."""
        k = self.k
        return Tracks(
            names=list(names), frame=np.array(self.frames, dtype=np.int64), time=np.array(self.times),
            raw_xy=np.array(self.raw).reshape(-1, k, 2), confidence=np.array(self.conf).reshape(-1, k),
            xy=np.array(self.xy).reshape(-1, k, 2), visible=np.array(self.visible).reshape(-1, k),
            skeleton=list(skeleton),
        )


def _thread_cpu_seconds(source: Source) -> float | None:
    """CPU seconds used so far by the source's decoding thread (None where the platform cannot tell)."""
    thread = getattr(source, "_thread", None)  # Source keeps its decoding thread here
    if thread is None or not thread.is_alive() or not hasattr(time, "pthread_getcpuclockid"):
        return None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, OverflowError, TypeError):
        return None


def _expected_frames(n_frames: int | None, start: int, stop: int | None, stride: int) -> int | None:
    if n_frames is None:
        return None
    end = n_frames if stop is None else min(stop, n_frames)
    return len(range(start, end, stride))


def track_video(
    source_spec: str | Path,
    engine,
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
    live: bool | None = None,
    drop_policy: str | None = None,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    engine_path: str | Path | None = None,
    engine_name: str | None = None,
    ffmpeg_options: dict | None = None,
    max_reconnect_s: float = 60.0,
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
        Filter parameters (``min_confidence`` also decides which keypoints the video draws as seen).
    smooth
        "auto": RTS for files, causal for streams; "rts": forward-backward smoothing at the end of a file
        (the CSV is rewritten atomically); "causal": keep the forward filter's positions. Streams are
        always causal.
    live, drop_policy
        Passed to :func:`pipelines.sources.open_source`.
    progress
        Show a tqdm bar (files) or log a status line every ~5 s (streams), on stderr.
    stop_event
        Set it (e.g. from a SIGINT handler) to stop: every output is flushed and closed, and the summary
        says "interrupted".
    engine_path, engine_name
        Recorded in the summary (the name defaults to the engine file's stem).
    ffmpeg_options, max_reconnect_s
        Passed to :func:`pipelines.sources.open_source` (e.g. ``{"rtsp_transport": "udp"}``).
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
    ValueError
        Bad arguments (unknown smoothing mode or output format, a format's package missing).
    """
    if smooth not in SMOOTH_MODES:
        raise ValueError(f"smooth must be one of {', '.join(SMOOTH_MODES)}, got {smooth!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    params = smoothing if smoothing is not None else SmoothingParams()
    extra_formats = check_output_formats(output_formats)
    out_dir = prepare_output_dir(out_dir)
    halt = stop_event if stop_event is not None else threading.Event()

    source = source or open_source(source_spec, start=start, stop=stop, stride=stride, live=live,
                                   queue_size=max(8, batch_size), drop_policy=drop_policy, stop_event=halt,
                                   ffmpeg_options=ffmpeg_options, max_reconnect_s=max_reconnect_s)
    info = source.info
    is_live = info.is_live
    if is_live and smooth == "rts":
        logger.warning("a live stream is smoothed causally; --smooth rts applies to files only")
    final_rts = not is_live and smooth in ("auto", "rts")
    try:
        output_set = prepare_output_set(source_spec, out_dir, stem=stem, write_video=write_video,
                                        identity=engine_identity(engine, engine_path), overwrite=overwrite)
    except BaseException:
        source.close()
        raise
    stem, paths = output_set.stem, output_set.paths()
    name = engine_name or (Path(engine_path).stem if engine_path else "engine")
    summary = RunSummary(
        input={"source": redact_url(source_spec), "path": input_identity(source_spec), "live": is_live,
               "width": info.width, "height": info.height, "fps": info.fps, "codec": info.codec,
               "n_frames_estimate": info.n_frames,
               "start": start, "stop": stop, "stride": stride},
        engine={"path": str(Path(engine_path).resolve()) if engine_path else None, "name": name,
                "model": engine.model.name,
                "keypoints": list(engine.names), "resolution": engine.resolution,
                "device": str(engine.model.device)},
        settings={"batch_size": batch_size, "smooth": "rts" if final_rts else "causal",
                  "smoothing": dataclasses.asdict(params), "output_formats": ["csv", *extra_formats],
                  "write_video": write_video,
                  "drop_policy": drop_policy or ("drop_oldest" if is_live else "block")},
        outputs={"csv": str(paths["csv"]), "video": str(paths["video"]) if paths["video"] else None,
                 "summary": str(paths["summary"]), "formats": []},
    )
    try:
        video = None
        if write_video:
            video = AnnotatedVideoWriter(paths["video"], info.width, info.height,
                                         info.fps_fraction or info.fps or DEFAULT_VIDEO_FPS, engine.names,
                                         engine.skeleton, min_confidence=params.min_confidence)
        writer = _TrackWriter(engine, paths["csv"], video, params, summary, keep=not is_live,
                              clock_origin=source.started_at if is_live else None)
        summary.write(paths["summary"])
    except BaseException:
        source.close()
        raise

    logger.info("tracking %s (%dx%d%s) → %s", redact_url(source_spec), info.width, info.height,
                f", {info.fps:.2f} fps" if info.fps else "", out_dir)
    bar = None
    if progress and not is_live:
        from tqdm import tqdm

        bar = tqdm(total=_expected_frames(info.n_frames, start, stop, stride), unit="frame", file=sys.stderr,
                   desc=stem, dynamic_ncols=True)
    batch_stats = BatchStats()
    t_start = time.perf_counter()
    decode_cpu = None
    failure: BaseException | None = None
    keyboard_interrupt = False
    batches = iter_batches(source, batch_size, fill=not is_live, stop_event=halt, stats=batch_stats)
    try:
        next_status = time.monotonic() + STATUS_INTERVAL_S
        for batch in batches:
            decode_cpu = _thread_cpu_seconds(source) or decode_cpu
            if batch.gap is not None:
                gap = batch.gap
                summary.gaps.append({"start_time": round(gap.start_time, 3),
                                     "end_time": round(gap.end_time, 3),
                                     "duration_s": round(gap.duration, 3), "reason": gap.reason})
                logger.warning("stream gap of %.1f s (%s)", gap.duration, gap.reason)
                continue
            images = np.stack([f.image for f in batch.frames])
            t0 = time.perf_counter()
            prediction = engine.predict(images)
            summary.stages["inference"].add(time.perf_counter() - t0, len(batch.frames))
            if not writer.put(batch.frames, prediction):
                break
            if bar is not None:
                bar.update(len(batch.frames))
            elif progress and time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_INTERVAL_S
                elapsed = time.perf_counter() - t_start
                logger.info("%d frames processed (%.1f fps), %d dropped, %d decode errors, %d gaps",
                            summary.stages["inference"].frames, summary.stages["inference"].frames / elapsed,
                            source.stats.frames_dropped, source.stats.decode_errors, len(summary.gaps))
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
    summary.frames_read = stats.frames_read
    summary.frames_dropped = stats.frames_dropped
    summary.decode_errors = stats.decode_errors
    summary.reconnects = stats.reconnects
    summary.waiting_for_frames_s = batch_stats.waiting_s
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
                            info.fps, final_rts and summary.status == "complete")
        except BaseException as exc:
            failure = exc
    if failure is not None:
        summary.status = f"failed: {failure}" if str(failure) else f"failed: {type(failure).__name__}"
    summary.wall_time_s = time.perf_counter() - t_start
    summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary.write(paths["summary"])
    if failure is not None:
        raise failure
    if keyboard_interrupt:
        raise KeyboardInterrupt
    return summary


def _finish_outputs(summary: RunSummary, writer: _TrackWriter, engine, paths: dict, extra_formats: list[str],
                    stem: str, engine_name: str, source_spec, fps: float | None, rts: bool) -> None:
    """End of run: RTS-smooth and atomically rewrite the CSV (complete file runs), then the extra formats."""
    if not summary.frames_processed:
        return
    tracks = None
    if writer.keep:
        tracks = writer.tracks(engine.names, engine.skeleton)
    if rts:
        t0 = time.perf_counter()
        xy, visible = smooth_keypoints(tracks.raw_xy, tracks.confidence, np.array(writer.filter_times),
                                       writer.smoother.params)
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
                               video_path=None if is_live_spec(source_spec) else source_spec, fps=fps)
        summary.outputs["formats"] = [str(p) for p in written]
        summary.finalize_s["formats"] = time.perf_counter() - t0
