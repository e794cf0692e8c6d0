"""Frame numbering of files: a frame's index is the rank of its pts among all the file's packet pts.

One quick pass over the packets (no decoding) numbers every frame before decoding starts, so a frame that
fails to decode keeps its place and the frames after it keep their true indices. Both the tracking reader and
:func:`read_frames_at` use it, so a support frame and a tracked frame with the same index are the same picture.
"""

from __future__ import annotations

from fractions import Fraction

import av


class FrameNumbering:
    """Frame index of each pts: its rank among all the file's packet pts.

    If the packets may not all have been read (damaged or truncated file), the last ones read may sort after
    packets that were never read, so ranks are trusted only below the smallest pts of the last few packets
    (twice the file's observed reordering depth, plus one); beyond that a constant-rate file (one pts step
    between all the sure frames) is numbered by ``(pts - first pts) / step`` and other frames get no index.

    ``complete`` says whether the packets reached the end the header declares (False: the file is truncated
    or its tail is unreadable); ``n_packets`` is how many frames the readable packets hold; ``declared_frames``
    the number of frames the header's duration implies (None if it declares none).
    """

    def __init__(self, pts: list[int], key_pts: set[int], complete: bool, declared_frames: int | None = None):
        ordered = sorted(pts)
        self.key_pts = key_pts
        self.complete = complete
        self.n_packets = len(pts)
        self.declared_frames = declared_frames
        self.ranks = {p: rank for rank, p in enumerate(ordered)}
        self.trusted_below = None
        if not complete:
            reorder_depth = max(abs(position - self.ranks[p]) for position, p in enumerate(pts))
            self.trusted_below = min(pts[-(2 * reorder_depth + 1) :])
        # the frame step, from the packets whose ranks are sure: the tail of a cut file misses some packets
        sure = ordered if self.trusted_below is None else [p for p in ordered if p < self.trusted_below]
        steps = {b - a for a, b in zip(sure, sure[1:], strict=False)}
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

    @property
    def n_frames(self) -> int:
        """Frames the file should hold: the packets read, or more if the header declares more (truncated)."""
        return max(self.n_packets, self.declared_frames or 0) if not self.complete else self.n_packets


def number_frames(location: str, options: dict[str, str] | None = None) -> FrameNumbering | None:
    """Read the packets of ``location``'s first video stream (no decoding) and number their pts.

    None if pts are missing or repeated (then frames are counted as they decode).
    """
    pts: list[int] = []
    key_pts: set[int] = set()
    end = 0
    declared_end = declared_frames = None
    try:
        with av.open(location, options=options or {}) as container:
            stream = container.streams.video[0]
            declared_end = _declared_end(container, stream)
            declared_frames = _declared_frames(container, stream)
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
    return FrameNumbering(pts, key_pts, complete, declared_frames)


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


def _declared_frames(container, stream) -> int | None:
    """Frames the header declares (a frame count, or duration × rate), or None."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if rate and container.duration:
        return round(container.duration / av.time_base * rate)
    return None
