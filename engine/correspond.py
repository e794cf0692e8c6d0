"""Feature correspondence: find a point of one frame in another from the UNet's decoder features (SD4Match).

SD4Match (``seeds/sd4match-paper.txt``, section 3) matches a query point q of image A in image B by

1. the feature of q in A and every cell's feature in B, each L2-normalised;
2. the cosine correlation of q's feature with every cell of B (eq. 3);
3. a softmax over the cells with temperature β = 0.04 (eq. 4);
4. at inference, a kernel soft-argmax (Kernel-Softmax of SFNet): the softmax is multiplied by a Gaussian centred
   on the correlation's argmax before the expectation, so a second, distant peak cannot drag the estimate
   between the two, and the position is sub-cell.

ppmtrack reads these features from the PEI forward it runs anyway: the query-side inputs of the captured
cross-attention layers (the up path, the same features FARA and the multi-animal appearance use,
:meth:`engine.infer.MapExtractor.layer_maps` with ``features=True``), so correspondence costs no extra UNet pass.
A descriptor of a point given on a support frame is averaged over random affine views of that frame
(:mod:`engine.augment`), so it is less tied to the pose and scale of one frame.

The confidence of a match is the softmax mass within the kernel's radius of the peak: 1 when one cell (or a
small blob) holds all the probability, low when the point looks like many places.

Everything here is in map cells (cell centres at integers, as :func:`engine.localize.soft_argmax_peak`); the
callers convert with :func:`engine.geometry.grid_to_input` and the frame's :class:`engine.geometry.InputMapping`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BETA = 0.04  # SD4Match's softmax temperature


@dataclass(frozen=True)
class CorrespondConfig:
    """Read-out settings.

    beta : softmax temperature on the cosine correlation (SD4Match: 0.04).
    kernel_sigma : the Gaussian kernel of the soft-argmax, in map cells (SD4Match smooths its target with a
        7×7 kernel; σ = 1.5 cells spans about that).
    views : affine views a support point's descriptor is averaged over (the frame itself is the first).
    """

    beta: float = BETA
    kernel_sigma: float = 1.5
    views: int = 4

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"the correspondence temperature must be positive, got {self.beta}")
        if not self.kernel_sigma > 0:
            raise ValueError(f"the kernel width must be positive, got {self.kernel_sigma}")
        if self.views < 1:
            raise ValueError(f"at least one view is needed, got {self.views}")


def descriptor_grid(features: list[torch.Tensor], size: int | None = None) -> torch.Tensor:
    """Per-layer features (B, h, w, C_l) → one (B, R, R, ΣC_l) grid of unit-length descriptors.

    Each layer is L2-normalised after bilinear upsampling to R×R (R = `size` or the finest layer), so every
    layer weighs the same in the cosine; the concatenation is normalised again (divided by √L).
    """
    res = size or max(int(f.shape[1]) for f in features)
    parts = [F.normalize(F.interpolate(f.permute(0, 3, 1, 2).float(), size=(res, res), mode="bilinear",
                                       align_corners=False), dim=1) for f in features]
    return F.normalize(torch.cat(parts, dim=1), dim=1).permute(0, 2, 3, 1)


def sample_descriptors(grid: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear descriptors of (N, 2) points (x, y in map cells) from one (R, R, C) grid → (N, C), unit length."""
    r = grid.shape[0]
    norm = (xy.to(grid.device, torch.float32) + 0.5) / r * 2 - 1  # cell centres at integers, align_corners=False
    out = F.grid_sample(grid.permute(2, 0, 1)[None].float(), norm[None, None], mode="bilinear",
                        padding_mode="border", align_corners=False)  # (1, C, 1, N)
    return F.normalize(out[0, :, 0].T, dim=1)


