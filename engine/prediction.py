"""What an engine returns for a batch of frames (shared by `engine.api` and the engines built on it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    """Keypoints of a batch of frames, in original-frame pixels.

    keypoints (B, K, 2); confidence (B, K): peak of the refined map in [0, 1]; sharpness (B, K): peak over the
    map's mean; maps (B, K, R, R) refined maps and foreground (B, R, R), when asked for.
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    sharpness: np.ndarray
    maps: np.ndarray | None = None
    foreground: np.ndarray | None = None
