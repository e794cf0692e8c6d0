"""Live streams (RTSP, HTTP, UDP, TCP, SRT) read on a source's decoding thread, reconnecting after outages."""

from __future__ import annotations

import logging
import time

import av

from ppmtrack.pipelines.sources.file_reader import rotate_image, video_info
from ppmtrack.pipelines.sources.frame_queue import POLL_S
from ppmtrack.pipelines.sources.locations import describe_error, redact
from ppmtrack.pipelines.sources.source import Feed, Gap, SourceError, VideoFrame

logger = logging.getLogger("ppmtrack")

OPEN_TIMEOUT_S = 5.0
"""Seconds to wait for a live stream to answer when (re)connecting."""
STALL_TIMEOUT_S = 5.0
"""Seconds without data after which a live stream counts as dropped and is reconnected."""
MIN_TIMEOUT_S = 0.2
"""The shortest open/read timeout a (re)connection gets when little of the reconnect budget is left."""
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


def open_stream_error(url: str, exc: BaseException) -> SourceError:
    """The SourceError for a stream that cannot be opened, saying what happened in words."""
    shown = redact(url)
    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        if url.lower().startswith(("udp://", "rtp://")):
            return SourceError(f"{shown}: no packets arrived within {OPEN_TIMEOUT_S:g} s; check that the sender "
                               "is streaming to this address and port (and that no firewall drops them)")
        return SourceError(f"{shown}: no answer within {OPEN_TIMEOUT_S:g} s; check the address and that the "
                           "camera or server is running")
    return SourceError(f"{shown}: cannot open stream ({describe_error(exc)}); check the address and that "
                       "the camera or server is running")


