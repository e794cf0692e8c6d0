"""The parameters of the keypoint filter and smoother (:class:`SmoothingParams`), and the check of the
keypoint arrays every whole-recording filter is given.

Kept apart from the filter's maths (:mod:`tracker.fusion`), its online front end (:mod:`tracker.kalman`) and the
whole-recording functions (:mod:`tracker.smoothing`), which all import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SmoothingParams:
    """Parameters of the keypoint filter and smoother.

    The defaults suit animals filmed at 25-60 fps in frames a few hundred
    pixels across, with an engine whose confident measurements are good to a
    couple of pixels.

    Parameters
    ----------
    min_confidence : float, default 0.2
        Measurements with a lower confidence (or NaN confidence or position)
        are ignored: the keypoint counts as occluded and its position is
        predicted from the motion model.
    measurement_noise_px : float or tuple of float, default 2.0
        Standard deviation, in pixels, of a measurement with confidence 1. A
        measurement with confidence ``c`` gets ``measurement_noise_px / c``,
        so a confidence-0.2 measurement counts as 5 times noisier (25 times
        less weight). A tuple gives one value per keypoint (K values), e.g.
        each keypoint's held-out error measured when the engine was adapted
        (``ppmtrack track --detection-noise auto``, the default there).
    process_noise : float, default 500.0
        Strength of the random acceleration, as the square root of its
        spectral density, in px / s^1.5: over a frame interval ``dt`` the
        velocity uncertainty grows by ``process_noise * sqrt(dt)`` px/s. The
        model is continuous in time, so the same value behaves the same at any
        frame rate and across time gaps. Larger values follow quick turns more
        closely but smooth less.
    max_occluded_s : float, default 1.0
        A keypoint not measured for longer than this many seconds is lost:
        its position becomes NaN instead of being extrapolated for ever, and
        the filter restarts at the next measurement.
    initial_speed_px_s : float, default 300.0
        Standard deviation of the unknown velocity, in px/s, when the filter
        starts (or restarts) at a measurement; the velocity starts at zero.
    flow_noise_px : float, default 0.5
        Standard deviation, in pixels, of an optical-flow displacement whose
        forward-backward error is zero; the error is added to it.
    max_flow_error_px : float, default 2.0
        A flow displacement whose forward-backward error exceeds this is not
        used (the flow is unreliable there).
    anchor_noise_px : float, default 0.5
        Standard deviation of a known position (a support frame in the video).
    detection_gate : float, default 16.0
        Where the flow was used, a detection whose squared Mahalanobis distance
        ``d²`` from the filter's estimate exceeds this (16: 4 standard
        deviations) is down-weighted: its innovation variance is scaled by
        ``(d² / detection_gate)²`` (see :mod:`tracker.fusion`).
    detection_correlation_s : float, default 1.0
        How long a detection's error persists, in seconds. An engine that is wrong about a keypoint stays wrong
        in the frames that follow (the same pose, the same mistake), so beside the flow, detections count as one
        independent measurement per this time, not one per frame: their variance is multiplied by
        ``detection_correlation_s / dt``. Without it, a detection bias of tens of pixels slowly pulls an
        accurate flow track off over a hundred frames (docs/smoothing.md). 0: every frame independent.
    """

    min_confidence: float = 0.2
    measurement_noise_px: float | tuple[float, ...] = 2.0
    process_noise: float = 500.0
    max_occluded_s: float = 1.0
    initial_speed_px_s: float = 300.0
    flow_noise_px: float = 0.5
    max_flow_error_px: float = 2.0
    anchor_noise_px: float = 0.5
    detection_gate: float = 16.0
    detection_correlation_s: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {self.min_confidence}.")
        noise = self.measurement_noise_px
        values = np.asarray(noise, dtype=np.float64)
        if values.ndim > 1 or values.size == 0 or not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"measurement_noise_px must be a positive finite number or one per keypoint, "
                             f"got {noise!r}.")
        if values.ndim == 1:  # one per keypoint: kept as a tuple (hashable, JSON-able)
            object.__setattr__(self, "measurement_noise_px", tuple(float(v) for v in values))
        if not (np.isfinite(self.detection_correlation_s) and self.detection_correlation_s >= 0):
            raise ValueError(f"detection_correlation_s must be a finite number ≥ 0, got "
                             f"{self.detection_correlation_s}.")
        for name in ("process_noise", "max_occluded_s", "initial_speed_px_s", "flow_noise_px", "max_flow_error_px",
                     "anchor_noise_px", "detection_gate"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}.")

    def detection_noise(self, n_keypoints: int) -> np.ndarray:
        """(K,) the standard deviation of a confidence-1 detection of each keypoint, in pixels."""
        noise = np.asarray(self.measurement_noise_px, dtype=np.float64)
        if noise.ndim and len(noise) != n_keypoints:
            raise ValueError(f"measurement_noise_px has {len(noise)} values for {n_keypoints} keypoints.")
        return np.broadcast_to(noise, (n_keypoints,))


def check_keypoint_arrays(
    raw_xy: np.ndarray, confidence: np.ndarray, time: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``raw_xy`` (T, K, 2), ``confidence`` (T, K) and ``time`` (T,) as float64 arrays; ValueError naming the
    array and the shape it must have, or the problem with the times (not finite, not strictly increasing)."""
    raw_xy = np.asarray(raw_xy, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    time = np.asarray(time, dtype=np.float64)
    if raw_xy.ndim != 3 or raw_xy.shape[2] != 2:
        raise ValueError(f"raw_xy must have shape (T, K, 2), got {raw_xy.shape}.")
    if confidence.shape != raw_xy.shape[:2]:
        raise ValueError(f"confidence must have shape (T, K) = {raw_xy.shape[:2]}, got {confidence.shape}.")
    if time.shape != raw_xy.shape[:1]:
        raise ValueError(f"time must have shape (T,) = {raw_xy.shape[:1]}, got {time.shape}.")
    if not np.isfinite(time).all():
        raise ValueError("time contains NaN or infinite values; drop those frames before smoothing.")
    if np.any(np.diff(time) <= 0):
        raise ValueError(
            "time must be strictly increasing; sort the frames by presentation time and drop duplicates."
        )
    return raw_xy, confidence, time
