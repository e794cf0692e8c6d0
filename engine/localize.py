"""Keypoint read-out: per-layer maps → FGAR fusion → sub-pixel peak, in engine-input pixels.

The mapping from engine-input pixels back to frame pixels is `engine.geometry`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ppmtrack.engine.fgar import FgarConfig, fuse_layers_fgar
from ppmtrack.engine.geometry import grid_to_input


class ReadOut(NamedTuple):
    """Keypoints of a batch as tensors, before the mapping back to frame pixels.

    keypoints (B, K, 2) in engine-input pixels; confidence (B, K): peak of the fused map clamped to [0, 1];
    sharpness (B, K): peak over the map's mean; maps (B, K, R, R) fused maps; foreground (B, R, R).
    """

    keypoints: torch.Tensor
    confidence: torch.Tensor
    sharpness: torch.Tensor
    maps: torch.Tensor
    foreground: torch.Tensor


def read_out(maps: torch.Tensor, n_keypoints: int, fgar: FgarConfig, resolution: int) -> ReadOut:
    """The one read-out of `Engine.predict` and the ONNX graph.

    Parameters
    ----------
    maps : torch.Tensor
        (B, L, K+1, R, R) per-layer maps of the K keypoint tokens and the foreground token
        (`engine.infer.stack_layer_maps`).
    n_keypoints : int
        K.
    fgar : FgarConfig
        Fusion switches and the sub-pixel window.
    resolution : int
        The engine's input side S; one map cell is S / R input pixels.
    """
    k = n_keypoints
    fg = maps[:, :, k].mean(dim=1)  # (B, R, R): layer-averaged foreground map M_f
    kp_maps = maps[:, :, :k].transpose(1, 2)  # (B, K, L, R, R)
    fused = fuse_layers_fgar(kp_maps, fg[:, None, None], fgar.reweight, fgar.refine)
    xy_map, peak = soft_argmax_peak(fused, fgar.window)
    keypoints = grid_to_input(xy_map, resolution / int(maps.shape[-1]))  # int: a constant in a trace
    sharpness = peak / fused.mean(dim=(-2, -1)).clamp(min=1e-8)
    return ReadOut(keypoints, peak.clamp(0, 1), sharpness, fused, fg)


def soft_argmax_peak(maps: torch.Tensor, window: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak location with sub-cell precision and peak value.

    The integer argmax is refined by the centroid of the map (minus the window's minimum) in a
    `window`×`window` neighbourhood, so trajectories do not jump between grid cells.

    Parameters
    ----------
    maps : torch.Tensor
        (..., H, W) maps.

    Returns
    -------
    xy : torch.Tensor
        (..., 2) (x, y) in map-cell coordinates.
    peak : torch.Tensor
        (...) maximum value of each map.
    """
    lead = maps.shape[:-2]
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, h, w).float()
    peak, idx = flat.reshape(flat.shape[0], -1).max(dim=1)
    py, px = idx // w, idx % w
    r = window // 2
    padded = F.pad(flat[:, None], (r, r, r, r), mode="replicate")[:, 0]
    offs = torch.arange(-r, r + 1, device=maps.device)
    rows = (py[:, None] + offs[None] + r).clamp(0, h + 2 * r - 1)
    cols = (px[:, None] + offs[None] + r).clamp(0, w + 2 * r - 1)
    patch = padded[torch.arange(flat.shape[0], device=maps.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    # a window cut by the border would pull the centroid inward: shrink it symmetrically per axis
    ry = torch.minimum(torch.minimum(py, h - 1 - py), torch.tensor(r, device=maps.device))
    rx = torch.minimum(torch.minimum(px, w - 1 - px), torch.tensor(r, device=maps.device))
    inside = (offs[None].abs() <= ry[:, None])[:, :, None] & (offs[None].abs() <= rx[:, None])[:, None, :]
    low = torch.where(inside, patch, torch.full_like(patch, float('inf'))).amin(dim=(1, 2), keepdim=True)
    wgt = (patch - low) * inside
    total = wgt.sum(dim=(1, 2)).clamp(min=1e-12)
    dy = (wgt * offs[None, :, None]).sum(dim=(1, 2)) / total
    dx = (wgt * offs[None, None, :]).sum(dim=(1, 2)) / total
    xy = torch.stack([px + dx, py + dy], dim=-1)
    return xy.reshape(*lead, 2), peak.reshape(lead)
