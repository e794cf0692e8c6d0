"""Constant-velocity Kalman filter for one keypoint, and the online (causal) smoother.

The state of each keypoint is ``(x, y, vx, vy)`` in pixels and pixels per
second. Between frames it moves at constant velocity, disturbed by white-noise
acceleration; each frame's engine output is a noisy measurement of ``(x, y)``
whose noise grows as the engine's confidence falls. The filter itself is
filterpy's :class:`filterpy.kalman.KalmanFilter`; this module builds its
matrices for each frame interval and decides when to update, when to only
predict, and when to give the keypoint up as lost (see :mod:`tracker.visibility`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from filterpy.kalman import KalmanFilter

from ppmtrack.tracker.visibility import measured_mask

MEASUREMENT_MATRIX = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])


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
    measurement_noise_px : float, default 2.0
        Standard deviation, in pixels, of a measurement with confidence 1. A
        measurement with confidence ``c`` gets ``measurement_noise_px / c``,
        so a confidence-0.2 measurement counts as 5 times noisier (25 times
        less weight).
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
    """

    min_confidence: float = 0.2
    measurement_noise_px: float = 2.0
    process_noise: float = 500.0
    max_occluded_s: float = 1.0
    initial_speed_px_s: float = 300.0

    def __post_init__(self):
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {self.min_confidence}.")
        for name in ("measurement_noise_px", "process_noise", "max_occluded_s", "initial_speed_px_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}.")


def transition_matrices(dt: np.ndarray | float) -> np.ndarray:
    """Constant-velocity state transition over each frame interval.

    Parameters
    ----------
    dt : np.ndarray or float
        (N,) or scalar frame intervals in seconds.

    Returns
    -------
    np.ndarray
        (N, 4, 4), or (4, 4) for a scalar ``dt``: the matrices ``F`` with
        ``x_next = F @ x`` for the state ``(x, y, vx, vy)``.
    """
    dt = np.asarray(dt, dtype=np.float64)
    transition = np.broadcast_to(np.eye(4), dt.shape + (4, 4)).copy()
    transition[..., 0, 2] = dt
    transition[..., 1, 3] = dt
    return transition


def process_noise_matrices(dt: np.ndarray | float, process_noise: float) -> np.ndarray:
    """Process noise of continuous white-noise acceleration over each interval.

    This is :func:`filterpy.common.Q_continuous_white_noise` (``dim=2``,
    ``block_size=2``, ``order_by_dim=False``) with spectral density
    ``process_noise**2``, computed for many intervals at once.

    Parameters
    ----------
    dt : np.ndarray or float
        (N,) or scalar frame intervals in seconds.
    process_noise : float
        Square root of the acceleration spectral density, px / s^1.5.

    Returns
    -------
    np.ndarray
        (N, 4, 4), or (4, 4) for a scalar ``dt``: the covariance ``Q`` added
        to the state covariance by each prediction.
    """
    dt = np.asarray(dt, dtype=np.float64)
    density = process_noise**2
    noise = np.zeros(dt.shape + (4, 4))
    for position, velocity in ((0, 2), (1, 3)):
        noise[..., position, position] = density * dt**3 / 3.0
        noise[..., position, velocity] = density * dt**2 / 2.0
        noise[..., velocity, position] = density * dt**2 / 2.0
        noise[..., velocity, velocity] = density * dt
    return noise


def measurement_covariances(confidence: np.ndarray | float, params: SmoothingParams) -> np.ndarray:
    """Measurement noise covariance from the engine's confidence.

    A measurement with confidence ``c`` has an isotropic standard deviation of
    ``params.measurement_noise_px / c`` pixels in x and in y.

    Parameters
    ----------
    confidence : np.ndarray or float
        (...) engine confidence in (0, 1] of used measurements.
    params : SmoothingParams
        Supplies ``measurement_noise_px``, the standard deviation at confidence 1.

    Returns
    -------
    np.ndarray
        (..., 2, 2) covariances ``R`` in px².
    """
    noise_px = params.measurement_noise_px / np.asarray(confidence, dtype=np.float64)
    return noise_px[..., None, None] ** 2 * np.eye(2)


def start_keypoint_filter(
    xy: np.ndarray, measurement_covariance: np.ndarray, params: SmoothingParams
) -> KalmanFilter:
    """A filterpy Kalman filter started at one measurement.

    Parameters
    ----------
    xy : np.ndarray
        (2,) measured position in pixels.
    measurement_covariance : np.ndarray
        (2, 2) noise covariance of that measurement in px².
    params : SmoothingParams
        Supplies ``initial_speed_px_s``, the prior uncertainty of the velocity.

    Returns
    -------
    filterpy.kalman.KalmanFilter
        State ``(x, y, 0, 0)``; the position covariance is the measurement's,
        the velocity variance ``initial_speed_px_s²`` per axis.
    """
    keypoint_filter = KalmanFilter(dim_x=4, dim_z=2)
    keypoint_filter.H = MEASUREMENT_MATRIX.copy()
    keypoint_filter.inv = _inverse_2x2
    keypoint_filter.x = np.array([xy[0], xy[1], 0.0, 0.0], dtype=np.float64)
    keypoint_filter.P = np.zeros((4, 4))
    keypoint_filter.P[:2, :2] = measurement_covariance
    keypoint_filter.P[2:, 2:] = np.eye(2) * params.initial_speed_px_s**2
    return keypoint_filter


