"""The track data model: per-frame keypoint positions, raw and smoothed, with confidence and visibility."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Tracks:
    """Keypoint trajectories of one video.

    Parameters
    ----------
    names : list of str
        Keypoint names (K).
    frame : np.ndarray
        (T,) int64 frame indices in the source video.
    time : np.ndarray
        (T,) float64 presentation time of each frame in seconds.
    raw_xy : np.ndarray
        (T, K, 2) positions as the engine measured them, in original-frame pixels.
    confidence : np.ndarray
        (T, K) engine confidence in [0, 1].
    xy : np.ndarray
        (T, K, 2) smoothed positions; NaN where the keypoint is lost.
    visible : np.ndarray
        (T, K) bool: True where the keypoint was measured with enough confidence.
    skeleton : list of (str, str)
        Edges between keypoint names.

    The arrays' dimensions are named ``time`` (T, the length of ``frame``), ``keypoints`` (K, the length of
    ``names``) and ``space`` (2: x, y); an array of another shape raises ValueError naming the array and the
    dimension that differs. An array with no element stands for a recording of no frame, whatever its shape.
    """

    names: list[str]
    frame: np.ndarray
    time: np.ndarray
    raw_xy: np.ndarray
    confidence: np.ndarray
    xy: np.ndarray
    visible: np.ndarray
    skeleton: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        sizes = {"time": len(np.atleast_1d(self.frame)), "keypoints": len(self.names), "space": 2}
        self.frame = _shaped("frame", self.frame, np.int64, ("time",), sizes)
        self.time = _shaped("time", self.time, np.float64, ("time",), sizes)
        self.raw_xy = _shaped("raw_xy", self.raw_xy, np.float64, DIMS_XY, sizes)
        self.confidence = _shaped("confidence", self.confidence, np.float64, DIMS_PER_KEYPOINT, sizes)
        self.xy = _shaped("xy", self.xy, np.float64, DIMS_XY, sizes)
        self.visible = _shaped("visible", self.visible, bool, DIMS_PER_KEYPOINT, sizes)

    def __len__(self) -> int:
        return len(self.frame)


DIMS_XY = ("time", "keypoints", "space")
DIMS_PER_KEYPOINT = ("time", "keypoints")


def _shaped(name: str, values, dtype, dims: tuple[str, ...], sizes: dict[str, int]) -> np.ndarray:
    """``values`` as an array of ``dtype`` with the named dimensions ``dims``; ValueError naming the dimension
    that does not match ``sizes``."""
    array = np.asarray(values, dtype=dtype)
    shape = tuple(sizes[d] for d in dims)
    if array.shape == shape:
        return array
    if array.size == 0 and 0 in shape:  # no frame: e.g. np.array([]) of an empty list of rows
        return array.reshape(shape)
    described = ", ".join(f"{d}={n}" for d, n in zip(dims, shape, strict=True))
    if array.ndim != len(dims):
        raise ValueError(f"Tracks.{name} must have the {len(dims)} dimensions ({described}), got an array of "
                         f"shape {array.shape}")
    dim, want, got = next((d, w, g) for d, w, g in zip(dims, shape, array.shape, strict=True) if w != g)
    what = {"time": "the number of frames (len(frame))", "keypoints": "the number of keypoint names (len(names))",
            "space": "x and y"}[dim]
    raise ValueError(f"Tracks.{name}: dimension '{dim}' has size {got}, expected {want}, {what}; shape "
                     f"{array.shape}, expected ({described})")
