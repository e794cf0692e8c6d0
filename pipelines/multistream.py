"""Several live cameras in one process: one tracking run per stream, their frames batched together.

Each stream runs :func:`pipelines.track.track_video` on its own thread, so it keeps its own outputs, its own
reconnect and gap handling and its own summary (with latency percentiles and drop counts). Their engine
calls go through one :class:`SharedBatcher`: it gathers the frames every stream has waiting, runs the engine
once per image size on all of them (cross-stream batching) and hands each stream its rows. It never waits for
a stream that has nothing to give, so a camera that drops does not stall the others. See docs/cli.md.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("ppmtrack")

GATHER_S = 0.005
"""How long the batcher waits for other streams' frames after the first request arrives."""


@dataclass
class _Request:
    images: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


class SharedBatcher:
    """An engine stand-in for several streams: ``predict`` calls from their threads share engine calls.

    Attributes other than ``predict`` (names, skeleton, model, resolution, ...) are the engine's own.
    ``max_batch`` caps the frames of one engine call; ``calls`` and ``frames`` count what was run.
    """

    def __init__(self, engine, max_batch: int = 32):
        self._engine = engine
        self.max_batch = max_batch
        self.calls = 0
        self.frames = 0
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="ppmtrack-shared-batcher")
        self._thread.start()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def predict(self, images) -> object:
        """Queue ``images`` (B, H, W, 3) for the next shared engine call and return their prediction."""
        request = _Request(np.asarray(images))
        with self._cond:
            if self._closed:
                raise RuntimeError("the shared batcher is closed")
            self._pending.append(request)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def close(self) -> None:
        """Stop the batcher thread (after the requests already queued)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[_Request]:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait(0.1)
            if not self._pending:
                return []
        time.sleep(GATHER_S)  # let the other streams' frames of this moment join
        with self._cond:
            shape = self._pending[0].images.shape[1:]
            taken, count = [], 0
            for request in list(self._pending):
                if request.images.shape[1:] == shape and (not taken or count + len(request.images)
                                                          <= self.max_batch):
                    taken.append(request)
                    count += len(request.images)
                    self._pending.remove(request)
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                if self._closed:
                    return
                continue
            try:
                prediction = self._engine.predict(np.concatenate([r.images for r in taken]))
            except BaseException as exc:  # every waiting stream gets the error
                for request in taken:
                    request.error = exc
                    request.done.set()
                continue
            self.calls += 1
            self.frames += sum(len(r.images) for r in taken)
            offset = 0
            for request in taken:
                n = len(request.images)
                request.result = _slice_prediction(prediction, offset, offset + n)
                offset += n
                request.done.set()


def _slice_prediction(prediction, start: int, stop: int):
    """Rows ``start:stop`` of every per-frame array of a Prediction."""
    import dataclasses

    values = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
    return dataclasses.replace(prediction, **{k: v[start:stop] for k, v in values.items() if v is not None})


def track_streams(urls: list[str], engine, out_dir, *, stems: dict[str, str] | None = None,
                  stop_event: threading.Event | None = None, max_batch: int = 32, **track_kwargs) -> dict:
    """Track several live streams at once through one engine; return ``{url: RunSummary or exception}``.

    Every stream runs until it ends (given up after ``max_reconnect_s``) or ``stop_event`` is set; one that
    fails does not stop the others. ``stems`` maps :func:`pipelines.outputs.input_identity` of each URL to
    its output stem (default: each URL's own). ``track_kwargs`` go to :func:`pipelines.track.track_video`.
    """
    from ppmtrack.pipelines.batch import run_threads
    from ppmtrack.pipelines.outputs import input_identity
    from ppmtrack.pipelines.track import track_video

    halt = stop_event or threading.Event()
    shared = SharedBatcher(engine, max_batch=max_batch)
    results: dict = {}

    def run(url: str) -> None:
        stem = (stems or {}).get(input_identity(url))
        try:
            results[url] = track_video(url, shared, out_dir, stem=stem, stop_event=halt, **track_kwargs)
        except BaseException as exc:  # recorded; the other streams go on
            results[url] = exc
            logger.error("%s: %s", input_identity(url), " ".join(str(exc).split()) or type(exc).__name__)

    threads = [threading.Thread(target=run, args=(url,), daemon=True, name=f"ppmtrack-stream {i}")
               for i, url in enumerate(urls)]
    try:
        run_threads(threads, halt)
    finally:
        shared.close()
    logger.debug("shared batcher: %d engine calls, %d frames", shared.calls, shared.frames)
    return results
