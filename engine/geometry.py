"""Frame geometry: frames → the engine's square input (letterbox or crop), and coordinates back and forth.

One implementation for everything that places a frame in the engine's input or maps a point between them:
adaptation (support frames), inference, the ONNX runtime, and the tracking pipelines (crops around an animal).

Coordinates everywhere are pixel coordinates with pixel *centres* at integers: the top-left pixel of a frame
covers [-0.5, 0.5) × [-0.5, 0.5). Resizing is antialiased bilinear (``align_corners=False``), whose sampling
follows that convention, so a point at frame pixel ``x`` lands at input pixel ``(x + 0.5) * s - 0.5`` (plus the
placement offset) for a resize by ``s``. The engine's maps are a coarser grid over the input (`grid_to_input`).
Padding is mid-grey: 0.0 in the engine's [-1, 1] range (127.5 of 255).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 127.5  # mid-grey, on the 0–255 scale: exactly 0.0 in the engine's [-1, 1] input


@dataclass(frozen=True)
class InputMapping:
    """Where a frame sits in the engine input: ``x_in = x * scale_x + offset_x``, ``y_in = y * scale_y + offset_y``.

    ``scale`` and ``offset`` are ``(2,)`` arrays (x, y) shared by a batch, or ``(B, 2)`` with one row per batch
    item (crops of different boxes). Points passed to `to_input`/`to_frame` are ``(..., 2)``; with per-item
    rows their first axis is the batch axis.
    """

    scale: np.ndarray
    offset: np.ndarray

    @property
    def scale_x(self):
        return self.scale[..., 0]

    @property
    def scale_y(self):
        return self.scale[..., 1]

    def _rows(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.scale.ndim == 1:
            return self.scale, self.offset
        extra = (1,) * (np.ndim(xy) - 2)  # (B, 2) → (B, 1, ..., 2) against points (B, ..., 2)
        b = self.scale.shape[0]
        return self.scale.reshape(b, *extra, 2), self.offset.reshape(b, *extra, 2)

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """Frame pixels → engine-input pixels."""
        scale, offset = self._rows(xy)
        return np.asarray(xy, dtype=np.float64) * scale + offset

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Engine-input pixels → frame pixels (the inverse of `to_input`)."""
        scale, offset = self._rows(xy)
        return (np.asarray(xy, dtype=np.float64) - offset) / scale


