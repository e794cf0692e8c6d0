"""The consumer side of a video source: :class:`Source`, what it yields, and the :class:`Feed` readers push to.

A reader (file or live) runs on the source's decoding thread and only sees a :class:`Feed`: ``feed.put(item)``
queues a frame or gap (False when the consumer has gone), ``feed.stopping()`` says whether to stop, and
``feed.stats`` holds the counters. The consumer iterates the :class:`Source`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.sources.frame_queue import POLL_S, BoundedQueue, End

DropPolicy = Literal["drop_oldest", "block"]


class SourceError(PpmtrackError, OSError):
    """A video source cannot be opened or read: missing file, not a video, unreachable stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a source once it is open.

    ``fps`` is the declared or guessed average rate (None if unknown); ``n_frames`` is an estimate for files
    (container metadata, or duration times rate) and None for live streams. ``width`` and ``height`` are those
    of the frames as yielded, i.e. after the file's display rotation (``rotation``, degrees counter-clockwise,
    0 when the file has none) has been applied.
    """

    location: str
    width: int
    height: int
    fps: float | None
    fps_fraction: Fraction | None
    n_frames: int | None
    codec: str
    is_live: bool
    rotation: int = 0


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
    """Counters of a source, updated by its decoding thread while it runs.

    ``frames_damaged``: frames decoded but not yielded because they were flagged corrupt, were predicted from
    a lost frame (skipped until the next key frame), or could not be numbered for sure. ``frames_missing``
    (files, set at the end): frames of the selection the file declares or indexes but that never decoded.
    ``truncated`` (files): the data ends before the end its header declares.
    """

    frames_read: int = 0
    frames_yielded: int = 0
    decode_errors: int = 0
    frames_damaged: int = 0
    frames_missing: int = 0
    truncated: bool = False
    frames_dropped: int = 0
    gaps: int = 0
    reconnects: int = 0
    seconds_lost: float = 0.0
    max_queue_depth: int = 0
    outages: list = field(default_factory=list)
    """Every outage as a :class:`Gap`, also one the run ended in (``end_time``: when the run stopped waiting) or
    one whose gap marker the consumer never took from the queue."""


class Feed:
    """The producer side of a :class:`Source`, handed to the reader that runs on the decoding thread."""

    def __init__(self, queue: BoundedQueue, stats: SourceStats, stopping: Callable[[], bool]):
        self._queue = queue
        self.stats = stats
        self.stopping = stopping
        """True once the consumer closed the source or set its stop event: the reader should return."""

    def put(self, item: VideoFrame | Gap) -> bool:
        """Queue a frame or gap for the consumer; False if the source was stopped meanwhile (then return)."""
        return self._queue.put(item)


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
        self._queue = BoundedQueue(queue_size, drop_policy, self.stats, self._closed, VideoFrame)
        self.feed = Feed(self._queue, self.stats, self._stopping)
        self._thread: threading.Thread | None = None

    def start(self, run: Callable[[Feed], None]) -> None:
        """Start the decoding thread: ``run(feed)`` decodes and puts items until done or stopped."""
        self._thread = threading.Thread(target=self._run_thread, args=(run,), daemon=True,
                                        name=f"ppmtrack-source {self.info.location}")
        self._thread.start()

    def _run_thread(self, run: Callable[[Feed], None]) -> None:
        error: BaseException | None = None
        try:
            run(self.feed)
        except BaseException as exc:  # handed to the consumer, raised there
            error = exc
        self._queue.put(End(error), force=True)

    def _stopping(self) -> bool:
        return self._closed.is_set() or self._stop_event.is_set()

    @property
    def decoding(self) -> bool:
        """True while the decoding thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def decode_cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the decoding thread (None once it ended, or where the OS cannot tell)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or not hasattr(time, "pthread_getcpuclockid"):
            return None
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, OverflowError, TypeError):
            return None

    def __iter__(self) -> Iterator[VideoFrame | Gap]:
        while True:
            if self._stopping():
                return
            item = self._queue.get(POLL_S)
            if item is None:
                continue
            if isinstance(item, End):
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
