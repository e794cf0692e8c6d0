"""Random access to the frames of a video file (browser pages, plots): seek to a key frame, decode forward."""

from __future__ import annotations

import bisect
import collections
import threading
from pathlib import Path

import av
import cv2
import numpy as np

from ppmtrack.pipelines.sources import SourceError

SHORT_STEP = 12
"""Decode forward instead of seeking when the wanted frame is at most this many frames ahead (or when no key
frame lies between the last decoded frame and the wanted one)."""
CACHE_FRAMES = 64
JPEG_QUALITY = 90


class VideoFrames:
    """Frame N of a video file (N-th in presentation order from 0, as in the tracks CSV), as RGB or JPEG.

    The packets are read once (no decoding) to number frames by their pts. A request seeks to the last key
    frame at or before the wanted one and decodes forward, or keeps decoding when the frame is a little
    ahead of the last one decoded, so scrubbing forward and playing are cheap. Safe to call from several
    threads (requests are served one at a time). Files without usable pts are decoded from the start.

    Parameters
    ----------
    path : str or Path
        The video file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file; check the path")
        try:
            self.container = av.open(str(self.path))
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.path}: cannot be opened as a video ({exc})") from exc
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{self.path}: has no video stream")
        self.stream = self.container.streams.video[0]
        self.width, self.height = self.stream.width, self.stream.height
        self.fps = float(self.stream.average_rate) if self.stream.average_rate else None
        pts, key_pts = [], []
        for packet in self.container.demux(self.stream):
            if packet.size == 0:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
        seekable = bool(pts) and None not in pts and len(set(pts)) == len(pts)
        self.pts = sorted(pts) if seekable else None
        self.key_pts = sorted(key_pts) if seekable else None
        self.n_frames = len(pts)
        self._lock = threading.Lock()
        self._decoder = None
        self._position = -1  # index of the last frame the decoder gave
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def info(self) -> dict:
        """Name, size, frame rate and frame count, for the page."""
        return {"name": self.path.name, "width": self.width, "height": self.height, "fps": self.fps,
                "n_frames": self.n_frames}

    def rgb(self, index: int) -> np.ndarray:
        """Frame ``index`` as an (H, W, 3) RGB uint8 array; IndexError if the video has no such frame."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"{self.path.name} has frames 0 to {self.n_frames - 1}, not {index}")
        with self._lock:
            return self._decode(index)

    def jpeg(self, index: int) -> bytes:
        """Frame ``index`` encoded as JPEG (the last ``CACHE_FRAMES`` requests are cached)."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        image = self.rgb(index)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError(f"{self.path.name}: frame {index} could not be encoded as JPEG")
        with self._lock:
            self._cache[index] = data.tobytes()
            while len(self._cache) > CACHE_FRAMES:
                self._cache.popitem(last=False)
        return data.tobytes()

    def _decode(self, index: int) -> np.ndarray:
        ahead = self._decoder is not None and self._position < index and (
            self.pts is None or index - self._position <= SHORT_STEP
            or self._key_before(index) <= self.pts[self._position])
        if not ahead:
            self._restart(index)
        for frame in self._decoder:
            if self.pts is None:
                self._position += 1
            else:
                rank = bisect.bisect_left(self.pts, frame.pts) if frame.pts is not None else -1
                if rank < 0 or rank >= len(self.pts) or self.pts[rank] != frame.pts:
                    continue
                self._position = rank
            if self._position >= index:
                return frame.to_ndarray(format="rgb24")
        self._decoder = None
        raise IndexError(f"{self.path.name}: frame {index} could not be decoded")

    def _key_before(self, index: int) -> int:
        """The pts of the last key frame at or before frame ``index`` (the first frame's if none is marked)."""
        if not self.key_pts:
            return self.pts[0]
        return self.key_pts[max(0, bisect.bisect_right(self.key_pts, self.pts[index]) - 1)]

    def _restart(self, index: int) -> None:
        if self.pts is None:
            self.container.seek(0)
        else:
            self.container.seek(self._key_before(index), stream=self.stream, backward=True)
        self._position = -1
        self._decoder = self.container.decode(self.stream)

    def close(self) -> None:
        """Close the video file."""
        self.container.close()
