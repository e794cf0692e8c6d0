"""Video sources decoded with PyAV: frame-exact file reading and live streams.

:func:`open_source` returns a :class:`Source` that decodes on a background thread into a bounded queue, so
decoding overlaps with whatever consumes the frames. Files are frame-exact and never drop frames; live streams
(RTSP, HTTP, UDP, TCP, SRT) drop the oldest queued frames when the consumer falls behind, reconnect after an
outage and report the outage as a :class:`Gap`. See ``docs/sources.md``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from ppmtrack.engine.errors import PpmtrackError

logger = logging.getLogger("ppmtrack")

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "srt://")
DropPolicy = Literal["drop_oldest", "block"]

OPEN_TIMEOUT_S = 5.0
"""Seconds to wait for a live stream to answer when (re)connecting."""
STALL_TIMEOUT_S = 5.0
"""Seconds without data after which a live stream counts as dropped and is reconnected."""
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
_POLL_S = 0.1
MAX_FAILED_READS = 50
"""Consecutive unreadable packets after which a damaged file is given up."""


class SourceError(PpmtrackError, OSError):
    """A video source cannot be opened or read: missing file, not a video, unreachable stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a source once it is open.

    ``fps`` is the declared or guessed average rate (None if unknown); ``n_frames`` is an estimate for files
    (container metadata, or duration times rate) and None for live streams.
    """

    location: str
    width: int
    height: int
    fps: float | None
    fps_fraction: Fraction | None
    n_frames: int | None
    codec: str
    is_live: bool


@dataclass
class VideoFrame:
    """One decoded frame: its index (see ``docs/sources.md``), time in seconds, and RGB uint8 HxWx3 image."""

    index: int
    time: float
    image: np.ndarray


@dataclass
class Gap:
    """An outage of a live stream: no frames arrived between ``start_time`` and ``end_time`` (run seconds).

    ``start_time`` is the arrival time of the last frame before the outage, ``end_time`` that of the first
    frame after it; ``reason`` is what ended the stream (an FFmpeg error message or ``"end of stream"``).
    """

    start_time: float
    end_time: float
    reason: str

    @property
    def duration(self) -> float:
        """Length of the outage in seconds."""
        return self.end_time - self.start_time


@dataclass
class SourceStats:
    """Counters of a source, updated by its decoding thread while it runs."""

    frames_read: int = 0
    frames_yielded: int = 0
    decode_errors: int = 0
    frames_dropped: int = 0
    gaps: int = 0
    reconnects: int = 0
    seconds_lost: float = 0.0
    max_queue_depth: int = 0


@dataclass
class _End:
    """Queue sentinel: the decoding thread finished, with the error to raise to the consumer if any."""

    error: BaseException | None = None


class _BoundedQueue:
    """A bounded FIFO whose ``put`` either blocks or drops the oldest queued frame when full."""

    def __init__(self, size: int, policy: DropPolicy, stats: SourceStats, stopped: threading.Event):
        self._items: collections.deque = collections.deque()
        self._size = size
        self._policy = policy
        self._stats = stats
        self._stopped = stopped
        self._cond = threading.Condition()

    def put(self, item: object, *, force: bool = False) -> bool:
        """Queue ``item``; returns False if the source was stopped while waiting for room.

        ``force`` queues past the bound (used for the end sentinel, which must never be lost).
        """
        with self._cond:
            while not force and len(self._items) >= self._size:
                if self._policy == "drop_oldest":
                    oldest_frame = next((x for x in self._items if isinstance(x, VideoFrame)), None)
                    if oldest_frame is None:
                        break
                    self._items.remove(oldest_frame)
                    self._stats.frames_dropped += 1
                else:
                    if self._stopped.is_set():
                        return False
                    self._cond.wait(_POLL_S)
            self._items.append(item)
            if not force:
                self._stats.max_queue_depth = max(self._stats.max_queue_depth, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> object | None:
        """Return the oldest item, or None if nothing arrived within ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)


