"""Parameters of the keypoint filter, its constant-velocity matrices, and the online (causal) smoother.

The state of each keypoint is ``(x, y, vx, vy)`` in pixels and pixels per
second. Between frames it moves at constant velocity, disturbed by white-noise
acceleration; each frame's engine output is a noisy measurement of ``(x, y)``
whose noise grows as the engine's confidence falls, and optical flow (when
given) measures its movement since the previous frame. The filter itself,
vectorised over keypoints, is :class:`tracker.fusion.KeypointFilter`; this
module holds its parameters and the online front end that decides when to
update, when to only predict, and when to give a keypoint up as lost (see
:mod:`tracker.visibility`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppmtrack.tracker.flow import FlowParams, flow_image, propagate_points
from ppmtrack.tracker.fusion import KeypointFilter, frame_measurements


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


class OnlineSmoother:
    """Causal keypoint filter for live streams: one frame in, one estimate out.

    Each keypoint has its own constant-velocity Kalman filter (all run at once,
    :class:`tracker.fusion.KeypointFilter`). A measurement that counts (see
    :func:`tracker.visibility.measured_mask`) updates it; so does the optical
    flow since the previous frame and an anchor, when given. Otherwise the
    keypoint is occluded and the filter only predicts. A keypoint unmeasured
    for more than ``params.max_occluded_s`` seconds is lost and reported as NaN
    until it is measured again, where its filter restarts at the measurement.
    Feeding a recording frame by frame gives the same numbers as
    :func:`tracker.fusion.fuse_keypoints` with ``smooth=False`` and the flow
    recorded in :attr:`last_flow`.

    Parameters
    ----------
    n_keypoints : int
        Number of keypoints K.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.
    flow : FlowParams, optional
        Optical flow between consecutive frames (pass each frame's image to
        :meth:`update`); None: detections only.

    Attributes
    ----------
    last_flow : tuple of np.ndarray
        The last update's flow: (K, 2) displacement since the previous frame
        (NaN where none) and (K,) forward-backward error (inf where none).
    """

    def __init__(self, n_keypoints: int, params: SmoothingParams | None = None, flow: FlowParams | None = None):
        self.n_keypoints = int(n_keypoints)
        self.params = params if params is not None else SmoothingParams()
        self.flow = flow
        self._filter = KeypointFilter(self.n_keypoints, self.params)
        self._last_time: float | None = None
        self._last_image: np.ndarray | None = None
        self.last_flow = (np.full((self.n_keypoints, 2), np.nan), np.full(self.n_keypoints, np.inf))

    def position(self) -> np.ndarray:
        """(K, 2) the current estimates (after the last update), NaN where lost."""
        return self._filter.position()

    def update(
        self, time: float, raw_xy: np.ndarray, confidence: np.ndarray, image: np.ndarray | None = None,
        anchor_xy: np.ndarray | None = None,
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
        image : np.ndarray, optional
            (H, W, 3) RGB uint8 frame, for the optical flow from the previous
            frame (used when the smoother was made with ``flow``; a frame of
            another size than the previous one gets no flow).
        anchor_xy : np.ndarray, optional
            (K, 2) known positions at this frame (NaN where unknown).

        Returns
        -------
        xy : np.ndarray
            (K, 2) filtered positions; NaN where the keypoint is lost or was
            never measured.
        visible : np.ndarray
            (K,) bool, True where a measurement (detection, flow or anchor) was used.
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
        displacement, fb_error = self._measure_flow(image)
        measurements = frame_measurements(raw_xy, confidence, self.params, displacement, fb_error, anchor_xy)
        visible, _ = self._filter.step(time, dt, measurements)
        self._last_time = time
        return self._filter.position(), visible

    def replay(self, time: np.ndarray, raw_xy: np.ndarray, confidence: np.ndarray,
               flow_displacement: np.ndarray | None = None, fb_error: np.ndarray | None = None,
               anchor_xy: np.ndarray | None = None) -> None:
        """Feed frames filtered before, with the flow recorded then (:attr:`last_flow`), no images: the filter
        ends in the state it had after them (how ``track --resume`` continues a run exactly).

        Arrays have a leading frame axis: (n, K, 2) and (n, K); ``time`` (n,) increasing. Call
        :meth:`set_reference_image` with the last of those frames' images before the next :meth:`update`.
        """
        time = np.asarray(time, dtype=np.float64)
        m = frame_measurements(raw_xy, confidence, self.params, flow_displacement, fb_error, anchor_xy)
        for i, t in enumerate(time.tolist()):
            if self._last_time is not None and t <= self._last_time:
                raise ValueError(f"time must increase from frame to frame: got {t} after {self._last_time}")
            self._filter.step(t, 0.0 if self._last_time is None else t - self._last_time, m.frame(i))
            self._last_time = t

    def set_reference_image(self, image: np.ndarray) -> None:
        """The image the next frame's flow starts from (the last frame fed by :meth:`replay`)."""
        if self.flow is not None and image is not None:
            self._last_image = flow_image(image, self.flow)

    def _measure_flow(self, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Flow of the current estimates from the previous frame to ``image``; recorded in ``last_flow``."""
        displacement = np.full((self.n_keypoints, 2), np.nan)
        fb_error = np.full(self.n_keypoints, np.inf)
        if self.flow is not None and image is not None:
            prepared = flow_image(image, self.flow)
            previous = self._last_image
            if previous is not None and previous.shape == prepared.shape:
                start = self._filter.position()
                moved, fb_error = propagate_points(previous, prepared, start, self.flow, image.shape[:2])
                displacement = moved - start
            self._last_image = prepared
        self.last_flow = (displacement, fb_error)
        return displacement, fb_error