def step_keypoint_filter(
    keypoint_filter: KalmanFilter,
    transition: np.ndarray,
    process_noise: np.ndarray,
    xy: np.ndarray | None,
    measurement_covariance: np.ndarray,
) -> None:
    """Advance a keypoint filter by one frame: predict, then update if measured.

    Parameters
    ----------
    keypoint_filter : filterpy.kalman.KalmanFilter
        Filter from :func:`start_keypoint_filter`; changed in place.
    transition : np.ndarray
        (4, 4) transition ``F`` over the interval since the previous frame.
    process_noise : np.ndarray
        (4, 4) process noise ``Q`` over that interval.
    xy : np.ndarray or None
        (2,) measured position, or None when the keypoint is occluded (the
        filter only predicts).
    measurement_covariance : np.ndarray
        (2, 2) noise covariance ``R`` of the measurement (ignored without one).
    """
    keypoint_filter.predict(F=transition, Q=process_noise)
    if xy is not None:
        keypoint_filter.update(xy, R=measurement_covariance)


def _inverse_2x2(matrix: np.ndarray) -> np.ndarray:
    """Closed-form inverse of the 2x2 innovation covariance (faster than ``np.linalg.inv``)."""
    determinant = matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0]
    return np.array([[matrix[1, 1], -matrix[0, 1]], [-matrix[1, 0], matrix[0, 0]]]) / determinant


class OnlineSmoother:
    """Causal keypoint filter for live streams: one frame in, one estimate out.

    Each keypoint has its own constant-velocity Kalman filter. A measurement
    that counts (see :func:`tracker.visibility.measured_mask`) updates it;
    otherwise the keypoint is occluded and the filter only predicts. A
    keypoint unmeasured for more than ``params.max_occluded_s`` seconds is
    lost and reported as NaN until it is measured again, where its filter
    restarts at the measurement. Feeding a recording frame by frame gives the
    same numbers as :func:`tracker.smoothing.filter_keypoints`.

    Parameters
    ----------
    n_keypoints : int
        Number of keypoints K.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.
    """

    def __init__(self, n_keypoints: int, params: SmoothingParams | None = None):
        self.n_keypoints = int(n_keypoints)
        self.params = params if params is not None else SmoothingParams()
        self._filters: list[KalmanFilter | None] = [None] * self.n_keypoints
        self._last_measured_time = np.full(self.n_keypoints, -np.inf)
        self._last_time: float | None = None

    def update(
        self, time: float, raw_xy: np.ndarray, confidence: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Take one frame's measurements and return the filtered positions.

        Parameters
        ----------
        time : float
            Frame time in seconds; must increase from call to call (gaps are fine).
        raw_xy : np.ndarray
            (K, 2) measured positions in pixels.
        confidence : np.ndarray
            (K,) engine confidence in [0, 1].

        Returns
        -------
        xy : np.ndarray
            (K, 2) filtered positions; NaN where the keypoint is lost or was
            never measured.
        visible : np.ndarray
            (K,) bool, True where this frame's measurement was used.
        """
        time = float(time)
        raw_xy = np.asarray(raw_xy, dtype=np.float64).reshape(self.n_keypoints, 2)
        confidence = np.asarray(confidence, dtype=np.float64).reshape(self.n_keypoints)
        if not np.isfinite(time):
            raise ValueError(f"time must be finite, got {time}.")
        if self._last_time is not None and time <= self._last_time:
            raise ValueError(
                f"time must increase from frame to frame: got {time} after {self._last_time}; "
                "feed frames in presentation order and drop duplicates."
            )
        dt = 0.0 if self._last_time is None else time - self._last_time
        transition = transition_matrices(dt)
        process_noise = process_noise_matrices(dt, self.params.process_noise)
        visible = measured_mask(raw_xy, confidence, self.params.min_confidence)
        covariance = measurement_covariances(np.where(visible, confidence, 1.0), self.params)
        xy = np.full((self.n_keypoints, 2), np.nan)
        for k in range(self.n_keypoints):
            keypoint_filter = self._filters[k]
            if time - self._last_measured_time[k] > self.params.max_occluded_s:
                keypoint_filter = None
            if visible[k] and keypoint_filter is None:
                keypoint_filter = start_keypoint_filter(raw_xy[k], covariance[k], self.params)
            elif keypoint_filter is not None:
                measurement = raw_xy[k] if visible[k] else None
                step_keypoint_filter(keypoint_filter, transition, process_noise, measurement, covariance[k])
            if visible[k]:
                self._last_measured_time[k] = time
            if keypoint_filter is not None:
                xy[k] = keypoint_filter.x[:2]
            self._filters[k] = keypoint_filter
        self._last_time = time
        return xy, visible