class Source:
    """An open video source: iterate it for :class:`VideoFrame` (and, for live streams, :class:`Gap`) items.

    Created by :func:`open_source`. ``started_at`` is the ``time.monotonic()`` reading the times of live
    frames and gaps count from. Use as a context manager or call :meth:`close`; iteration ends at the end
    of a file (or at ``stop``), when a live stream cannot be reconnected, or promptly when ``stop_event`` is
    set.
    """

    def __init__(
        self,
        info: VideoInfo,
        *,
        queue_size: int,
        drop_policy: DropPolicy,
        stop_event: threading.Event | None,
    ):
        self.info = info
        self.stats = SourceStats()
        self.started_at = time.monotonic()
        self._stop_event = stop_event or threading.Event()
        self._closed = threading.Event()
        self._queue = _BoundedQueue(queue_size, drop_policy, self.stats, self._closed)
        self._thread: threading.Thread | None = None

    def _start(self, target) -> None:
        self._thread = threading.Thread(target=self._run_thread, args=(target,), daemon=True,
                                        name=f"ppmtrack-source {self.info.location}")
        self._thread.start()

    def _run_thread(self, target) -> None:
        error: BaseException | None = None
        try:
            target()
        except BaseException as exc:  # handed to the consumer, raised there
            error = exc
        self._queue.put(_End(error), force=True)

    def _stopping(self) -> bool:
        return self._closed.is_set() or self._stop_event.is_set()

    def _push(self, item: VideoFrame | Gap) -> bool:
        return self._queue.put(item)

    def __iter__(self) -> Iterator[VideoFrame | Gap]:
        while True:
            if self._stopping():
                return
            item = self._queue.get(_POLL_S)
            if item is None:
                continue
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            if isinstance(item, VideoFrame):
                self.stats.frames_yielded += 1
            yield item

    def close(self, timeout: float = 2.0) -> None:
        """Stop the decoding thread and wait up to ``timeout`` seconds for it to close the container."""
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_live_spec(spec: str | Path) -> bool:
    """True if ``spec`` is a network URL (rtsp, rtsps, http(s), udp, tcp, srt) rather than a file path."""
    return isinstance(spec, str) and spec.lower().startswith(LIVE_SCHEMES)


def open_source(
    spec: str | Path,
    *,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    live: bool | None = None,
    queue_size: int = 8,
    drop_policy: DropPolicy | None = None,
    reconnect: bool = True,
    max_reconnect_s: float = 60.0,
    stop_event: threading.Event | None = None,
    ffmpeg_options: Mapping[str, str] | None = None,
) -> Source:
    """Open a video file or live stream and start decoding it on a background thread.

    Parameters
    ----------
    spec
        A file path, or a stream URL (``rtsp://``, ``rtsps://``, ``http(s)://``, ``udp://``, ``tcp://``,
        ``srt://``).
    start, stop, stride
        Select frames ``start, start + stride, ...`` below ``stop`` (None: to the end) by frame index.
    live
        Treat ``spec`` as a live stream; default: True for the URL schemes above, False otherwise.
    queue_size
        How many decoded frames may wait for the consumer.
    drop_policy
        ``"drop_oldest"`` (default for live): when the queue is full, the oldest queued frame is discarded
        and counted in ``stats.frames_dropped``. ``"block"`` (default for files): decoding waits.
    reconnect
        Live only: reconnect after the stream ends or fails instead of ending the iteration.
    max_reconnect_s
        Live only: give up (log a warning, end the iteration) when the stream has not come back this many
        seconds after it was found lost. Tries are spaced 0.5, 1, 2, 4, 8, 8, ... seconds apart.
    stop_event
        When set (e.g. by a SIGINT/SIGTERM handler), iteration ends within ~0.1 s and the decoding thread
        closes the file or stream as soon as its current read returns (on a frozen stream, within the
        stall timeout ``STALL_TIMEOUT_S``).
    ffmpeg_options
        Extra FFmpeg input options that override the defaults, e.g. ``{"rtsp_transport": "udp"}`` for a
        server without RTSP-over-TCP.

    Returns
    -------
    Source
        Iterable of :class:`VideoFrame` (and :class:`Gap` for live streams); ``.info``, ``.stats``,
        ``.close()``.

    Raises
    ------
    SourceError
        The file is missing, cannot be opened or has no video stream; the stream cannot be reached.
    """
    if stride < 1 or start < 0 or queue_size < 1:
        raise ValueError("open_source needs stride >= 1, start >= 0 and queue_size >= 1")
    is_live = is_live_spec(spec) if live is None else live
    policy: DropPolicy = drop_policy or ("drop_oldest" if is_live else "block")
    if policy not in ("drop_oldest", "block"):
        raise ValueError(f"drop_policy must be 'drop_oldest' or 'block', not {policy!r}")
    if is_live:
        reader = _LiveReader(str(spec), start, stop, stride, reconnect, max_reconnect_s,
                             dict(ffmpeg_options or {}))
    else:
        reader = _FileReader(Path(spec), start, stop, stride, dict(ffmpeg_options or {}))
    source = Source(reader.info, queue_size=queue_size, drop_policy=policy, stop_event=stop_event)
    if is_live:
        source.started_at = reader.run_start
    reader.source = source
    source._start(reader.run)
    return source


