"""FARA: a pseudo foreground mask from keypoints and diffusion features (PPM section 3.1.2).

SEEDS superpixels, the mean diffusion feature of each superpixel, cosine affinity to the superpixels that hold
the keypoints, weighted by a Gaussian of the centroid distance, summed over keypoints and smoothed.
"""

from __future__ import annotations

import importlib.metadata

import cv2
import numpy as np

from ppmtrack.engine.errors import PpmtrackError

CONTRIB_PACKAGE = "opencv-contrib-python-headless"


class MissingOpenCvContrib(PpmtrackError, ImportError):
    """The imported cv2 has no ``ximgproc`` (another OpenCV package overwrote the contrib build)."""


def opencv_contrib_repair_message() -> str:
    """Why ``cv2.ximgproc`` is missing and the pip command that repairs it.

    When the contrib build is installed but another OpenCV wheel (``opencv-python-headless``, pulled in by
    e.g. movement) overwrote its ``cv2`` files, ``pip install`` considers it satisfied and does nothing; only a
    forced reinstall of the installed version puts the contrib ``cv2`` back without touching numpy.
    """
    try:
        installed = importlib.metadata.version(CONTRIB_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return (f"FARA needs OpenCV's contrib build (cv2.ximgproc), and {CONTRIB_PACKAGE} is not installed: "
                f"pip install {CONTRIB_PACKAGE}")
    return (f"FARA needs OpenCV's contrib build (cv2.ximgproc); {CONTRIB_PACKAGE} {installed} is installed, but "
            f"another OpenCV package (e.g. opencv-python-headless, which movement pulls in) overwrote its cv2. "
            f"Repair it with: pip install --force-reinstall --no-deps {CONTRIB_PACKAGE}=={installed}")


def seeds_superpixels(image: np.ndarray, n_superpixels: int = 200, n_levels: int = 4, iterations: int = 10,
                      seed: int = 0) -> np.ndarray:
    """SEEDS superpixel labels (H, W) int32 of an RGB uint8 image (OpenCV contrib `ximgproc`)."""
    if not hasattr(cv2, "ximgproc"):
        raise MissingOpenCvContrib(opencv_contrib_repair_message())
    h, w = image.shape[:2]
    cv2.setRNGSeed(seed)
    seeds = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, n_superpixels, n_levels, 2, 5, False)
    seeds.iterate(cv2.cvtColor(image, cv2.COLOR_RGB2LAB), iterations)
    return seeds.getLabels().astype(np.int32)


def superpixel_means(labels: np.ndarray, features: np.ndarray, n_labels: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature r_k and centroid c_k (x, y in pixels) of every superpixel (eq. 1).

    `features` is (H, W, C) at the label map's resolution. Returns (K, C) means and (K, 2) centroids.
    """
    k = n_labels or int(labels.max()) + 1
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=k).astype(np.float64)
    counts[counts == 0] = 1
    feats = features.reshape(-1, features.shape[-1]).astype(np.float64)
    means = np.zeros((k, feats.shape[1]))
    np.add.at(means, flat, feats)
    means /= counts[:, None]
    ys, xs = np.indices(labels.shape)
    cx = np.bincount(flat, weights=xs.ravel(), minlength=k) / counts
    cy = np.bincount(flat, weights=ys.ravel(), minlength=k) / counts
    return means, np.stack([cx, cy], axis=1)


def cosine_affinity(means: np.ndarray) -> np.ndarray:
    """Aff(i, j) = cosine similarity of superpixel features (eq. 2)."""
    unit = means / (np.linalg.norm(means, axis=1, keepdims=True) + 1e-12)
    return unit @ unit.T


def distance_weights(centroids: np.ndarray, keypoints: np.ndarray, delta: float) -> np.ndarray:
    """w_{i,n} = exp(-‖c_i − u_n‖² / 2δ²) for superpixel centroids (K, 2) and keypoints (N, 2) (eq. 4)."""
    d2 = ((centroids[:, None, :] - keypoints[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * delta**2))


def fara_mask(image: np.ndarray, features: np.ndarray, keypoints: np.ndarray, delta: float = 0.1,
              smooth_sigma: float = 0.02, n_superpixels: int = 200) -> np.ndarray:
    """Pseudo foreground mask in [0, 1] at the image's resolution.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) RGB uint8.
    features : np.ndarray
        (h, w, C) diffusion features at any resolution (e.g. the latent grid); the superpixel labels are
        resampled to it, so no feature map has to be upsampled to full image size.
    keypoints : np.ndarray
        (N, 2) pixel coordinates; NaN rows (missing keypoints) are ignored.
    delta : float
        Gaussian distance scale as a fraction of the image size (paper: 0.1).
    smooth_sigma : float
        Final Gaussian smoothing, as a fraction of the image size.
    """
    h, w = image.shape[:2]
    kp = keypoints[np.isfinite(keypoints).all(axis=1)]
    if len(kp) == 0:
        return np.zeros((h, w), np.float32)
    labels = seeds_superpixels(image, n_superpixels)
    small = cv2.resize(labels, (features.shape[1], features.shape[0]), interpolation=cv2.INTER_NEAREST)
    # superpixels too small to survive the resampling get a zero feature, hence no affinity
    means, _ = superpixel_means(small, features, n_labels=int(labels.max()) + 1)
    _, centroids = superpixel_means(labels, np.zeros((h, w, 1)))
    aff = cosine_affinity(means)
    size = float(max(h, w))
    rows = np.clip(np.round(kp[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(kp[:, 0]).astype(int), 0, w - 1)
    holders = labels[rows, cols]  # the superpixel holding each keypoint
    weights = distance_weights(centroids / size, kp / size, delta)  # (K, N)
    score = (weights * np.clip(aff[:, holders], 0.0, None)).sum(axis=1)  # Σ_n A_n(i)
    mask = score[labels].astype(np.float32)
    mask = cv2.GaussianBlur(mask, (0, 0), smooth_sigma * size)
    return mask / max(float(mask.max()), 1e-12)
