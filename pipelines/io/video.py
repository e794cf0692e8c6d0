"""The annotated video: the input frames with tracked keypoints, skeleton and trails drawn on them (PyAV).

The file is a fragmented MP4 (``movflags=frag_keyframe+empty_moov+default_base_moof``, a fragment at least
every 0.5 s), so a run that is killed still leaves a playable file holding every frame up to the last
finished fragment (all but the last ~0.5 s plus the encoder's few frames of delay). See docs/outputs.md for
the drawing legend.
"""

from __future__ import annotations

import math
from collections import deque
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# Distinct colours (RGB), one per keypoint in name order; repeats after 20 keypoints.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 255, 255),
)
SKELETON_COLOUR = (200, 200, 200)
DIM = 0.6  # colour factor of a low-confidence or not-visible keypoint and of its edges
# Fragmented MP4, a fragment at each keyframe and at least every 0.5 s, handed to the OS after each packet.
MUXER_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": "500000",
    "flush_packets": "1",
}


def _pick_codec(width: int, height: int) -> tuple[str, str, dict[str, str], int]:
    """Choose encoder, pixel format, encoder options and the largest clock rate (ticks per second) for the
    timestamps: H.264 if the bundled FFmpeg has libx264, else MPEG-4 (whose clock is limited to 65535 Hz).

    4:2:0 chroma needs even sizes; for an odd width or height H.264 is written as yuv444p (exact size, but
    some players, e.g. QuickTime, do not play 4:4:4) and MPEG-4 is not used (it cannot encode odd sizes).
    """
    odd = width % 2 or height % 2
    if "libx264" in av.codecs_available:
        return "libx264", ("yuv444p" if odd else "yuv420p"), {"crf": "23", "preset": "veryfast"}, 90000
    if odd:
        raise ValueError(
            f"cannot write a {width}x{height} video: this FFmpeg has no libx264 and MPEG-4 needs even sizes; "
            "install PyAV wheels that bundle libx264 or crop the input to even dimensions"
        )
    return "mpeg4", "yuv420p", {"flags": "+qscale", "global_quality": str(4 * 118)}, 65535  # -q:v 4


