"""The bounded queue between a source's decoding thread and its consumer."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

POLL_S = 0.1
"""How often waiting threads look at the stop flags."""


@dataclass
class End:
    """Queue sentinel: the decoding thread finished, with the error to raise to the consumer if any."""

    error: BaseException | None = None


class BoundedQueue:
    """A bounded FIFO whose ``put`` either blocks or drops the oldest queued frame when full.

    ``stats`` (a :class:`SourceStats`) receives ``frames_dropped`` and ``max_queue_depth``; ``stopped`` ends a
    blocked ``put``. Only items of class ``droppable`` (frames) are ever dropped: gaps and the end sentinel
    are kept.
    """

    def __init__(self, size: int, policy: str, stats, stopped: threading.Event, droppable: type):
        self._droppable = droppable
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
                    oldest_frame = next((x for x in self._items if isinstance(x, self._droppable)), None)
                    if oldest_frame is None:
                        break
                    self._items.remove(oldest_frame)
                    self._stats.frames_dropped += 1
                else:
                    if self._stopped.is_set():
                        return False
                    self._cond.wait(POLL_S)
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
