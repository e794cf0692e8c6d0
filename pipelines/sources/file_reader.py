"""Frame-exact reading of a video file (or a seekable file served over HTTP) on a source's decoding thread."""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ppmtrack.pipelines.sources.locations import describe_error, redact
from ppmtrack.pipelines.sources.numbering import FrameNumbering, number_frames
from ppmtrack.pipelines.sources.source import Feed, SourceError, VideoFrame, VideoInfo

logger = logging.getLogger("ppmtrack")

MAX_FAILED_READS = 50
"""Consecutive unreadable packets after which a damaged file is given up."""
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
"""FFmpeg 'video' decoders that render text files; such inputs are refused as not a video."""


def open_video_container(location: str, options: dict[str, str] | None = None, *, is_url: bool = False):
    """Open ``location`` with FFmpeg and check it holds a real video stream; raise SourceError if not."""
    shown = redact(location)
    if not is_url:
        path = Path(location)
        if not path.exists():
            raise SourceError(f"{shown}: no such file; check the path")
        if path.is_dir():
            raise SourceError(f"{shown}: is a folder, not a video file")
    try:
        container = av.open(location, options=options or {})
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise SourceError(f"{shown}: cannot be opened as a video ({describe_error(exc)})"
                          f"{'' if is_url else _open_failure_hint(Path(location), exc)}") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{shown}: has no video stream")
    codec = container.streams.video[0].codec_context.name
    if codec in TEXT_CODECS or container.format.name == "tty":
        container.close()
        raise SourceError(f"{shown}: cannot be opened as a video (FFmpeg reads it as a text file, "
                          f"codec {codec!r})")
    return container


def _open_failure_hint(path: Path, exc: BaseException) -> str:
    """What the start of a file that FFmpeg cannot open says about it: empty, text, or an MP4 cut short."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return ""
    if not head:
        return "; the file is empty (0 bytes): the recording holds no data"
    if b"\0" not in head:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
            return "; the file holds text, not video"
        except UnicodeDecodeError:
            pass
    if isinstance(exc, av.error.InvalidDataError) and head[4:8] == b"ftyp":  # an MP4/MOV without its index
        return ("; if the recording was cut short, its index (moov) was never written: record to .mkv, "
                "which stays readable, or rebuild the index with a tool such as untrunc")
    return ""


def display_rotation(location: str, options: dict[str, str] | None = None) -> int:
    """The display rotation of the file's first frame in degrees counter-clockwise (0, 90, 180 or 270)."""
    try:
        with av.open(location, options=options or {}) as container:
            for frame in container.decode(video=0):
                return int(round((frame.rotation or 0) / 90.0)) % 4 * 90
    except (av.error.FFmpegError, UnicodeDecodeError):
        pass
    return 0