class AnnotatedVideoWriter:
    """Write frames with their keypoints drawn on them to an MP4 file of the input's size and frame rate.

    Parameters
    ----------
    path : str or Path
        Output file (.mp4); overwritten.
    width, height : int
        Size of the input frames; the output has exactly this size (odd sizes included).
    fps : float or Fraction
        Frame rate; frames without an explicit time are spaced 1/fps apart.
    names : list of str
        Keypoint names (K); keypoint k gets colour ``PALETTE[k % len(PALETTE)]``.
    skeleton : sequence of (str, str)
        Edges drawn as lines between the named keypoints.
    trail : int
        Number of past positions drawn as a fading trail behind each keypoint (0: no trail).
    min_confidence : float
        Keypoints with lower confidence, or not visible, are drawn as dimmer hollow circles.
    colours : array-like, optional
        (K, 3) RGB colour of each keypoint instead of the palette (several animals: one colour per animal).
    """

    def __init__(self, path, width: int, height: int, fps, names, skeleton=(), trail: int = 8,
                 min_confidence: float = 0.5, colours=None):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.names = list(names)
        index = {n: k for k, n in enumerate(self.names)}
        unknown = [n for e in skeleton for n in e if n not in index]
        if unknown:
            raise ValueError(f"{self.path}: skeleton names unknown keypoint {unknown[0]!r}")
        self.edges = [(index[a], index[b]) for a, b in skeleton]
        self.min_confidence = float(min_confidence)
        self.colours = np.array([PALETTE[k % len(PALETTE)] for k in range(len(self.names))] if colours is None
                                else colours, dtype=np.float64).reshape(len(self.names), 3)
        self.radius = max(4, round(min(self.width, self.height) / 150))
        self.history: deque[np.ndarray] = deque(maxlen=max(int(trail), 0) + 1)

        rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
        if rate <= 0:
            raise ValueError(f"{self.path}: frame rate must be positive, got {fps}")
        codec, pix_fmt, options, max_clock = _pick_codec(self.width, self.height)
        # The finest clock that divides the frame period exactly, so constant-rate timestamps are exact.
        ticks = max(1, max_clock // rate.numerator)
        self.time_base = Fraction(1, rate.numerator * ticks)
        self.ticks_per_frame = rate.denominator * ticks
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w", format="mp4", container_options=MUXER_OPTIONS)
        self.stream = self.container.add_stream(codec, rate=rate, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, pix_fmt
        self.stream.codec_context.time_base = self.time_base
        self.stream.codec_context.gop_size = max(1, math.ceil(rate))  # one fragment per second
        self.stream.codec_context.max_b_frames = 0  # frame times exactly as given, and less encoder delay
        self.count = 0
        self.last_pts = -1

    def write(self, image: np.ndarray, xy: np.ndarray, confidence: np.ndarray, visible: np.ndarray,
              time: float | None = None, labels=()) -> None:
        """Draw one frame's keypoints on a copy of ``image`` (RGB uint8, H×W×3) and encode it.

        ``labels``: (text, (x, y), rgb) tuples written on the frame, e.g. each animal's identity.

        ``xy`` is (K, 2) with NaN for a lost keypoint (not drawn); ``confidence`` and ``visible`` are (K,).
        ``time`` (seconds) sets the frame's presentation time so the output follows the input's timing;
        without it frame n is shown at n/fps.
        """
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frame must be {self.height}x{self.width}x3 uint8 RGB, "
                f"got {image.shape} {image.dtype}"
            )
        xy = np.asarray(xy, dtype=np.float64).reshape(len(self.names), 2)
        confidence = np.nan_to_num(np.asarray(confidence, dtype=np.float64).reshape(-1))
        strong = np.asarray(visible, dtype=bool).reshape(-1) & (confidence >= self.min_confidence)
        self.history.append(xy)
        canvas = np.ascontiguousarray(image).copy()
        self._draw_trails(canvas)
        self._draw_skeleton(canvas, xy, strong)
        self._draw_points(canvas, xy, strong)
        for text, (x, y), colour in labels:
            cv2.putText(canvas, str(text), (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(canvas, str(text), (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _rgb(colour), 1,
                        cv2.LINE_AA)

        pts = self.count * self.ticks_per_frame if time is None else round(time / self.time_base)
        pts = max(pts, self.last_pts + 1)
        frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        self.container.mux(self.stream.encode(frame))
        self.last_pts = pts
        self.count += 1

    def _draw_trails(self, canvas: np.ndarray) -> None:
        past = list(self.history)
        n = len(past) - 1
        thickness = max(1, self.radius // 2)
        for age in range(n, 0, -1):  # oldest first, so newer segments lie on top
            alpha = 0.8 * (1 - (age - 1) / n)
            a, b = past[-age - 1], past[-age]
            for k in range(len(self.names)):
                if np.isfinite(a[k]).all() and np.isfinite(b[k]).all():
                    _blend_line(canvas, a[k], b[k], self.colours[k], thickness, alpha)

    def _draw_skeleton(self, canvas: np.ndarray, xy: np.ndarray, strong: np.ndarray) -> None:
        for i, j in self.edges:
            if np.isfinite(xy[i]).all() and np.isfinite(xy[j]).all():
                colour = np.array(SKELETON_COLOUR) * (1.0 if strong[i] and strong[j] else DIM)
                cv2.line(canvas, _pt(xy[i]), _pt(xy[j]), _rgb(colour), max(1, self.radius // 2), cv2.LINE_AA)

    def _draw_points(self, canvas: np.ndarray, xy: np.ndarray, strong: np.ndarray) -> None:
        for k in range(len(self.names)):
            if not np.isfinite(xy[k]).all():
                continue
            if strong[k]:
                cv2.circle(canvas, _pt(xy[k]), self.radius, (0, 0, 0), -1, cv2.LINE_AA)
                cv2.circle(canvas, _pt(xy[k]), self.radius - 1, _rgb(self.colours[k]), -1, cv2.LINE_AA)
            else:
                cv2.circle(canvas, _pt(xy[k]), self.radius, _rgb(self.colours[k] * DIM), 1, cv2.LINE_AA)

    def close(self) -> None:
        """Flush the encoder and finish the file; the writer cannot be used afterwards."""
        if self.container is None:
            return
        self.container.mux(self.stream.encode(None))
        self.container.close()
        self.container = None

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(round(c)) for c in colour)


def _blend_line(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, colour: np.ndarray, thickness: int,
                alpha: float) -> None:
    """Draw a line with opacity ``alpha``, blending only the small region around it."""
    h, w = canvas.shape[:2]
    pad = thickness + 2
    x0, x1 = max(0, int(min(a[0], b[0])) - pad), min(w, int(max(a[0], b[0])) + pad + 1)
    y0, y1 = max(0, int(min(a[1], b[1])) - pad), min(h, int(max(a[1], b[1])) + pad + 1)
    if x0 >= x1 or y0 >= y1:
        return
    roi = canvas[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], dtype=np.uint8)
    offset = np.array([x0, y0])
    cv2.line(mask, _pt(a - offset), _pt(b - offset), 255, thickness, cv2.LINE_AA)
    weight = (mask.astype(np.float32) * (alpha / 255.0))[..., None]
    roi[:] = (roi * (1 - weight) + colour.astype(np.float32) * weight).round().astype(np.uint8)
