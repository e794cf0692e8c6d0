"""Random affine views of support frames, moving keypoints (and masks) with the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    """Ranges of the random affine transform; `flip` needs declared left/right keypoint pairs."""

    rotate_deg: float = 25.0
    scale: float = 0.2
    translate: float = 0.15
    flip: bool = False  # opt-in: only label-preserving for top-down views with look-alike left/right parts


def random_affine(rng: np.random.Generator, size: int, cfg: AugmentConfig, allow_flip: bool
                  ) -> tuple[np.ndarray, bool]:
    """A 2×3 affine matrix about the image centre and whether it mirrors the image."""
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = float(np.exp(rng.uniform(np.log(1 - cfg.scale), np.log(1 + cfg.scale))))
    c = (size - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle, scale)
    m[:, 2] += rng.uniform(-cfg.translate, cfg.translate, size=2) * size
    flip = bool(allow_flip and cfg.flip and rng.random() < 0.5)
    if flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
    return m, flip


def flip_permutation(names: list[str], flip_pairs: list[tuple[str, str]]) -> np.ndarray:
    """Index permutation that swaps left/right keypoints after a horizontal flip."""
    perm = np.arange(len(names))
    for a, b in flip_pairs:
        i, j = names.index(a), names.index(b)
        perm[i], perm[j] = j, i
    return perm


def warp_view(image: np.ndarray, keypoints: np.ndarray, mask: np.ndarray | None, matrix: np.ndarray,
              flip: bool, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Apply `matrix` to a square image, its (..., K, 2) keypoints (e.g. (N, K, 2) for N animals) and a mask.

    Returns the view, its keypoints (NaN stays NaN), the warped mask and a (..., K) bool array marking
    keypoints pushed out of the frame (to be ignored, not trained as missing).
    """
    size = image.shape[0]
    # the mask gets the image's border mode, so animal parts mirrored in at the border stay foreground

    def warp(a: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(a, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)

    view = warp(image)
    wmask = None if mask is None else warp(mask)
    kp = keypoints @ matrix[:, :2].T + matrix[:, 2]
    if flip:
        kp = kp[..., perm, :]
    outside = np.isfinite(kp).all(axis=-1) & ((kp < 0) | (kp > size - 1)).any(axis=-1)
    kp[outside] = np.nan
    return view, kp, wmask, outside
