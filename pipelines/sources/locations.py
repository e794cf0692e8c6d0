"""Where a source is: file path or stream URL, and how it may be shown (credentials never are)."""

from __future__ import annotations

import re
from pathlib import Path

import av

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "srt://")
_URL_START = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://")
_URL_END = re.compile(r"[\s'\"<>]")
HIDDEN = "***"


def is_live_spec(spec: str | Path) -> bool:
    """True if ``spec`` is a network URL (rtsp, rtsps, http(s), udp, tcp, srt) rather than a file path."""
    return isinstance(spec, str) and spec.lower().startswith(LIVE_SCHEMES)


def redact_url(spec: str | Path) -> str:
    """The source as it may be written into files and messages: the URL's credentials replaced by ``***``.

    The URL is parsed, not pattern-matched: its authority runs from ``://`` to the first ``/``, ``?`` or ``#``,
    and everything before the authority's *last* ``@`` is the user name and password, as FFmpeg and
    ``urllib.parse`` read it. So ``http://admin:p@ssW0rd@host/cam`` → ``http://***@host/cam``. A password
    holding an unescaped ``/``, ``?`` or ``#`` ends the authority early (the host part then has a port that
    is not a number); such a URL is hidden up to its last ``@`` (or its whole authority), so no part of the
    password is shown.
    A file path (no ``scheme://``) is returned unchanged.
    """
    text = str(spec)
    match = _URL_START.match(text)
    if match is None:
        return text
    scheme, rest = text[: match.end()], text[match.end():]
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    authority = rest[:end]
    if "@" in authority:
        return scheme + HIDDEN + rest[authority.rindex("@"):]
    if _bad_port(authority):  # "user:pass" cut short by a "/" in the password (or a port that is no number)
        return scheme + HIDDEN + (rest[rest.rindex("@"):] if "@" in rest else rest[end:])
    return text


def _bad_port(authority: str) -> bool:
    """True if ``host:port`` has a port that is not a number (a sign of a password cut short by ``/``)."""
    host_port = authority.rsplit("]", 1)[-1] if authority.startswith("[") else authority
    if ":" not in host_port:
        return False
    port = host_port.rsplit(":", 1)[1]
    return not port.isdigit()


def redact(text: object) -> str:
    """``text`` with the user name and password of every URL in it replaced by ``***`` (see :func:`redact_url`).

    Each ``scheme://`` starts a URL that runs to the next blank, quote or angle bracket. Used for everything
    that leaves the program: file contents, log lines, warnings and error messages.
    """
    text = str(text)
    out, pos = [], 0
    for match in _URL_START.finditer(text):
        if match.start() < pos:
            continue  # inside a URL already handled
        stop = _URL_END.search(text, match.end())
        stop = stop.start() if stop else len(text)
        out.append(text[pos:match.start()])
        out.append(redact_url(text[match.start():stop]))
        pos = stop
    out.append(text[pos:])
    return "".join(out)


def describe_error(exc: BaseException) -> str:
    """A short, redacted description of an FFmpeg (or other) error."""
    if isinstance(exc, av.error.FFmpegError):
        return redact(exc.strerror or str(exc))
    return redact(str(exc) or type(exc).__name__)
