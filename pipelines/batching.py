"""Group a source's frames into batches of same-size frames for the engine, on a small pump thread.

Files fill every batch (throughput); live streams take what is already queued, up to the batch size, so a
frame never waits for later frames to arrive (latency).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ppmtrack.pipelines.sources import Gap, VideoFrame

_POLL_S = 0.1


@dataclass
class BatchStats:
    """Seconds the consumer of :func:`iter_batches` waited for frames (decoding slower than the engine)."""

    waiting_s: float = 0.0
    batches: int = 0
    frames: int = 0


@dataclass
class _End:
    error: BaseException | None = None


@dataclass
class Batch:
    """Same-size frames to predict together, or one :class:`Gap` of a live stream (``frames`` empty)."""

    frames: list[VideoFrame] = field(default_factory=list)
    gap: Gap | None = None


def iter_batches(items: Iterable[VideoFrame | Gap], batch_size: int, *, fill: bool,
                 stop_event: threading.Event, stats: BatchStats | None = None) -> Iterator[Batch]:
    """Yield :class:`Batch` es of up to ``batch_size`` same-size frames from ``items`` (a Source).

    Parameters
    ----------
    items
        Iterable of :class:`VideoFrame` and :class:`Gap`, read on a pump thread into a queue of
        ``batch_size`` items, so memory stays bounded.
    batch_size
        Largest number of frames per batch.
    fill
        True (files): wait until a batch is full (or the input ends). False (live): take only the frames
        already queued, so the first frame of a batch never waits for the next one.
    stop_event
        Ends the iteration within ~0.1 s when set.
    stats
        Filled with the seconds spent waiting for input and the batch count.

    A change of frame size (a camera reconnecting at another resolution) or a :class:`Gap` ends a batch. An
    exception raised while iterating ``items`` is raised here.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stats = stats if stats is not None else BatchStats()
    pending: queue.Queue = queue.Queue(maxsize=batch_size)
    pump_done = threading.Event()

    def offer(item) -> bool:
        while not (stop_event.is_set() or pump_done.is_set()):
            try:
                pending.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        error = None
        try:
            for item in items:
                if not offer(item):
                    break
        except BaseException as exc:  # handed to the consumer
            error = exc
        offer(_End(error))

    thread = threading.Thread(target=pump, daemon=True, name="ppmtrack-batcher")
    thread.start()

    def take(block: bool):
        t0 = time.perf_counter()
        try:
            while True:
                if stop_event.is_set():
                    return _End()
                try:
                    return pending.get(timeout=_POLL_S) if block else pending.get_nowait()
                except queue.Empty:
                    if not block:
                        return None
        finally:
            stats.waiting_s += time.perf_counter() - t0

    carry = None
    try:
        while True:
            item = carry if carry is not None else take(block=True)
            carry = None
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            if isinstance(item, Gap):
                yield Batch(gap=item)
                continue
            frames = [item]
            while len(frames) < batch_size:
                nxt = take(block=fill)
                if nxt is None:
                    break
                if not isinstance(nxt, VideoFrame) or nxt.image.shape != frames[0].image.shape:
                    carry = nxt
                    break
                frames.append(nxt)
            stats.batches += 1
            stats.frames += len(frames)
            yield Batch(frames=frames)
    finally:
        pump_done.set()  # the pump ends at its next item, or when the source is closed
