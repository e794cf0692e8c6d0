"""FGAR: foreground-guided attention refinement (PPM section 3.3), training-free.

Maps here are torch tensors whose last two axes are spatial; every function works on any leading axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-8


@dataclass
class FgarConfig:
    """FGAR switches (for ablations) and the sub-pixel window."""

    reweight: bool = True
    refine: bool = True
    window: int = 5


def soft_iou(maps: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Soft IoU between maps and the foreground map: Σ min(M, M_f) / Σ max(M, M_f) over the spatial axes (eq. 11)."""
    fg = foreground.expand_as(maps)
    inter = torch.minimum(maps, fg).sum(dim=(-2, -1))
    union = torch.maximum(maps, fg).sum(dim=(-2, -1))
    return inter / (union + EPS)


def focus_score(maps: torch.Tensor) -> torch.Tensor:
    """Focus f = sigmoid(Σ M / #{M > mean(M)}) over the spatial axes (eq. 12): high when the energy is concentrated."""
    mean = maps.mean(dim=(-2, -1), keepdim=True)
    area = (maps > mean).sum(dim=(-2, -1)).clamp(min=1).to(maps.dtype)
    return torch.sigmoid(maps.sum(dim=(-2, -1)) / area)


def fuse_layers_fgar(layer_maps: torch.Tensor, foreground: torch.Tensor, reweight: bool = True,
                     refine: bool = True) -> torch.Tensor:
    """Fuse per-layer keypoint maps with FGAR.

    Parameters
    ----------
    layer_maps : torch.Tensor
        (..., L, H, W) maps of one keypoint per layer, all at one resolution.
    foreground : torch.Tensor
        (..., 1, H, W) foreground map M_f (broadcast over layers).
    reweight : bool
        Layer weights w_l = softIoU(M_l, M_f) · f_l (eqs. 13–14); off: plain average over layers.
    refine : bool
        Multiply the fused map by M_f (eq. 15).

    Returns
    -------
    torch.Tensor
        (..., H, W) fused map.
    """
    if reweight:
        w = soft_iou(layer_maps, foreground) * focus_score(layer_maps)  # (..., L)
        fused = (w[..., None, None] * layer_maps).sum(dim=-3) / (w.sum(dim=-1)[..., None, None] + EPS)
    else:
        fused = layer_maps.mean(dim=-3)
    if refine:
        fused = fused * foreground.squeeze(-3)
    return fused
