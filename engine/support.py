"""The engine's view of a support set: images and their keypoints, nothing of files or video."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SupportSet:
    """Annotated support frames for few-shot adaptation.

    Parameters
    ----------
    names : list of str
        Keypoint names, in the order of the keypoint axis.
    images : list of np.ndarray
        RGB uint8 images, each (H, W, 3); sizes may differ between frames.
    keypoints : np.ndarray
        (F, K, 2) pixel coordinates (x, y) in each image; NaN marks a keypoint that is not visible.
    skeleton : list of (str, str)
        Edges between keypoint names, kept for drawing and for the engine file.
    flip_pairs : list of (str, str)
        Left/right keypoint pairs; horizontal-flip augmentation is only used when these are declared.
    labels : list of str
        One human-readable origin per frame ("support.json frame 3"), used in error messages.
    display : dict
        Drawing settings of the labelling tool (e.g. DeepLabCut's ``dotsize``, ``pcutoff``, ``colormap``); the
        engine keeps them in ``info["display"]`` for the annotated video.
    other_instances : np.ndarray, optional
        (F, M, K, 2) keypoints of the other animals in the same frames (several animals per frame), NaN where
        absent. Every instance is a target: a keypoint's map should peak on each animal.
    """

    names: list[str]
    images: list[np.ndarray]
    keypoints: np.ndarray
    skeleton: list[tuple[str, str]] = field(default_factory=list)
    flip_pairs: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    display: dict = field(default_factory=dict)
    other_instances: np.ndarray | None = None

    def __post_init__(self):
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64)
        if self.other_instances is not None:
            self.other_instances = np.asarray(self.other_instances, dtype=np.float64)
            if self.other_instances.shape[:1] + self.other_instances.shape[2:] != self.keypoints.shape \
                    or self.other_instances.ndim != 4:
                raise ValueError(f"other_instances have shape {self.other_instances.shape}, expected "
                                 f"({len(self.images)}, M, {len(self.names)}, 2)")
        if not self.images:
            raise ValueError("support set has no frames")
        if self.keypoints.shape != (len(self.images), len(self.names), 2):
            raise ValueError(
                f"keypoints have shape {self.keypoints.shape}, expected "
                f"({len(self.images)}, {len(self.names)}, 2) for {len(self.images)} frames and "
                f"{len(self.names)} keypoint names"
            )
        if not self.labels:
            self.labels = [f"frame {i}" for i in range(len(self.images))]
        for a, b in list(self.skeleton) + list(self.flip_pairs):
            for n in (a, b):
                if n not in self.names:
                    raise ValueError(f"edge or flip pair names unknown keypoint {n!r}")

    def instances(self) -> np.ndarray:
        """(F, N, K, 2) all instances of every frame: ``keypoints`` first, then ``other_instances``."""
        if self.other_instances is None:
            return self.keypoints[:, None]
        return np.concatenate([self.keypoints[:, None], self.other_instances], axis=1)