def placement(width: float, height: float, new_width: int, new_height: int, left: float, top: float,
              x0: float = 0.0, y0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset of a ``width``×``height`` region whose top-left pixel edge is at frame ``(x0, y0)``,
    resized to ``new_width``×``new_height`` and placed with its top-left edge at input ``(left, top)``."""
    scale = np.array([new_width / width, new_height / height], dtype=np.float64)
    offset = (0.5 - np.array([x0, y0], dtype=np.float64)) * scale - 0.5 + np.array([left, top], dtype=np.float64)
    return scale, offset


def letterbox_layout(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(new_width, new_height, left, top)``: the longer side scaled to ``size``, the shorter centred."""
    s = size / max(width, height)
    nw, nh = max(1, round(width * s)), max(1, round(height * s))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def letterbox_mapping(width: int, height: int, size: int) -> InputMapping:
    """The mapping of `letterbox` for a ``width``×``height`` frame, without touching pixels."""
    nw, nh, left, top = letterbox_layout(width, height, size)
    return InputMapping(*placement(width, height, nw, nh, left, top))


def crop_mapping(boxes, size: int) -> InputMapping:
    """The mapping of `crop` for ``boxes`` (see `crop`), without touching pixels."""
    b = whole_pixel_boxes(boxes)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    scale = np.stack([size / w, size / h], axis=1)
    offset = (0.5 - b[:, :2]) * scale - 0.5
    return InputMapping(scale, offset)


def whole_pixel_boxes(boxes) -> np.ndarray:
    """``(B, 4)`` boxes ``(x0, y0, x1, y1)`` (pixel edges) rounded to whole pixels, at least one pixel wide."""
    b = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    b[:, 2] = np.maximum(b[:, 2], b[:, 0] + 1)
    b[:, 3] = np.maximum(b[:, 3], b[:, 1] + 1)
    return b


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if (height, width) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def letterbox(frames: torch.Tensor, size: int) -> tuple[torch.Tensor, InputMapping]:
    """``(B, H, W, 3)`` uint8 frames of one size → ``(B, 3, size, size)`` float in [-1, 1] and its mapping.

    The longer side is scaled to ``size`` and the shorter centred between mid-grey bars. Runs on the frames'
    device, so GPU inference does its preprocessing on the GPU.
    """
    _, h, w, _ = frames.shape
    nw, nh, left, top = letterbox_layout(w, h, size)
    x = _resize(frames.permute(0, 3, 1, 2).float(), nh, nw) / 127.5 - 1.0
    x = F.pad(x, (left, size - nw - left, top, size - nh - top), value=0.0)
    return x, InputMapping(*placement(w, h, nw, nh, left, top))


def crop(frames: torch.Tensor, boxes, size: int) -> tuple[torch.Tensor, InputMapping]:
    """Cut one box out of each frame and resize it to the ``size``×``size`` engine input.

    Parameters
    ----------
    frames : torch.Tensor
        ``(B, H, W, 3)`` uint8 frames.
    boxes : array-like
        ``(B, 4)`` (or one ``(4,)`` box for every frame) ``(x0, y0, x1, y1)`` in frame pixel *edges*
        (the whole frame is ``(0, 0, W, H)``), rounded to whole pixels. Parts outside the frame are mid-grey.
        The box fills the square: x and y are scaled separately, so pass a square box for an undistorted crop.

    Returns
    -------
    torch.Tensor
        ``(B, 3, size, size)`` float in [-1, 1].
    InputMapping
        One row per frame.
    """
    b, h, w, _ = frames.shape
    px = whole_pixel_boxes(boxes)
    if len(px) == 1 and b > 1:
        px = np.repeat(px, b, axis=0)
    if len(px) != b:
        raise ValueError(f"{len(px)} crop boxes for {b} frames")
    x = frames.permute(0, 3, 1, 2).float()
    out = []
    for i, (x0, y0, x1, y1) in enumerate(px.astype(int)):
        # the box's part inside the frame, padded with grey where the box leaves it
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if cx0 >= cx1 or cy0 >= cy1:
            region = torch.full((1, 3, y1 - y0, x1 - x0), PAD_VALUE, device=x.device)
        else:
            region = F.pad(x[i:i + 1, :, cy0:cy1, cx0:cx1], (cx0 - x0, x1 - cx1, cy0 - y0, y1 - cy1),
                           value=PAD_VALUE)
        out.append(_resize(region, size, size))
    return torch.cat(out) / 127.5 - 1.0, crop_mapping(px, size)


def square_box(x0: float, y0: float, x1: float, y1: float, margin: float = 0.0, min_side: float = 0.0,
               frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """A square box ``(x0, y0, x1, y1)`` (pixel edges) around a region, for `crop`.

    Parameters
    ----------
    x0, y0, x1, y1 : float
        The region (e.g. the extent of an animal's keypoints), in frame pixel edges.
    margin : float
        Added on every side, as a fraction of the region's longer side: the square's side is
        ``max(w, h) * (1 + 2 * margin)``, at least ``min_side``.
    frame_size : (width, height), optional
        Shift the square, without resizing it, to lie inside the frame along each axis where it fits (so less
        of the crop is grey padding); where it is longer than the frame, it is centred on the frame.
    """
    side = max(x1 - x0, y1 - y0, 0.0) * (1.0 + 2.0 * margin)
    side = max(side, float(min_side), 1.0)
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    if frame_size is not None:
        for axis, length in enumerate(frame_size):
            if side <= length:
                centre[axis] = np.clip(centre[axis], side / 2.0, length - side / 2.0)
            else:
                centre[axis] = length / 2.0
    return np.array([centre[0] - side / 2.0, centre[1] - side / 2.0, centre[0] + side / 2.0, centre[1] + side / 2.0])


def grid_to_input(xy_grid, stride: float):
    """Map-grid coordinates (cell centres at integers) → engine-input pixels; ``stride`` = input px per cell."""
    return (xy_grid + 0.5) * stride - 0.5


def input_to_grid(xy_input, stride: float):
    """Engine-input pixels → map-grid coordinates; the inverse of `grid_to_input`."""
    return (xy_input + 0.5) / stride - 0.5


def engine_input(frames, size: int, device: torch.device, boxes=None) -> tuple[torch.Tensor, InputMapping]:
    """Frames (see `to_uint8_batch`) → the ``(B, 3, size, size)`` input on ``device`` and its mapping.

    Letterboxed whole frames, or with ``boxes`` (see `crop`) the crops of those boxes. The one preprocessing
    of frames: `Engine.predict`, adaptation's support frames and the ONNX runtime.
    """
    if boxes is None:
        return letterbox(to_uint8_batch(frames, device), size)
    return crop(to_uint8_batch(frames, device), boxes, size)


def to_uint8_batch(frames, device: torch.device) -> torch.Tensor:
    """A list of (H, W, 3) uint8 arrays, an (B, H, W, 3) array or tensor → a uint8 tensor on `device`."""
    if isinstance(frames, torch.Tensor):
        t = frames
    else:
        arr = np.stack(frames) if isinstance(frames, (list, tuple)) else np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB (B, H, W, 3); got {tuple(t.shape)} {t.dtype}")
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
