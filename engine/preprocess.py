"""Frames to the engine's square input tensor (letterboxed, in [-1, 1]), on the engine's device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ppmtrack.engine.localize import Letterbox, letterbox_for


def letterbox_batch(frames: torch.Tensor, size: int) -> tuple[torch.Tensor, Letterbox]:
    """(B, H, W, 3) uint8 frames of one size → (B, 3, size, size) float in [-1, 1], grey padding.

    Resizing runs on the frames' device, so GPU inference also does its preprocessing on the GPU.
    """
    b, h, w, _ = frames.shape
    box = letterbox_for(w, h, size)
    x = frames.permute(0, 3, 1, 2).float()
    nw, nh = round(w * box.scale), round(h * box.scale)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = x / 127.5 - 1.0
    left, top = (size - nw) // 2, (size - nh) // 2
    x = F.pad(x, (left, size - nw - left, top, size - nh - top), value=0.0)
    # the exact mapping of the rounded resize
    box = Letterbox(scale=nw / w, pad_x=float(left), pad_y=float(top))
    if abs(nh / h - box.scale) > 1e-6:
        box = Letterbox(scale=(nw / w + nh / h) / 2, pad_x=float(left), pad_y=float(top))
    return x, box


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
