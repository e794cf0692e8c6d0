"""The annotated video: the input frames with tracked keypoints, skeleton and trails drawn on them (PyAV).

The file is a fragmented MP4 (``movflags=frag_keyframe+empty_moov+default_base_moof``, a fragment at least
every 0.5 s), so a run that is killed still leaves a playable file holding every frame up to the last
finished fragment (all but the last ~0.5 s plus the encoder's few frames of delay). See docs/outputs.md for
the drawing legend.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ppmtrack.tracker import SmoothingParams

logger = logging.getLogger("ppmtrack")

# Distinct colours (RGB), one per keypoint in name order; repeats after 20 keypoints.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 255, 255),
)
SKELETON_COLOUR = (200, 200, 200)
DIM = 0.6  # colour factor of a low-confidence or not-visible keypoint and of its edges
DEFAULT_MIN_CONFIDENCE = SmoothingParams().min_confidence  # the one default of the tracker and the video
LEGEND_BACKGROUND = (0, 0, 0)
LEGEND_OPACITY = 0.6
TEXT_COLOUR = (255, 255, 255)
# Fragmented MP4, a fragment at each keyframe and at least every 0.5 s, handed to the OS after each packet.
DEFAULT_VIDEO_FPS = 30.0  # for the annotated video of a stream that declares no rate (frame times are kept)
ANNOTATED_VIDEO_COMMENT = "ppmtrack annotated video"
"""The ``comment`` tag of every annotated video ppmtrack writes: how a folder of inputs recognises its outputs."""
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
        Keypoint names (K); keypoint k gets colour ``PALETTE[k % len(PALETTE)]`` unless ``colormap`` is set.
    skeleton : sequence of (str, str)
        Edges drawn as lines between the named keypoints.
    trail : int
        Number of past positions drawn as a fading trail behind each keypoint (0: no trail).
    min_confidence : float, optional
        Keypoints with lower confidence, or not visible, are drawn as dimmer hollow circles. Default: the
        tracker's ``SmoothingParams().min_confidence`` (0.2).
    dot_radius : int, optional
        Circle radius in pixels (DeepLabCut's ``dotsize``). Default: ``max(4, round(min(width, height) / 80))``.
    colormap : str, optional
        A colormap name (DeepLabCut's ``colormap``, e.g. "jet", "rainbow", "viridis"): keypoint k of K gets the
        colour at k / (K - 1). Matplotlib's colormaps when matplotlib is installed, else OpenCV's of that name;
        an unknown name falls back to the palette with a warning.
    legend : bool
        Draw the legend (keypoint name → colour, top left) and the frame index and time (bottom left).
    colours : array-like, optional
        (K, 3) RGB colour of each keypoint instead of the colormap (several animals: one colour per animal).
    legend_entries : list of (str, rgb), optional
        What the legend lists instead of each keypoint and its colour (several animals: each animal's name).
    """

    def __init__(self, path, width: int, height: int, fps, names, skeleton=(), trail: int = 8,
                 min_confidence: float | None = None, dot_radius: int | None = None, colormap: str | None = None,
                 legend: bool = True, colours=None, legend_entries=None):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.names = list(names)
        index = {n: k for k, n in enumerate(self.names)}
        unknown = [n for e in skeleton for n in e if n not in index]
        if unknown:
            raise ValueError(f"{self.path}: skeleton names unknown keypoint {unknown[0]!r}")
        self.edges = [(index[a], index[b]) for a, b in skeleton]
        self.min_confidence = DEFAULT_MIN_CONFIDENCE if min_confidence is None else float(min_confidence)
        self.colours = keypoint_colours(len(self.names), colormap) if colours is None else \
            np.asarray(colours, dtype=np.float64).reshape(len(self.names), 3)
        self.legend_entries = [(n, self.colours[k]) for k, n in enumerate(self.names)] if legend_entries is None \
            else [(str(n), np.asarray(c, dtype=np.float64)) for n, c in legend_entries]
        short_side = min(self.width, self.height)
        self.radius = max(2, int(dot_radius)) if dot_radius else max(4, round(short_side / 80))
        self.thickness = max(1, round(self.radius / 3))  # skeleton and trail lines
        self.font_scale = max(0.35, short_side / 900)
        self.font_thickness = max(1, round(self.font_scale * 1.5))
        self.legend = bool(legend)
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
        self.container.metadata["comment"] = ANNOTATED_VIDEO_COMMENT
        self.stream = self.container.add_stream(codec, rate=rate, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, pix_fmt
        self.stream.codec_context.time_base = self.time_base
        self.stream.codec_context.gop_size = max(1, math.ceil(rate))  # one fragment per second
        self.stream.codec_context.max_b_frames = 0  # frame times exactly as given, and less encoder delay
        self.count = 0
        self.last_pts = -1

    def write(self, image: np.ndarray, xy: np.ndarray, confidence: np.ndarray, visible: np.ndarray,
              time: float | None = None, index: int | None = None, source_time: float | None = None,
              labels=()) -> None:
        """Draw one frame's keypoints on a copy of ``image`` (RGB uint8, H×W×3) and encode it.

        ``labels``: (text, (x, y), rgb) tuples written on the frame, e.g. each animal's identity.

        ``xy`` is (K, 2) with NaN for a lost keypoint (not drawn); ``confidence`` and ``visible`` are (K,).
        ``time`` (seconds) sets the frame's presentation time so the output follows the input's timing;
        without it frame n is shown at n/fps. ``index`` and ``source_time`` (the frame's index and time in
        the input) are printed on the frame; by default the count of frames written and the output time.
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
            _put_text(canvas, str(text), (int(x), int(y)), self.font_scale, self.font_thickness, colour)

        pts = self.count * self.ticks_per_frame if time is None else round(time / self.time_base)
        pts = max(pts, self.last_pts + 1)
        if self.legend:
            self._draw_legend(canvas)
            seconds = float(source_time) if source_time is not None else float(pts * self.time_base)
            self._draw_label(canvas, f"frame {self.count if index is None else int(index)}   "
                                     f"{format_clock(seconds)}")
        frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        self.container.mux(self.stream.encode(frame))
        self.last_pts = pts
        self.count += 1

    def _draw_trails(self, canvas: np.ndarray) -> None:
        past = list(self.history)
        n = len(past) - 1
        thickness = self.thickness
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
                cv2.line(canvas, _pt(xy[i]), _pt(xy[j]), _rgb(colour), self.thickness, cv2.LINE_AA)

    def _draw_points(self, canvas: np.ndarray, xy: np.ndarray, strong: np.ndarray) -> None:
        for k in range(len(self.names)):
            if not np.isfinite(xy[k]).all():
                continue
            if strong[k]:
                cv2.circle(canvas, _pt(xy[k]), self.radius, (0, 0, 0), -1, cv2.LINE_AA)
                cv2.circle(canvas, _pt(xy[k]), self.radius - 1, _rgb(self.colours[k]), -1, cv2.LINE_AA)
            else:
                cv2.circle(canvas, _pt(xy[k]), self.radius, _rgb(self.colours[k] * DIM), self.thickness,
                           cv2.LINE_AA)

    def legend_layout(self) -> list[tuple[int, int, int]]:
        """Where the legend draws each entry's swatch: (k, x, y) of its centre, in order (entry k: keypoint k,
        or the k-th of ``legend_entries``).

        Rows of swatch + name from the top-left corner, in as many columns as the frame's height needs.
        """
        line = self._text_height() + max(4, self.radius)
        rows = max(1, (self.height - 3 * line) // line)
        column_width = 2 * self.radius + 12 + max(
            (cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, self.font_scale, self.font_thickness)[0][0]
             for n, _ in self.legend_entries), default=0)
        pad = max(4, self.radius)
        return [(k, pad + (k // rows) * (column_width + pad) + self.radius,
                 pad + (k % rows) * line + line // 2) for k in range(len(self.legend_entries))]

    def _text_height(self) -> int:
        (_, h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, self.font_scale, self.font_thickness)
        return max(h + baseline, 2 * self.radius)

    def _draw_legend(self, canvas: np.ndarray) -> None:
        layout = self.legend_layout()
        if not layout:
            return
        pad = max(4, self.radius)
        line = self._text_height() + max(4, self.radius)
        right = max(x + self.radius + 8 + cv2.getTextSize(self.legend_entries[k][0], cv2.FONT_HERSHEY_SIMPLEX,
                                                           self.font_scale, self.font_thickness)[0][0]
                    for k, x, _ in layout)
        bottom = max(y for _, _, y in layout) + line // 2
        _shade(canvas, 0, 0, min(self.width, right + pad), min(self.height, bottom + pad // 2))
        for k, x, y in layout:
            name, colour = self.legend_entries[k]
            cv2.circle(canvas, (x, y), self.radius, _rgb(colour), -1, cv2.LINE_AA)
            _put_text(canvas, name, (x + self.radius + 8, y), self.font_scale, self.font_thickness)

    def _draw_label(self, canvas: np.ndarray, text: str) -> None:
        (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, self.font_scale, self.font_thickness)
        pad = max(4, self.radius)
        top = self.height - h - baseline - 2 * pad
        _shade(canvas, 0, max(0, top), min(self.width, w + 2 * pad), self.height)
        _put_text(canvas, text, (pad, self.height - pad - baseline - h // 2), self.font_scale,
                  self.font_thickness)

    def close(self) -> None:
        """Flush the encoder and finish the file; the writer cannot be used afterwards."""
        if self.container is None:
            return
        container, self.container = self.container, None
        try:
            container.mux(self.stream.encode(None))
        finally:
            container.close()  # also when flushing fails (disk full): never leak the file

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def keypoint_colours(n: int, colormap: str | None = None) -> np.ndarray:
    """(n, 3) RGB colours, one per keypoint: the fixed palette, or ``colormap`` sampled at k / (n - 1).

    Matplotlib's colormaps are used when matplotlib is installed, else OpenCV's of the same name
    (``cv2.COLORMAP_JET`` for "jet"); an unknown name gives the palette and a warning.
    """
    palette = np.array([PALETTE[k % len(PALETTE)] for k in range(n)], dtype=np.float64).reshape(n, 3)
    if not colormap or n == 0:
        return palette
    where = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    try:
        import matplotlib

        cmap = matplotlib.colormaps.get(str(colormap))
        if cmap is not None:
            return np.asarray(cmap(where))[:, :3] * 255.0
    except ImportError:
        pass
    code = getattr(cv2, f"COLORMAP_{str(colormap).upper()}", None)
    if code is None:
        logger.warning("unknown colormap %r for the annotated video; using ppmtrack's palette", colormap)
        return palette
    bgr = cv2.applyColorMap(np.round(where * 255).astype(np.uint8).reshape(1, n), code)[0]
    return bgr[:, ::-1].astype(np.float64)


def format_clock(seconds: float) -> str:
    """``M:SS.mmm`` (``H:MM:SS.mmm`` from an hour on) for the frame label."""
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    clock = f"{minutes:02d}:{rest / 1000:06.3f}" if hours else f"{minutes}:{rest / 1000:06.3f}"
    return f"{hours}:{clock}" if hours else clock


def _shade(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Darken a rectangle so text on it stays readable over any video."""
    roi = canvas[y0:y1, x0:x1]
    roi[:] = (roi * (1 - LEGEND_OPACITY) + np.array(LEGEND_BACKGROUND) * LEGEND_OPACITY).astype(np.uint8)


def _put_text(canvas: np.ndarray, text: str, left_middle: tuple[int, int], scale: float, thickness: int,
              colour=None) -> None:
    """Write ``text`` with its left middle at ``left_middle``; a coloured text gets a dark outline."""
    (_, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = left_middle
    if colour is not None:
        cv2.putText(canvas, text, (x, y + h // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2,
                    cv2.LINE_AA)
    cv2.putText(canvas, text, (x, y + h // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                TEXT_COLOUR if colour is None else _rgb(colour), thickness, cv2.LINE_AA)


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