def rotate_image(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored frame into its displayed orientation (``rotation`` degrees counter-clockwise)."""
    if not rotation:
        return image
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90))


def video_info(location: str, stream, is_live: bool, rotation: int = 0) -> VideoInfo:
    """The :class:`VideoInfo` of an open video stream (``location`` is recorded redacted)."""
    rate = stream.average_rate or stream.guessed_rate
    n_frames = None
    if not is_live:
        n_frames = stream.frames or None
        if n_frames is None and rate and stream.container.duration:
            n_frames = round(stream.container.duration / av.time_base * rate)
    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        location=redact(location),
        width=width,
        height=height,
        fps=float(rate) if rate else None,
        fps_fraction=Fraction(rate) if rate else None,
        n_frames=n_frames,
        codec=stream.codec_context.name,
        is_live=is_live,
        rotation=rotation,
    )


class FileReader:
    """Decodes a file, numbering frames by their rank in presentation order (see :mod:`.numbering`).

    ``run(feed)`` puts the selected frames, rotated to their display orientation, and counts what it could
    not deliver in ``feed.stats`` (``decode_errors``, ``frames_damaged``, ``frames_missing``, ``truncated``).
    """

    def __init__(self, location: str | Path, start: int, stop: int | None, stride: int,
                 options: dict[str, str], *, is_url: bool = False):
        self.location = str(location)
        self.shown = redact(self.location)
        self.options = options
        self.start, self.stop, self.stride = start, stop, stride
        self.container = open_video_container(self.location, options, is_url=is_url)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.rotation = display_rotation(self.location, options)
        self.info = video_info(self.location, self.stream, is_live=False, rotation=self.rotation)

    def _selected(self, index: int) -> bool:
        return index >= self.start and (index - self.start) % self.stride == 0

    def _decoded_frames(self, stats, key_pts: set[int] | None) -> Iterator[av.VideoFrame]:
        """Yield the frames that decode cleanly, counting packets the decoder rejects and frames it damaged.

        After a rejected packet the decoder is flushed and frames are discarded until the next key frame
        (one whose pts is a key packet's, when ``key_pts`` is known): frames predicted from a lost one show
        the wrong picture, and some decoders mislabel the pts of the frames that follow an error. A frame the
        decoder flags as corrupt counts as a decode error and starts such a resync too.
        """
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
                        logger.debug("%s: decode error at pts %s: %s", self.shown, packet.pts, describe_error(exc))
                        continue
                    for frame in frames:
                        if resync and frame.key_frame and (key_pts is None or frame.pts in key_pts):
                            resync = False
                        if frame.is_corrupt and not resync:
                            stats.decode_errors += 1
                            resync = True
                        if resync:
                            stats.frames_damaged += 1
                        else:
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
                    logger.debug("%s: damaged data, decoding stops here (%s)", self.shown, describe_error(exc))

    def run(self, feed: Feed) -> None:
        """Decode and put the selected frames until the end of the file, ``stop``, or the feed stops."""
        stats = feed.stats
        time_base = self.stream.time_base
        fps = self.info.fps or 1.0
        delivered = 0
        try:
            numbering = number_frames(self.location, self.options)
            stats.truncated = numbering is not None and not numbering.complete and numbering.declared_frames \
                is not None and numbering.declared_frames > numbering.n_packets
            last_index = -1
            for frame in self._decoded_frames(stats, numbering.key_pts if numbering else None):
                if feed.stopping():
                    return
                stats.frames_read += 1
                if numbering is not None:
                    index = numbering.index_of(frame.pts)
                elif stats.decode_errors == 0:
                    index = last_index + 1
                else:
                    index = None  # counting is off by the frames lost so far
                if index is None or index <= last_index:
                    stats.frames_damaged += 1
                    continue
                last_index = index
                if self.stop is not None and index >= self.stop:
                    return
                if self._selected(index):
                    seconds = float(frame.pts * time_base) if frame.pts is not None else index / fps
                    image = rotate_image(frame.to_ndarray(format="rgb24"), self.rotation)
                    if not feed.put(VideoFrame(index=index, time=seconds, image=image)):
                        return
                    delivered += 1
                if self.stop is not None and index >= self.stop - 1:
                    return
            self._account_missing(stats, numbering, delivered)
        finally:
            self.container.close()

    def _account_missing(self, stats, numbering: FrameNumbering | None, delivered: int) -> None:
        """At the end of the file: count the selected frames that never came, and warn once if any is lost."""
        n_frames = numbering.n_frames if numbering is not None else self.info.n_frames
        if n_frames is not None:
            end = n_frames if self.stop is None else min(self.stop, n_frames)
            stats.frames_missing = max(0, len(range(self.start, end, self.stride)) - delivered)
        if not (stats.decode_errors or stats.frames_missing or stats.truncated):
            return
        what = [f"{stats.decode_errors} decode errors"] if stats.decode_errors else []
        if stats.frames_damaged:
            what.append(f"{stats.frames_damaged} damaged frames skipped (until the next key frame)")
        if stats.truncated:
            what.append(f"truncated: the data ends after {numbering.n_packets} of the "
                        f"{numbering.declared_frames} frames its header declares")
        elif not what:
            what.append(f"only {delivered} of the {n_frames} frames it declares could be read")
        logger.warning("%s: damaged file: %s; %d selected frames are missing from the results", self.shown,
                       "; ".join(what), stats.frames_missing)
