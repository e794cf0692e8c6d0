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
        t, k = len(self.frame), len(self.names)
        self.frame = np.asarray(self.frame, dtype=np.int64).reshape(t)
        self.time = np.asarray(self.time, dtype=np.float64).reshape(t)
        self.raw_xy = np.asarray(self.raw_xy, dtype=np.float64).reshape(t, k, 2)
        self.confidence = np.asarray(self.confidence, dtype=np.float64).reshape(t, k)
        self.xy = np.asarray(self.xy, dtype=np.float64).reshape(t, k, 2)
        self.visible = np.asarray(self.visible, dtype=bool).reshape(t, k)

    def __len__(self) -> int:
        return len(self.frame)