def correlation(descriptors: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Cosine correlation of (N, C) unit descriptors with every cell of (B, R, R, C) unit grids → (B, N, R, R)."""
    b, r = grid.shape[0], grid.shape[1]
    corr = grid.reshape(b, r * r, -1).float() @ descriptors.T.to(grid.device, torch.float32)  # (B, R², N)
    return corr.transpose(1, 2).reshape(b, -1, r, r)


def kernel_soft_argmax(corr: torch.Tensor, beta: float = BETA, kernel_sigma: float = 1.5, radius: int = 3,
                       upsample: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cell position and confidence of the best match in each (..., R, R) correlation map.

    softmax(corr / β) times a Gaussian (σ = `kernel_sigma` cells) centred on the argmax, renormalised; the
    position is its expectation. At β = 0.04 the softmax of a real peak is narrower than a cell, and its
    expectation over whole cells would snap towards the argmax cell, so the correlation is first interpolated
    (bicubic, ``upsample`` samples per cell) in a window of ``radius`` cells around the argmax; positions past
    the map's edge take no part. The confidence is the softmax mass (over the whole map) within 2σ of the argmax.

    Returns
    -------
    xy : torch.Tensor
        (..., 2) (x, y) in map cells.
    confidence : torch.Tensor
        (...) in [0, 1].
    """
    lead = corr.shape[:-2]
    h, w = corr.shape[-2:]
    flat = corr.reshape(-1, h, w).float()
    m = flat.shape[0]
    dev = corr.device
    idx = flat.reshape(m, -1).argmax(dim=1)
    py, px = idx // w, idx % w
    # confidence: softmax mass near the argmax, over the whole map
    prob = torch.softmax(flat.reshape(m, -1) / beta, dim=1).reshape(m, h, w)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    near = (ys - py[:, None, None]) ** 2 + (xs - px[:, None, None]) ** 2 <= (2 * kernel_sigma) ** 2
    confidence = (prob * near).sum(dim=(1, 2)).clamp(0, 1)
    # the window around the argmax, interpolated
    r = int(radius)
    padded = F.pad(flat[:, None], (r, r, r, r), mode="replicate")[:, 0]
    offs = torch.arange(-r, r + 1, device=dev)
    rows = py[:, None] + offs[None] + r
    cols = px[:, None] + offs[None] + r
    window = padded[torch.arange(m, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    side = 2 * r * upsample + 1
    fine = F.interpolate(window[:, None], size=(side, side), mode="bicubic", align_corners=True)[:, 0]
    sub = torch.linspace(-r, r, side, device=dev)
    fy = py[:, None].float() + sub[None]  # (M, side) absolute cell coordinates of the fine samples
    fx = px[:, None].float() + sub[None]
    inside = ((fy >= 0) & (fy <= h - 1))[:, :, None] & ((fx >= 0) & (fx <= w - 1))[:, None, :]
    kernel = torch.exp(-(sub[:, None] ** 2 + sub[None, :] ** 2) / (2 * kernel_sigma**2))
    logits = torch.where(inside, fine / beta + torch.log(kernel)[None], torch.full_like(fine, -torch.inf))
    weight = torch.softmax(logits.reshape(m, -1), dim=1).reshape(m, side, side)
    x = (weight.sum(dim=1) * fx).sum(dim=1)
    y = (weight.sum(dim=2) * fy).sum(dim=1)
    return torch.stack([x, y], dim=-1).reshape(*lead, 2), confidence.reshape(lead)


def match(descriptors: torch.Tensor, grid: torch.Tensor, config: CorrespondConfig | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 2) positions in map cells and (B, N) confidences of N unit descriptors in a (B, R, R, C) grid."""
    cfg = config or CorrespondConfig()
    return kernel_soft_argmax(correlation(descriptors, grid), cfg.beta, cfg.kernel_sigma)


def correlation_flops(n_points: int, cells: int, channels: int) -> int:
    """Multiply-adds ×2 of the correlation and read-out for `n_points` over a grid of `cells` cells.

    The correlation is a (cells × channels) · (channels × n_points) product; the softmax, kernel and expectation
    add about 10 operations per point and cell.
    """
    return 2 * cells * channels * n_points + 10 * cells * n_points


def average_descriptors(per_view: list[torch.Tensor], valid: list[np.ndarray]) -> torch.Tensor:
    """Mean of (N, C) descriptors over views, each point only over the views where it was inside (`valid` (N,)
    bool per view), renormalised; a point valid in no view gets a zero descriptor."""
    total = torch.zeros_like(per_view[0])
    for d, ok in zip(per_view, valid, strict=True):
        total += d * torch.from_numpy(np.asarray(ok, dtype=np.float32))[:, None].to(d.device)
    return F.normalize(total, dim=1)
