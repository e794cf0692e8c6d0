"""Keypoint read-out from fused maps: argmax with sub-pixel refinement (frame mapping: `engine.geometry`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
