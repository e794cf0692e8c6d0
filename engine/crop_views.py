"""Support views cropped around the labelled animal, so prompts learn the animal at the scale crops show it.

While tracking with animal-centred crops (``ppmtrack track --crop auto``, :mod:`pipelines.crops`), the engine
sees a square box around the animal — its keypoints' extent plus a margin on every side, at least
``size / max_zoom`` frame pixels — resized to its input. Adaptation makes the same crops of each support frame,
jittered in scale and position (the tracker's box is never exactly centred nor exactly sized), and trains on
them beside the letterboxed views.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from ppmtrack.engine.geometry import InputMapping, crop, crop_mapping, square_box, to_uint8_batch


@dataclass
class CropViewConfig:
    """Crop views of the support frames during adaptation.

    Parameters
    ----------
    views_per_frame : int
        Crop views made of each support frame (0: none, the engine is adapted on whole frames only).
    margin : float
        Added around the keypoints' extent on every side, as a fraction of it (the tracker's margin).
    max_zoom : float
        The smallest crop is ``size / max_zoom`` frame pixels (the tracker's limit).
    scale_jitter : float
        The crop's side is multiplied by a factor drawn log-uniformly in ``[1 - scale_jitter, 1 + scale_jitter]``.
    shift_jitter : float
        Its centre moves by up to this fraction of its side along each axis.
    """

    views_per_frame: int = 0
    margin: float = 0.25
    max_zoom: float = 2.0
    scale_jitter: float = 0.25
    shift_jitter: float = 0.15

    def to_dict(self) -> dict:
        return asdict(self)


def keypoint_crop_box(keypoints: np.ndarray, size: int, margin: float, max_zoom: float,
                      frame_size: tuple[int, int]) -> np.ndarray | None:
    """The square box around a frame's (K, 2) keypoints (NaN ignored) that tracking crops to, or None if none is
    labelled: their extent plus ``margin`` on every side, at least ``size / max_zoom``, inside the frame."""
    xy = np.asarray(keypoints, dtype=np.float64)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if not len(xy):
        return None
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    return square_box(x0, y0, x1, y1, margin, size / max_zoom, frame_size)


def crop_views(image: np.ndarray, keypoints: np.ndarray, mask: np.ndarray, mask_mapping: InputMapping, size: int,
               cfg: CropViewConfig, rng: np.random.Generator, device: torch.device):
    """``cfg.views_per_frame`` jittered crops of one support frame around its labelled keypoints.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) uint8 support frame.
    keypoints : np.ndarray
        (K, 2) its keypoints in frame pixels, NaN = not visible.
    mask, mask_mapping
        Its (S, S) foreground mask over the letterboxed frame and that letterbox's mapping; the mask is carried
        into each crop.
    size : int
        The engine's input side.

    Yields
    ------
    tuple
        ``(view, keypoints, mask, outside)``: the (1, 3, size, size) input in [-1, 1], the keypoints in its
        pixels (NaN where not visible or cut off), its (size, size) mask and the (K,) keypoints cut off by the crop
        (to be ignored, not trained as missing).
    """
    h, w = image.shape[:2]
    box = keypoint_crop_box(keypoints, size, cfg.margin, cfg.max_zoom, (w, h))
    if box is None:
        return
    frame = to_uint8_batch(image, device)
    side = box[2] - box[0]
    centre = (box[:2] + box[2:]) / 2.0
    for _ in range(cfg.views_per_frame):
        s = side * float(np.exp(rng.uniform(np.log(1 - cfg.scale_jitter), np.log(1 + cfg.scale_jitter))))
        c = centre + rng.uniform(-cfg.shift_jitter, cfg.shift_jitter, size=2) * s
        jittered = np.array([c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2])
        view, mapping = crop(frame, jittered, size)
        kp = mapping.to_input(np.asarray(keypoints, dtype=np.float64)[None])[0]
        outside = np.isfinite(kp).all(axis=1) & ((kp < 0) | (kp > size - 1)).any(axis=1)
        kp[outside] = np.nan
        yield view, kp, _carry_mask(mask, mask_mapping, crop_mapping(jittered, size), size), outside


def _carry_mask(mask: np.ndarray, source: InputMapping, target: InputMapping, size: int) -> np.ndarray:
    """Resample a mask over one input (``source`` mapping) into another input of the same frame (``target``)."""
    a = target.scale.reshape(-1, 2)[0] / source.scale.reshape(-1, 2)[0]
    b = target.offset.reshape(-1, 2)[0] - source.offset.reshape(-1, 2)[0] * a
    matrix = np.array([[a[0], 0.0, b[0]], [0.0, a[1], b[1]]])
    return cv2.warpAffine(mask.astype(np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
