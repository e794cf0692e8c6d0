"""Several animals from one forward: split the foreground map into animals, read each one's keypoints there.

The engine's maps of one frame hold every animal at once: the foreground map M_f lights up on each animal,
and a keypoint's map peaks once per animal that shows it. :func:`find_animals` turns them into one candidate
per animal:

1. the foreground map is thresholded (relative to its maximum) and cut into connected regions; regions
   smaller than ``min_area`` cells are noise;
2. while there are fewer regions than animals expected, the region whose foreground mass is largest is split
   in two at the two farthest-apart peaks of its distance transform (two touching animals are two blobs
   joined by a neck), every cell going to the nearer peak;
3. each keypoint's map is read inside each region (slightly dilated), so each animal gets the peak of that
   keypoint's map on its own body: several peaks per keypoint map, one per animal.

Everything here is in map cells; :meth:`engine.api.Engine.predict_animals` converts to frame pixels and adds
each animal's appearance vector (its mean diffusion features inside its region).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ppmtrack.engine.localize import soft_argmax_peak


@dataclass
class AnimalRegions:
    """The animals found in one frame's maps.

    Parameters
    ----------
    keypoints : np.ndarray
        (D, K, 2) keypoints of the D animals, in map cells.
    confidence : np.ndarray
        (D, K) the keypoint map's peak inside the animal's region, in [0, 1].
    masks : np.ndarray
        (D, R, R) bool region of each animal in the map.
    foreground_mass : np.ndarray
        (D,) sum of the foreground map over each region (bigger = surer it is an animal).
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    foreground_mass: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass
class Animals:
    """The animals of one frame in frame pixels, as :meth:`engine.api.Engine.predict_animals` returns them.

    keypoints (D, K, 2) in original-frame pixels; confidence (D, K); appearance (D, F) the mean of the
    L2-normalised diffusion features inside each animal's region (unit length; None when not asked for);
    foreground_mass (D,).
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    appearance: np.ndarray | None
    foreground_mass: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


def region_appearance(features: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """(D, C) unit-length mean of (R, R, C) per-cell features over each of the (D, R, R) masks."""
    if len(masks) == 0:
        return np.zeros((0, features.shape[-1]))
    weights = torch.from_numpy(masks.reshape(len(masks), -1)).to(features.device, features.dtype)
    means = weights @ features.reshape(-1, features.shape[-1]) / weights.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(means.float(), dim=1).cpu().numpy().astype(np.float64)


def foreground_regions(foreground: np.ndarray, threshold: float = 0.5, min_area: int = 4) -> list[np.ndarray]:
    """Connected regions of the foreground map above a threshold between its minimum and maximum.

    The maps of a diffusion model are low in contrast and their level varies from frame to frame, so the
    threshold is relative: a cell is foreground when ``M_f >= min + threshold * (max - min)``.

    Parameters
    ----------
    foreground : np.ndarray
        (R, R) foreground map M_f.
    threshold : float, default 0.5
        Fraction of the way from the map's minimum to its maximum.
    min_area : int, default 4
        Regions with fewer cells are dropped.

    Returns
    -------
    list of np.ndarray
        (R, R) bool masks.
    """
    low, peak = float(foreground.min()), float(foreground.max())
    if not np.isfinite(peak) or peak <= 0 or peak - low <= 1e-6 * peak:
        return []
    labels, n = ndimage.label(foreground >= low + threshold * (peak - low), structure=np.ones((3, 3)))
    masks = [labels == i for i in range(1, n + 1)]
    masks = [m for m in masks if m.sum() >= min_area]
    return sorted(masks, key=lambda m: -float(foreground[m].sum()))


def split_region(mask: np.ndarray, min_separation: float = 2.0) -> list[np.ndarray] | None:
    """Split one region in two at the two farthest-apart maxima of its distance transform.

    Returns the two masks (every cell to the nearer maximum), or None when the region has no two maxima at
    least ``min_separation`` cells apart (one compact blob: nothing to split).
    """
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    peaks = (distance == ndimage.maximum_filter(distance, size=3)) & mask & (distance >= 1.0)
    ys, xs = np.nonzero(peaks)
    if len(ys) < 2:
        return None
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    # the strongest maximum, then the strongest one far enough from it, weighted by distance-to-edge
    order = np.argsort(-distance[ys, xs])
    first = points[order[0]]
    far = [i for i in order[1:] if np.linalg.norm(points[i] - first) >= min_separation]
    if not far:
        return None
    second = max(far, key=lambda i: distance[ys[i], xs[i]] * np.linalg.norm(points[i] - first))
    second = points[second]
    gy, gx = np.nonzero(mask)
    cells = np.stack([gx, gy], axis=1)
    nearer_first = np.linalg.norm(cells - first, axis=1) <= np.linalg.norm(cells - second, axis=1)
    a, b = np.zeros_like(mask), np.zeros_like(mask)
    a[gy[nearer_first], gx[nearer_first]] = True
    b[gy[~nearer_first], gx[~nearer_first]] = True
    if not a.any() or not b.any():
        return None
    return [a, b]


def find_animals(keypoint_maps: np.ndarray, foreground: np.ndarray, max_animals: int, *,
                 exact: bool = True, threshold: float = 0.5, min_area: int = 4, window: int = 5,
                 dilate: int = 1) -> AnimalRegions:
    """One candidate per animal from one frame's fused keypoint maps and foreground map (module docstring).

    Parameters
    ----------
    keypoint_maps : np.ndarray
        (K, R, R) fused keypoint maps.
    foreground : np.ndarray
        (R, R) foreground map.
    max_animals : int
        Most animals to return.
    exact : bool, default True
        True: ``max_animals`` animals are in view (``--animals N``), so merged regions are split until there
        are that many. False (``--animals auto``): regions are taken as found (up to ``max_animals``).
    threshold, min_area
        See :func:`foreground_regions`.
    window : int, default 5
        Sub-cell refinement window of :func:`engine.localize.soft_argmax_peak`.
    dilate : int, default 1
        Cells by which a region is grown before its keypoints are read (paws and tail tips reach past the
        thresholded foreground).

    Returns
    -------
    AnimalRegions
        At most ``max_animals`` animals, largest foreground mass first.
    """
    k, res = keypoint_maps.shape[0], keypoint_maps.shape[-1]
    regions = foreground_regions(foreground, threshold, min_area)[:max_animals]
    while exact and 0 < len(regions) < max_animals:
        parts = None
        for i, region in enumerate(regions):  # split the heaviest region that can be split
            parts = split_region(region)
            if parts is not None:
                regions = regions[:i] + parts + regions[i + 1:]
                break
        if parts is None:
            break
    if not regions:
        return AnimalRegions(np.zeros((0, k, 2)), np.zeros((0, k)), np.zeros((0, res, res), bool), np.zeros(0))
    masks = np.stack(regions)
    grown = masks if dilate <= 0 else np.stack([ndimage.binary_dilation(m, iterations=dilate) for m in masks])
    # a cell claimed by two grown regions stays with the region it belonged to before growing
    grown &= ~(masks.any(axis=0) & ~masks)
    inside = torch.from_numpy(keypoint_maps[None] * grown[:, None]).float()  # (D, K, R, R)
    xy, peak = soft_argmax_peak(inside, window)
    mass = np.array([float(foreground[m].sum()) for m in masks])
    order = np.argsort(-mass)
    return AnimalRegions(xy.numpy().astype(np.float64)[order], peak.clamp(0, 1).numpy().astype(np.float64)[order],
                         masks[order], mass[order])


def region_boxes(masks: np.ndarray, stride: float, mapping, margin: float = 0.25, min_side: float = 32.0
                 ) -> np.ndarray:
    """A square crop box in frame pixels around each animal's region, for reading its keypoints from a crop.

    Parameters
    ----------
    masks : np.ndarray
        (D, R, R) bool regions on the map grid (:class:`AnimalRegions`).
    stride : float
        Engine-input pixels per map cell.
    mapping : engine.geometry.InputMapping
        Where the frame sits in the engine input (a letterbox: one row for the batch).
    margin : float
        Added on every side, as a fraction of the region's longer side (legs and tails reach past the
        foreground map's coarse cells).
    min_side : float
        Smallest box side in frame pixels.

    Returns
    -------
    np.ndarray
        (D, 4) ``(x0, y0, x1, y1)`` pixel-edge boxes for :func:`engine.geometry.crop`, centred on each region
        (they may reach past the frame: the crop pads with grey).
    """
    boxes = np.zeros((len(masks), 4))
    for d, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        # the cells' outer edges in engine-input pixels, then frame pixels
        corners = np.array([[xs.min() * stride - 0.5, ys.min() * stride - 0.5],
                            [(xs.max() + 1) * stride - 0.5, (ys.max() + 1) * stride - 0.5]])
        (x0, y0), (x1, y1) = mapping.to_frame(corners)
        side = max(x1 - x0, y1 - y0, min_side / (1 + 2 * margin)) * (1 + 2 * margin)
        cx, cy = (x0 + x1) / 2 + 0.5, (y0 + y1) / 2 + 0.5  # centre as a pixel edge coordinate
        boxes[d] = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return boxes
