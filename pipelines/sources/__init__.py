"""Video sources decoded with PyAV: frame-exact file reading and live streams.

:func:`open_source` returns a :class:`Source` that decodes on a background thread into a bounded queue, so
decoding overlaps with whatever consumes the frames. Files are frame-exact and never drop frames; live streams
(RTSP, HTTP, UDP, TCP, SRT) drop the oldest queued frames when the consumer falls behind, reconnect after an
outage and report the outage as a :class:`Gap`. See ``docs/sources.md``.

Modules: :mod:`.source` (the consumer side: ``Source``, ``VideoFrame``, ``Gap``, and the ``Feed`` readers put
to), :mod:`.frame_queue`, :mod:`.file_reader`, :mod:`.numbering` (frame indices of files), :mod:`.live_reader`,
:mod:`.random_access` (``read_frames_at``) and :mod:`.locations` (URLs and their redaction).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import av

from ppmtrack.pipelines.sources.file_reader import MAX_FAILED_READS, FileReader
from ppmtrack.pipelines.sources.live_reader import MAX_BACKOFF_S, OPEN_TIMEOUT_S, STALL_TIMEOUT_S, LiveReader
from ppmtrack.pipelines.sources.locations import LIVE_SCHEMES, is_live_spec, redact, redact_url
from ppmtrack.pipelines.sources.random_access import FrameSet, read_frames_at
from ppmtrack.pipelines.sources.source import (
    DropPolicy,
    Feed,
    Gap,
    Source,
    SourceError,
    SourceStats,
    VideoFrame,
    VideoInfo,
)

__all__ = [
    "LIVE_SCHEMES", "MAX_BACKOFF_S", "MAX_FAILED_READS", "OPEN_TIMEOUT_S", "STALL_TIMEOUT_S", "DropPolicy",
    "Feed", "FrameSet", "Gap", "Source", "SourceError", "SourceStats", "VideoFrame", "VideoInfo", "is_live_spec",
    "open_source", "probe_source", "read_frames_at", "redact", "redact_url",
]


STREAMING_FORMATS = frozenset({"hls", "dash", "mpjpeg", "rtsp", "sdp", "rtp"})
"""Demuxers whose input is a live stream even when served over HTTP."""


def is_file_url(url: str) -> bool:
    """True if an http(s) URL serves a whole video file (finite duration, not a streaming format).

    Such a URL is read as a file: frame-exact, numbered by presentation order, nothing dropped.
    """
    if not url.lower().startswith(("http://", "https://")):
        return False
    try:
        with av.open(url, timeout=(OPEN_TIMEOUT_S, STALL_TIMEOUT_S)) as container:
            names = set(container.format.name.split(","))
            return bool(container.streams.video) and bool(container.duration) and container.duration > 0 \
                and not names & STREAMING_FORMATS
    except (av.error.FFmpegError, UnicodeDecodeError):
        return False


def probe_source(spec: str | Path, *, ffmpeg_options: Mapping[str, str] | None = None) -> VideoInfo:
    """Open a video file (or an http(s) URL of one) just long enough to read its :class:`VideoInfo`.

    Raises SourceError like :func:`open_source`; no decoding thread is started.
    """
    is_url = is_live_spec(spec)
    reader = FileReader(str(spec) if is_url else Path(spec), 0, None, 1, dict(ffmpeg_options or {}), is_url=is_url)
    reader.container.close()
    return reader.info


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
        ``srt://``). An http(s) URL of a whole video file (finite duration, e.g. an mp4 on a web server) is read
        as a file.
    start, stop, stride
        Select frames ``start, start + stride, ...`` below ``stop`` (None: to the end) by frame index.
    live
        Treat ``spec`` as a live stream; default: True for the URL schemes above (except http(s) URLs of
        whole files), False otherwise.
    queue_size
        How many decoded frames may wait for the consumer.
    drop_policy
        ``"drop_oldest"`` (default for live): when the queue is full, the oldest queued frame is discarded
        and counted in ``stats.frames_dropped``. ``"block"`` (default for files): decoding waits.
    reconnect
        Live only: reconnect after the stream ends or fails instead of ending the iteration.
    max_reconnect_s
        Live only: give up (log a warning, end the iteration) when no frame has arrived for this many seconds
        after the stream was found lost, whether reopening fails or the stream reopens without frames. Tries
        are spaced 0.5, 1, 2, 4, 8, 8, ... seconds apart.
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
        The file is missing, cannot be opened, has no video stream or is not a video (e.g. a text file); the
        stream cannot be reached.
    """
    if stride < 1 or start < 0 or queue_size < 1:
        raise ValueError("open_source needs stride >= 1, start >= 0 and queue_size >= 1")
    spec_text = str(spec)
    is_url = is_live_spec(spec)
    is_live = (is_url and not is_file_url(spec_text)) if live is None else live
    policy: DropPolicy = drop_policy or ("drop_oldest" if is_live else "block")
    if policy not in ("drop_oldest", "block"):
        raise ValueError(f"drop_policy must be 'drop_oldest' or 'block', not {policy!r}")
    options = dict(ffmpeg_options or {})
    if is_live:
        reader = LiveReader(spec_text, start, stop, stride, reconnect, max_reconnect_s, options)
    else:
        reader = FileReader(spec_text if is_url else Path(spec), start, stop, stride, options, is_url=is_url)
    source = Source(reader.info, queue_size=queue_size, drop_policy=policy, stop_event=stop_event)
    if is_live:
        source.started_at = reader.run_start
    source.start(reader.run)
    return source
