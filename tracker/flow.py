"""Optical flow of keypoints between consecutive frames, with a reliability from the forward-backward check.

A keypoint at ``p`` in frame ``t-1`` is tracked to ``q`` in frame ``t`` (forward) and ``q`` back to ``p'`` in
frame ``t-1`` (backward); the forward-backward error ``|p - p'|`` says how far the flow can be trusted
(Kalal et al., "Forward-backward error", ICPR 2010). :mod:`tracker.fusion` turns it into the noise of the
flow measurement in the Kalman filter.

Two OpenCV methods are available (``FlowParams.method``); docs/smoothing.md has the measured comparison
behind the default (LK: as accurate as DIS on the sample and the BADJA clips, 10-15 times cheaper):

- ``lk``: pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``) on the keypoints only, forward and backward;
- ``dis``: dense inverse search (``cv2.DISOpticalFlow``), dense flow both ways, sampled at the keypoints.

Frames are converted to grey and downscaled so that their longer side is at most
``FlowParams.max_side`` pixels; positions and errors are always in full-frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FLOW_METHODS = ("lk", "dis")


@dataclass(frozen=True)
class FlowParams:
    """Settings of the keypoint optical flow.

    Parameters
    ----------
    method : {"lk", "dis"}, default "lk"
        Optical-flow method (see the module docstring).
    window_px : int, default 13
        Side of the Lucas-Kanade integration window, in (downscaled) pixels. Smaller windows follow a
        keypoint's own texture rather than the background's and flag more of their failures by the
        forward-backward check; 13 was best for the fused tracker among 9-21 on the sample and the BADJA clips
        (docs/performance.md).
    pyramid_levels : int, default 3
        Pyramid levels above the full resolution (LK): motion up to about ``window_px * 2**levels / 2``
        pixels per frame is found.
    max_side : int, default 640
        Frames whose longer side exceeds this are downscaled for the flow (cost grows with the area).
    """

    method: str = "lk"
    window_px: int = 13
    pyramid_levels: int = 3
    max_side: int = 640

    def __post_init__(self):
        if self.method not in FLOW_METHODS:
            raise ValueError(f"flow method must be one of {', '.join(FLOW_METHODS)}, got {self.method!r}")
        if self.window_px < 5 or self.pyramid_levels < 0 or self.max_side < 32:
            raise ValueError("window_px must be ≥ 5, pyramid_levels ≥ 0 and max_side ≥ 32")


def flow_scale(height: int, width: int, params: FlowParams) -> float:
    """The factor (≤ 1) that frames of this size are resized by for the flow."""
    return min(1.0, params.max_side / max(height, width))


def flow_image(image: np.ndarray, params: FlowParams) -> np.ndarray:
    """A frame prepared for :func:`propagate_points`: grey uint8, downscaled.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) RGB or (H, W) grey uint8 frame.
    params : FlowParams
        Supplies the method and ``max_side``.

    Returns
    -------
    np.ndarray
        (h, w) grey uint8 with ``h = round(H * s)``, ``w = round(W * s)``,
        ``s = flow_scale(H, W, params)``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {image.dtype}")
    prepared = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    scale = flow_scale(image.shape[0], image.shape[1], params)
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        prepared = cv2.resize(prepared, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(prepared)


def propagate_points(previous: np.ndarray, current: np.ndarray, points: np.ndarray, params: FlowParams,
                     frame_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Move points from one frame to the next by optical flow, with their forward-backward error.

    Parameters
    ----------
    previous, current : np.ndarray
        Consecutive frames from :func:`flow_image` (same size).
    points : np.ndarray
        (K, 2) positions in the previous frame, in full-frame pixels; NaN rows are skipped.
    params : FlowParams
        The method and its settings.
    frame_shape : (int, int), optional
        (H, W) of the full frames; default: the flow images' own size (no downscaling).

    Returns
    -------
    moved : np.ndarray
        (K, 2) positions in the current frame, full-frame pixels; NaN where the flow failed.
    fb_error : np.ndarray
        (K,) forward-backward error in full-frame pixels; ``inf`` where the flow failed or the point was NaN.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = previous.shape[:2]
    scale = 1.0 if frame_shape is None else w / frame_shape[1]
    moved = np.full(points.shape, np.nan)
    fb_error = np.full(len(points), np.inf)
    ok = np.isfinite(points).all(axis=1)
    if not ok.any():
        return moved, fb_error
    start = (points[ok] * scale).astype(np.float32).reshape(-1, 1, 2)
    if params.method == "dis":
        forward_pts, back_pts, good = _dis_round_trip(previous, current, start[:, 0])
    else:
        forward_pts, good_f = _lucas_kanade(previous, current, start, params)
        back_pts, good_b = _lucas_kanade(current, previous, forward_pts.astype(np.float32).reshape(-1, 1, 2), params)
        good = good_f & good_b
    inside = ((forward_pts[:, 0] >= -0.5) & (forward_pts[:, 0] <= w - 0.5)
              & (forward_pts[:, 1] >= -0.5) & (forward_pts[:, 1] <= h - 0.5))
    good &= inside & np.isfinite(forward_pts).all(axis=1)
    error = np.linalg.norm(back_pts - start[:, 0], axis=1) / scale
    rows = np.flatnonzero(ok)
    moved[rows[good]] = forward_pts[good] / scale
    fb_error[rows[good]] = error[good]
    return moved, fb_error


def _lucas_kanade(a: np.ndarray, b: np.ndarray, points: np.ndarray, params: FlowParams):
    """(N, 2) tracked points and (N,) success of pyramidal LK from image a to image b."""
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(a, b, points, None, winSize=(params.window_px,) * 2,
                                                maxLevel=params.pyramid_levels, criteria=criteria)
    return moved.reshape(-1, 2).astype(np.float64), status.reshape(-1).astype(bool)


_DIS = {}


def _dis_round_trip(a: np.ndarray, b: np.ndarray, points: np.ndarray):
    """Dense DIS flow a→b and b→a, sampled bilinearly: forward points, back-tracked points, success."""
    dis = _DIS.setdefault("medium", cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM))
    forward = dis.calc(a, b, None)
    backward = dis.calc(b, a, None)
    moved = points + _sample(forward, points)
    back = moved + _sample(backward, moved)
    return moved.astype(np.float64), back.astype(np.float64), np.isfinite(back).all(axis=1)


def _sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, 2) field at (N, 2) points (edge values outside)."""
    x = points[:, 0].astype(np.float32).reshape(-1, 1)
    y = points[:, 1].astype(np.float32).reshape(-1, 1)
    sampled = cv2.remap(field, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(-1, 2)


def track_points_flow(frames, start: int, points: np.ndarray, params: FlowParams | None = None) -> np.ndarray:
    """Pure optical-flow tracking: chain the flow from one labelled frame forwards and backwards.

    The baseline a tracker must beat: no detections, no filter. A point whose flow fails keeps its last
    position (it is not dropped, which would count as wrong everywhere after).

    Parameters
    ----------
    frames : sequence of np.ndarray
        (T) RGB uint8 frames of one video, in order.
    start : int
        Index of the frame where ``points`` are known.
    points : np.ndarray
        (K, 2) positions there, full-frame pixels; NaN rows stay NaN.
    params : FlowParams, optional
        Flow settings; the defaults when omitted.

    Returns
    -------
    np.ndarray
        (T, K, 2) positions in every frame.
    """
    params = params or FlowParams()
    points = np.asarray(points, dtype=np.float64)
    out = np.full((len(frames),) + points.shape, np.nan)
    out[start] = points
    shape = frames[start].shape[:2]
    for direction in (1, -1):
        current = points.copy()
        image = flow_image(frames[start], params)
        t = start + direction
        while 0 <= t < len(frames):
            nxt = flow_image(frames[t], params)
            moved, fb = propagate_points(image, nxt, current, params, shape)
            good = np.isfinite(fb)
            current[good] = moved[good]
            out[t] = current
            image, t = nxt, t + direction
    return out
