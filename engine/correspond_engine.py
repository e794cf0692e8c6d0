"""Correspondence beside PPM in an adapted engine: a second detector from the same forward (``track --detector``).

:func:`describe_support` makes one descriptor per keypoint from the support frames (each frame and random affine
views of it, :mod:`engine.augment`, under the engine's own prompts — the features depend on the conditioning), to
be stored in the engine file (``keypoint_descriptors``). :func:`predict_with_features` runs the forward once and
reads both detections: PPM's maps (:meth:`engine.api.Engine.read_out`) and the correspondence of the stored
descriptors (:func:`engine.correspond.match`). :func:`combine` makes the measurement the tracker gets:

- ``ppm``: PPM's keypoints (the default, see docs/points.md for the measurement that chose it);
- ``features``: the correspondence's keypoints and confidences;
- ``both``: PPM's keypoint, replaced by the correspondence's where the two disagree by more than
  ``agree_cells`` map cells and the correspondence is the surer one (its confidence above PPM's) — e.g. a
  keypoint PPM lost after an occlusion; where they agree, PPM's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ppmtrack.engine.adapt import to_image, to_tensor
from ppmtrack.engine.augment import AugmentConfig, random_affine, warp_view
from ppmtrack.engine.correspond import (
    CorrespondConfig,
    average_descriptors,
    descriptor_grid,
    match,
    sample_descriptors,
)
from ppmtrack.engine.errors import UsageError
from ppmtrack.engine.geometry import grid_to_input, input_to_grid
from ppmtrack.engine.prediction import Prediction

DETECTORS = ("ppm", "features", "both")
DEFAULT_DETECTOR = "ppm"


def _features_forward(engine, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (B, L, K+1, R, R) and unit descriptor grids (B, R', R', C) of engine inputs, in one UNet forward."""
    engine.cache_prompt()
    z = engine.extractor.encode(x)
    out = engine.extractor.layer_maps(z, engine.conditioning(), n_tokens=len(engine.names) + 1, features=True)
    return out["maps"], descriptor_grid(out["features"])


@torch.no_grad()
def describe_support(engine, support, views: int = 4, seed: int = 0) -> torch.Tensor:
    """(K, C) unit descriptors of the keypoints, averaged over the support frames, their animals and ``views``
    views of each frame (the frame, then random affine views); a keypoint labelled nowhere gets zeros."""
    rng = np.random.default_rng(seed)
    k = len(engine.names)
    total = None
    for image, kp in zip(support.images, support.instances(), strict=True):
        x, box = engine.prepare(image)
        points = box.to_input(np.asarray(kp, dtype=np.float64).reshape(-1, 2))  # (A·K, 2)
        valid0 = np.isfinite(points).all(axis=1)
        frame = to_image(x[0])
        inputs, pts, valid = [x], [np.nan_to_num(points)], [valid0]
        for _ in range(views - 1):
            mat, flip = random_affine(rng, engine.resolution, AugmentConfig(), allow_flip=False)
            view, vkp, _, outside = warp_view(frame, points[None], None, mat, flip, np.arange(len(points)))
            inputs.append(to_tensor(view[None]).to(x.device))
            pts.append(np.nan_to_num(vkp[0]))
            valid.append(valid0 & ~outside[0])
        _, grids = _features_forward(engine, torch.cat(inputs).to(engine.model.dtype))
        stride = engine.resolution / int(grids.shape[1])
        per_view = [sample_descriptors(g, torch.from_numpy(input_to_grid(p, stride))) for g, p in zip(grids, pts,
                                                                                                     strict=True)]
        desc = average_descriptors(per_view, valid)  # (A·K, C), zero where never valid
        desc = desc.reshape(-1, k, desc.shape[-1]).sum(dim=0)
        total = desc if total is None else total + desc
    return torch.nn.functional.normalize(total, dim=1).cpu()


@torch.no_grad()
def predict_with_features(engine, frames, descriptors: torch.Tensor, boxes=None, crop_size: int | None = None,
                          config: CorrespondConfig | None = None, return_maps: bool = False,
                          return_foreground: bool = False) -> tuple[Prediction, np.ndarray, np.ndarray, np.ndarray]:
    """PPM's prediction, the correspondence's keypoints (B, K, 2, frame pixels) and confidences (B, K), and the
    frame pixels per map cell ((B,) or scalar) of a batch of frames, from one forward (``boxes``/``crop_size`` as
    :meth:`engine.api.Engine.predict`)."""
    x, box = engine.prepare(frames, boxes, crop_size)
    maps, grids = _features_forward(engine, x)
    ppm = engine.read_out(maps, box, return_maps, return_foreground, x.shape[-1])
    xy, conf = match(descriptors.to(grids.device), grids, config)
    stride = x.shape[-1] / int(grids.shape[1])
    xy_in = grid_to_input(xy.cpu().numpy().astype(np.float64), stride)
    return ppm, box.to_frame(xy_in), conf.cpu().numpy().astype(np.float64), stride / box.scale_x


def combine(ppm: Prediction, xy: np.ndarray, conf: np.ndarray, detector: str, cell_px: np.ndarray | float,
            agree_cells: float = 2.0) -> Prediction:
    """The measurement of one detector mode (module docstring); ``cell_px``: frame pixels per map cell."""
    if detector == "ppm":
        return ppm
    if detector == "features":
        return replace(ppm, keypoints=xy, confidence=conf, sharpness=conf.copy())
    if detector != "both":
        raise UsageError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    far = np.linalg.norm(ppm.keypoints - xy, axis=-1) > agree_cells * np.asarray(cell_px)[..., None]
    take = far & (conf > ppm.confidence)
    return replace(ppm, keypoints=np.where(take[..., None], xy, ppm.keypoints),
                   confidence=np.where(take, conf, ppm.confidence))


class DetectorEngine:
    """An adapted engine whose ``predict`` gives the measurement of ``detector`` (an ``EngineLike`` for
    ``pipelines.track.track_video``); everything else is the wrapped engine's."""

    def __init__(self, engine, detector: str):
        if detector not in DETECTORS:
            raise UsageError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        descriptors = getattr(engine, "keypoint_descriptors", None)
        if detector != "ppm" and descriptors is None:
            raise UsageError(f"--detector {detector} needs keypoint descriptors, which this engine file does not "
                             "hold (it was adapted by an older ppmtrack or exported to ONNX); adapt it again")
        self.engine = engine
        self.detector = detector
        self.descriptors = descriptors

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def predict(self, frames, return_maps: bool = False, boxes=None, crop_size: int | None = None,
                return_foreground: bool = False) -> Prediction:
        if self.detector == "ppm":
            return self.engine.predict(frames, return_maps=return_maps, boxes=boxes, crop_size=crop_size,
                                       return_foreground=return_foreground)
        ppm, xy, conf, cell_px = predict_with_features(self.engine, frames, self.descriptors, boxes, crop_size,
                                                       return_maps=return_maps, return_foreground=return_foreground)
        return combine(ppm, xy, conf, self.detector, cell_px)
