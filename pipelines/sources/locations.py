"""Where a source is: file path or stream URL, and how it may be shown (credentials never are)."""

from __future__ import annotations

import re
from pathlib import Path

import av

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "srt://")
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")


def is_live_spec(spec: str | Path) -> bool:
    """True if ``spec`` is a network URL (rtsp, rtsps, http(s), udp, tcp, srt) rather than a file path."""
    return isinstance(spec, str) and spec.lower().startswith(LIVE_SCHEMES)


def redact(text: object) -> str:
    """``text`` with the user name and password of every URL in it replaced by ``***``.

    ``rtsp://user:secret@10.0.0.5/cam`` → ``rtsp://***@10.0.0.5/cam``. Used for everything that leaves the
    program: file contents, log lines, warnings and error messages.
    """
    return _CREDENTIALS.sub(r"\1***@", str(text))


def redact_url(spec: str | Path) -> str:
    """The source as it may be written into files and messages: credentials replaced by ``***``."""
    return redact(spec)


def describe_error(exc: BaseException) -> str:
    """A short, redacted description of an FFmpeg (or other) error."""
    if isinstance(exc, av.error.FFmpegError):
        return redact(exc.strerror or str(exc))
    return redact(str(exc) or type(exc).__name__)