def _describe(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _video_info(location: str, stream, is_live: bool) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    n_frames = None
    if not is_live:
        n_frames = stream.frames or None
        if n_frames is None and rate and stream.container.duration:
            n_frames = round(stream.container.duration / av.time_base * rate)
    return VideoInfo(
        location=location,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=float(rate) if rate else None,
        fps_fraction=Fraction(rate) if rate else None,
        n_frames=n_frames,
        codec=stream.codec_context.name,
        is_live=is_live,
    )


class _FileReader:
    """Decodes a file on the source's thread, numbering frames by their rank in presentation order."""

    source: Source

    def __init__(self, path: Path, start: int, stop: int | None, stride: int, options: dict[str, str]):
        self.path = path
        self.start, self.stop, self.stride = start, stop, stride
        if not path.exists():
            raise SourceError(f"{path}: no such file; check the path")
        if path.is_dir():
            raise SourceError(f"{path}: is a folder, not a video file")
        try:
            self.container = av.open(str(path), options=options)
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: cannot be opened as a video ({_describe(exc)})") from exc
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{path}: has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.info = _video_info(str(path), self.stream, is_live=False)

    def _frame_numbering(self) -> _FrameNumbering | None:
        """Read the packets only (no decoding) and number their pts in presentation order.

        None if pts are missing or repeated (then frames are counted as they decode). A frame that fails to
        decode keeps its place, so the frames after it keep their true indices.
        """
        pts: list[int] = []
        key_pts: set[int] = set()
        end = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                declared_end = _declared_end(container, stream)
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    if packet.pts is None:
                        return None
                    pts.append(packet.pts)
                    end = max(end, packet.pts + (packet.duration or 0))
                    if packet.is_keyframe:
                        key_pts.add(packet.pts)
        except (av.error.FFmpegError, UnicodeDecodeError):
            declared_end = None
        if not pts or len(set(pts)) != len(pts):
            return None
        # A file cut short (or whose damaged tail the demuxer took for its end) may miss packets that sort
        # before the last ones read; the declared duration tells whether the packets reached the end.
        complete = declared_end is not None and end >= declared_end
        return _FrameNumbering(pts, key_pts, complete)

    def _selected(self, index: int) -> bool:
        return index >= self.start and (index - self.start) % self.stride == 0

    def _decoded_frames(self, key_pts: set[int] | None) -> Iterator[av.VideoFrame]:
        """Yield the frames that decode cleanly, counting packets the decoder rejects.

        After a rejected packet the decoder is flushed and frames are discarded until the next key frame
        (one whose pts is a key packet's, when ``key_pts`` is known): frames predicted from a lost one show
        the wrong picture, and some decoders mislabel the pts of the frames that follow an error.
        """
        stats = self.source.stats
        failed_reads = 0
        resync = False
        finished = False
        while not finished:
            try:
                for packet in self.container.demux(self.stream):
                    failed_reads = 0
                    try:
                        frames = self.stream.decode(packet)
                    except av.error.FFmpegError as exc:
                        stats.decode_errors += 1
                        resync = True
                        self.stream.codec_context.flush_buffers()
                        logger.debug("%s: decode error at pts %s: %s", self.path, packet.pts, _describe(exc))
                        continue
                    for frame in frames:
                        if resync and frame.key_frame and (key_pts is None or frame.pts in key_pts):
                            resync = False
                        if not resync and not frame.is_corrupt:
                            yield frame
                finished = True
            except av.error.EOFError:
                finished = True
            except av.error.FFmpegError as exc:
                stats.decode_errors += 1
                resync = True
                self.stream.codec_context.flush_buffers()
                failed_reads += 1
                finished = failed_reads > MAX_FAILED_READS
                if finished:
                    logger.warning("%s: damaged data, decoding stops here (%s)", self.path, _describe(exc))

    def run(self) -> None:
        source = self.source
        stats = source.stats
        time_base = self.stream.time_base
        fps = self.info.fps or 1.0
        try:
            numbering = self._frame_numbering()
            last_index = -1
            for frame in self._decoded_frames(numbering.key_pts if numbering else None):
                if source._stopping():
                    return
                stats.frames_read += 1
                if numbering is not None:
                    index = numbering.index_of(frame.pts)
                elif stats.decode_errors == 0:
                    index = last_index + 1
                else:
                    index = None  # counting is off by the frames lost so far
                if index is None or index <= last_index:
                    continue
                last_index = index
                if self.stop is not None and index >= self.stop:
                    return
                if self._selected(index):
                    seconds = float(frame.pts * time_base) if frame.pts is not None else index / fps
                    image = frame.to_ndarray(format="rgb24")
                    if not source._push(VideoFrame(index=index, time=seconds, image=image)):
                        return
                if self.stop is not None and index >= self.stop - 1:
                    return
            if stats.decode_errors:
                logger.warning("%s: damaged file: %d unreadable packets; %d frames decoded", self.path,
                               stats.decode_errors, stats.frames_read)
        finally:
            self.container.close()


def _declared_end(container, stream) -> int | None:
    """End of the video stream in its time base as the header declares it (minus half a frame), or None."""
    if stream.duration:
        end = (stream.start_time or 0) + stream.duration
    elif container.duration:
        end = int(Fraction(container.duration, av.time_base) / stream.time_base)
    else:
        return None
    rate = stream.average_rate or stream.guessed_rate
    half_frame = int(1 / (2 * rate) / stream.time_base) if rate else 0
    return end - half_frame


class _FrameNumbering:
    """Frame index of each pts: its rank among all the file's packet pts.

    If the packets may not all have been read (damaged or truncated file), the last ones read may sort after
    packets that were never read, so ranks are trusted only below the smallest pts of the last few packets
    (twice the file's observed reordering depth, plus one); beyond that a constant-rate file is numbered by
    ``(pts - first pts) / frame duration`` and other frames get no index.
    """

    def __init__(self, pts: list[int], key_pts: set[int], complete: bool):
        ordered = sorted(pts)
        self.key_pts = key_pts
        self.ranks = {p: rank for rank, p in enumerate(ordered)}
        self.trusted_below = None
        if not complete:
            reorder_depth = max(abs(position - self.ranks[p]) for position, p in enumerate(pts))
            self.trusted_below = min(pts[-(2 * reorder_depth + 1) :])
        steps = {b - a for a, b in zip(ordered, ordered[1:], strict=False)}
        self.first_pts = ordered[0]
        self.step = steps.pop() if len(steps) == 1 else None

    def index_of(self, pts: int | None) -> int | None:
        """Index of the frame with this pts, or None if it cannot be known for sure."""
        if pts is None:
            return None
        if self.trusted_below is None or pts < self.trusted_below:
            return self.ranks.get(pts)
        if self.step and (pts - self.first_pts) % self.step == 0:
            return (pts - self.first_pts) // self.step
        return None


class _LiveReader:
    """Reads a live stream on the source's thread, reconnecting with exponential backoff after outages."""

    source: Source

    def __init__(self, url: str, start: int, stop: int | None, stride: int, reconnect: bool,
                 max_reconnect_s: float, options: dict[str, str]):
        self.url = url
        self.start, self.stop, self.stride = start, stop, stride
        self.done = False
        self.reconnect = reconnect
        self.max_reconnect_s = max_reconnect_s
        self.options = self._default_options(url) | options
        self.run_start = time.monotonic()
        try:
            self.container = self._open()
        except av.error.FFmpegError as exc:
            raise SourceError(f"{url}: cannot open stream ({_describe(exc)}); check the address and that "
                              f"the camera or server is running") from exc
        self.info = _video_info(url, self.container.streams.video[0], is_live=True)

    @staticmethod
    def _default_options(url: str) -> dict[str, str]:
        options = {
            "fflags": "nobuffer",
            "flags": "low_delay",
            "probesize": "500000",
            "analyzeduration": "1000000",
            "timeout": str(int(STALL_TIMEOUT_S * 1_000_000)),
        }
        if url.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        return options

    def _open(self):
        container = av.open(self.url, options=self.options, timeout=(OPEN_TIMEOUT_S, STALL_TIMEOUT_S))
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.url}: the stream has no video")
        return container

    def _now(self) -> float:
        return time.monotonic() - self.run_start

    def _read_until_outage(self, container, outage: tuple[float, str] | None) -> tuple[bool, float, str]:
        """Decode and queue frames until the stream fails or the source is done.

        ``outage`` is the (start time, reason) of the outage this connection ends; its :class:`Gap` is queued
        before the first frame. Returns whether any frame arrived, the time of the last one, and the reason
        the reading stopped.
        """
        source = self.source
        stats = source.stats
        stream = container.streams.video[0]
        got_frames = False
        last_time = self._now()
        try:
            for packet in container.demux(stream):
                if source._stopping():
                    return got_frames, last_time, "stopped"
                try:
                    frames = stream.decode(packet)
                except av.error.FFmpegError:
                    stats.decode_errors += 1
                    continue
                for frame in frames:
                    last_time = self._now()
                    got_frames = True
                    if outage is not None:
                        gap = Gap(start_time=outage[0], end_time=last_time, reason=outage[1])
                        stats.gaps += 1
                        stats.reconnects += 1
                        stats.seconds_lost += gap.duration
                        logger.info("%s: stream back after %.1f s (%s)", self.url, gap.duration, gap.reason)
                        outage = None
                        if not source._push(gap):
                            return got_frames, last_time, "stopped"
                    index = stats.frames_read
                    stats.frames_read += 1
                    if self.stop is not None and index >= self.stop:
                        self.done = True
                        return got_frames, last_time, "stop index reached"
                    if index < self.start or (index - self.start) % self.stride:
                        continue
                    image = frame.to_ndarray(format="rgb24")
                    if not source._push(VideoFrame(index=index, time=last_time, image=image)):
                        return got_frames, last_time, "stopped"
            return got_frames, last_time, "end of stream"
        except av.error.FFmpegError as exc:
            return got_frames, last_time, _describe(exc)
        finally:
            container.close()

    def run(self) -> None:
        source = self.source
        container = self.container
        outage: tuple[float, str] | None = None
        give_up_at = 0.0
        while True:
            got_frames, last_time, reason = self._read_until_outage(container, outage)
            if source._stopping() or self.done:
                return
            if got_frames or outage is None:
                outage = (last_time, reason)
                give_up_at = time.monotonic() + self.max_reconnect_s
            if not self.reconnect:
                logger.warning("%s: stream ended (%s); not reconnecting", self.url, reason)
                return
            logger.warning("%s: stream lost (%s); reconnecting", self.url, reason)
            container = self._reconnect(give_up_at)
            if container is None:
                return

    def _reconnect(self, give_up_at: float):
        """Reopen the stream with exponential backoff; None if stopped or past ``give_up_at`` (monotonic)."""
        source = self.source
        delay = FIRST_BACKOFF_S
        while True:
            wake = time.monotonic() + delay
            while time.monotonic() < wake:
                if source._stopping():
                    return None
                time.sleep(min(_POLL_S, max(0.0, wake - time.monotonic())))
            try:
                return self._open()
            except (av.error.FFmpegError, SourceError) as exc:
                if time.monotonic() >= give_up_at:
                    logger.warning("%s: could not reconnect for %.0f s (%s); giving up", self.url,
                                   self.max_reconnect_s, _describe(exc))
                    return None
                logger.debug("%s: reconnect failed (%s); next try in %.1f s", self.url, _describe(exc), delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def read_frames_at(path: str | Path, indices: list[int]) -> dict[int, np.ndarray]:
    """Decode a video file and return the frames at the given display-order indices as RGB uint8 arrays.

    Frame N is the N-th frame in presentation order, counting from 0, as in the tracks CSV.
    """
    wanted = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return out