class LiveReader:
    """Reads a live stream, reconnecting with exponential backoff; ``run(feed)`` puts frames and gaps.

    The stream is given up once ``max_reconnect_s`` has passed since the last frame without a new frame,
    whether the reopening fails, the server accepts but never answers, or the stream reopens but delivers
    nothing: every wait (the stall timeout, the backoff, each reopening's open and read timeouts) is cut to
    what is left of that budget. Every attempt to reopen the stream counts in ``stats.reconnects``.
    """

    def __init__(self, url: str, start: int, stop: int | None, stride: int, reconnect: bool,
                 max_reconnect_s: float, options: dict[str, str]):
        self.url = url
        self.shown = redact(url)
        self.start, self.stop, self.stride = start, stop, stride
        self.done = False
        self.reconnect = reconnect
        self.max_reconnect_s = max_reconnect_s
        self.stall_s = max(MIN_TIMEOUT_S, min(STALL_TIMEOUT_S, max_reconnect_s))
        self.user_options = dict(options)
        self.options = self.default_options(url) | options
        self.run_start = time.monotonic()
        try:
            self.container = self._open()
        except av.error.FFmpegError as exc:
            raise open_stream_error(url, exc) from None
        self.info = video_info(url, self.container.streams.video[0], is_live=True)

    @staticmethod
    def default_options(url: str) -> dict[str, str]:
        """Low-latency FFmpeg input options (docs/sources.md)."""
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

    def _open(self, budget_s: float | None = None):
        """Open the stream; ``budget_s`` (seconds left before giving up) caps the open and read timeouts."""
        open_s, read_s = OPEN_TIMEOUT_S, self.stall_s
        options = self.options
        if budget_s is not None:
            open_s, read_s = (max(MIN_TIMEOUT_S, min(t, budget_s)) for t in (open_s, read_s))
        if "timeout" not in self.user_options:  # FFmpeg's socket timeout (µs), as short as the read timeout
            options = options | {"timeout": str(int(read_s * 1_000_000))}
        container = av.open(self.url, options=options, timeout=(open_s, read_s))
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.shown}: the stream has no video")
        return container

    def _now(self) -> float:
        return time.monotonic() - self.run_start

    def _read_until_outage(self, feed: Feed, container,
                           outage: tuple[float, str] | None) -> tuple[bool, float, str]:
        """Decode and put frames until the stream fails or the source is done.

        ``outage`` is the (start time, reason) of the outage this connection ends; its :class:`Gap` is put
        before the first frame. Returns whether any frame arrived, the time of the last one, and the reason
        the reading stopped.
        """
        stats = feed.stats
        stream = container.streams.video[0]
        got_frames = False
        last_time = self._now()
        try:
            for packet in container.demux(stream):
                if feed.stopping():
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
                        stats.seconds_lost += gap.duration
                        stats.outages.append(gap)
                        logger.info("%s: stream back after %.1f s (%s)", self.shown, gap.duration, gap.reason)
                        outage = None
                        if not feed.put(gap):
                            return got_frames, last_time, "stopped"
                    index = stats.frames_read
                    stats.frames_read += 1
                    if self.stop is not None and index >= self.stop:
                        self.done = True
                        return got_frames, last_time, "stop index reached"
                    if index < self.start or (index - self.start) % self.stride:
                        continue
                    image = rotate_image(frame.to_ndarray(format="rgb24"),
                                         int(round((frame.rotation or 0) / 90.0)) % 4 * 90)
                    if not feed.put(VideoFrame(index=index, time=last_time, image=image)):
                        return got_frames, last_time, "stopped"
            return got_frames, last_time, "end of stream"
        except av.error.FFmpegError as exc:
            return got_frames, last_time, describe_error(exc)
        finally:
            container.close()

    def run(self, feed: Feed) -> None:
        """Read, and after each outage reconnect, until stopped, ``stop`` or the reconnect budget is spent.

        An outage the run ends in (stopped, or the budget spent) is recorded in ``feed.stats.outages`` too, with
        the time the reader stopped waiting as its end.
        """
        outage: tuple[float, str] | None = None
        try:
            outage = self._run(feed)
        finally:
            if outage is not None:
                gap = Gap(start_time=outage[0], end_time=self._now(), reason=f"{outage[1]}; the run ended during "
                                                                             "the outage")
                feed.stats.gaps += 1
                feed.stats.seconds_lost += gap.duration
                feed.stats.outages.append(gap)

    def _run(self, feed: Feed) -> tuple[float, str] | None:
        """:meth:`run`'s loop; returns the outage it ended in, if any."""
        container = self.container
        outage: tuple[float, str] | None = None
        give_up_at = 0.0
        while True:
            got_frames, last_time, reason = self._read_until_outage(feed, container, outage)
            if got_frames:
                outage = None
            if feed.stopping() or self.done:
                return outage
            if got_frames or outage is None:
                outage = (last_time, reason)
                give_up_at = self.run_start + last_time + self.max_reconnect_s  # the budget runs from the last frame
            elif time.monotonic() >= give_up_at:
                logger.warning("%s: no frame for %.0f s although the stream reopened (%s); giving up",
                               self.shown, self.max_reconnect_s, reason)
                return outage
            if not self.reconnect:
                logger.warning("%s: stream ended (%s); not reconnecting", self.shown, reason)
                return None
            if got_frames:
                logger.warning("%s: stream lost (%s); reconnecting", self.shown, reason)
            container = self._reconnect(feed, give_up_at, reason)
            if container is None:
                return outage

    def _reconnect(self, feed: Feed, give_up_at: float, reason: str):
        """Reopen the stream with exponential backoff; None if stopped or past ``give_up_at`` (monotonic).

        Each attempt counts in ``feed.stats.reconnects``; the backoff and the attempt's timeouts never reach past
        ``give_up_at``."""
        delay = FIRST_BACKOFF_S
        while True:
            wake = min(time.monotonic() + delay, give_up_at)
            while time.monotonic() < wake:
                if feed.stopping():
                    return None
                time.sleep(min(POLL_S, max(0.0, wake - time.monotonic())))
            left = give_up_at - time.monotonic()
            if left <= 0:
                logger.warning("%s: no frame for %.0f s (%s); giving up", self.shown, self.max_reconnect_s, reason)
                return None
            feed.stats.reconnects += 1
            try:
                return self._open(budget_s=left)
            except (av.error.FFmpegError, SourceError) as exc:
                reason = describe_error(exc)
                if time.monotonic() >= give_up_at:
                    logger.warning("%s: could not reconnect for %.0f s (%s); giving up", self.shown,
                                   self.max_reconnect_s, describe_error(exc))
                    return None
                logger.debug("%s: reconnect failed (%s); next try in %.1f s", self.shown, describe_error(exc),
                             delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
