"""The keypoint Kalman filter, vectorised over keypoints: detections, optical flow and anchors fused.

Each keypoint's state per image axis is ``(position, velocity, previous position)``: constant velocity
disturbed by white-noise acceleration, plus a copy of the position one frame earlier (a "cloned" state), so
that optical flow — a *relative* measurement, ``position(t) - position(t-1)`` — enters the filter exactly.
Three kinds of measurement update it:

- a **detection** (the engine's keypoint): an absolute position whose noise is
  ``measurement_noise_px / confidence`` (one value, or one per keypoint); used when its confidence is at least
  ``min_confidence``. Where the flow was used in the same frame, a detection far from the filter's prediction
  (squared Mahalanobis distance ``d²`` above ``detection_gate``) counts as a likely outlier: its innovation
  variance is scaled by ``(d² / detection_gate)²`` (a redescending robust update: the pull of a detection falls
  with its distance beyond the gate), so wild detections barely move the track while detections that keep
  disagreeing still pull a drifting flow track back. Beside the flow, a detection's variance is also
  multiplied by ``detection_correlation_s / dt``: an engine's error persists from frame to frame, so its
  detections count as one independent measurement per that time, not one per frame;
- **flow** (:mod:`tracker.flow`): the displacement since the previous frame, with noise
  ``flow_noise_px + forward-backward error``; used when that error is at most ``max_flow_error_px``;
- an **anchor**: a known position (a support frame that lies in the tracked video), noise ``anchor_noise_px``,
  never gated.

When neither flow nor detection is usable the keypoint is **occluded** (not visible): the filter only
predicts. A keypoint without any used measurement for more than ``max_occluded_s`` is **lost** (NaN) until a
detection or anchor restarts it (see :mod:`tracker.visibility`).

The x and y axes share one covariance (every noise is isotropic), so the filter keeps one 3×3 covariance per
keypoint and runs all keypoints at once; the Rauch-Tung-Striebel backward pass likewise. Without flow and
anchors the positions equal those of a filterpy constant-velocity filter per keypoint (the tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppmtrack.tracker.params import SmoothingParams, check_keypoint_arrays
from ppmtrack.tracker.visibility import measured_mask


@dataclass
class FlowTrack:
    """Optical-flow measurements of a recording, one per frame and keypoint.

    Parameters
    ----------
    displacement : np.ndarray
        (T, K, 2) movement in pixels from frame t-1 to frame t; NaN where there is none (frame 0, lost).
    fb_error : np.ndarray
        (T, K) forward-backward error in pixels; ``inf`` where the flow failed or was not measured.
    """

    displacement: np.ndarray
    fb_error: np.ndarray


@dataclass
class Anchors:
    """Known keypoint positions on some frames of the recording (support frames that lie in it).

    Parameters
    ----------
    frame : np.ndarray
        (A,) row indices into the recording (not video frame numbers).
    xy : np.ndarray
        (A, K, 2) positions in pixels; NaN where a keypoint is not known.
    """

    frame: np.ndarray
    xy: np.ndarray

    def per_frame(self, n_frames: int, n_keypoints: int) -> np.ndarray:
        """(T, K, 2) anchor positions, NaN where there is none."""
        out = np.full((n_frames, n_keypoints, 2), np.nan)
        frame = np.asarray(self.frame, dtype=np.int64)
        inside = (frame >= 0) & (frame < n_frames)
        out[frame[inside]] = np.asarray(self.xy, dtype=np.float64).reshape(len(frame), n_keypoints, 2)[inside]
        return out


@dataclass
class FrameMeasurements:
    """Measurements for :class:`KeypointFilter`: (K, ...) for one frame, (T, K, ...) for a recording.

    ``position_xy``/``position_var`` hold the anchor where there is one (``anchored``), else the detection;
    a variance of ``inf`` means "not used".
    """

    position_xy: np.ndarray  # (K, 2)
    position_var: np.ndarray  # (K,) px²
    anchored: np.ndarray  # (K,) bool
    flow_displacement: np.ndarray  # (K, 2)
    flow_var: np.ndarray  # (K,) px²

    def frame(self, t: int) -> FrameMeasurements:
        """Row ``t`` of a recording's measurements."""
        return FrameMeasurements(self.position_xy[t], self.position_var[t], self.anchored[t],
                                 self.flow_displacement[t], self.flow_var[t])


def frame_measurements(raw_xy: np.ndarray, confidence: np.ndarray, params, flow_displacement=None,
                       fb_error=None, anchor_xy=None) -> FrameMeasurements:
    """Turn detections, flow and anchors of one frame (or of many: leading axes) into filter inputs.

    Parameters
    ----------
    raw_xy, confidence : np.ndarray
        (..., K, 2) detections and (..., K) confidences.
    params : SmoothingParams
        Noise levels and thresholds.
    flow_displacement, fb_error : np.ndarray, optional
        (..., K, 2) flow displacements and (..., K) forward-backward errors.
    anchor_xy : np.ndarray, optional
        (..., K, 2) known positions, NaN where none.
    """
    raw_xy = np.asarray(raw_xy, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    used = measured_mask(raw_xy, confidence, params.min_confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        detection_var = np.where(used, (params.detection_noise(confidence.shape[-1]) / confidence) ** 2, np.inf)
    if flow_displacement is None:
        flow_displacement = np.full(raw_xy.shape, np.nan)
        flow_var = np.full(confidence.shape, np.inf)
    else:
        flow_displacement = np.asarray(flow_displacement, dtype=np.float64)
        fb_error = np.asarray(fb_error, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(flow_displacement).all(-1) & (fb_error <= params.max_flow_error_px)
        flow_var = np.where(ok, (params.flow_noise_px + np.where(ok, fb_error, 0.0)) ** 2, np.inf)
    if anchor_xy is None:
        return FrameMeasurements(raw_xy, detection_var, np.zeros(confidence.shape, dtype=bool), flow_displacement,
                                 flow_var)
    anchor_xy = np.asarray(anchor_xy, dtype=np.float64)
    anchored = np.isfinite(anchor_xy).all(axis=-1)
    return FrameMeasurements(np.where(anchored[..., None], anchor_xy, raw_xy),
                             np.where(anchored, params.anchor_noise_px ** 2, detection_var), anchored,
                             flow_displacement, flow_var)


# The covariance of one axis's state (position, velocity, previous position) is kept as its 6 distinct
# entries, in this order, for all keypoints at once: (6, K).
_ROW = np.array([0, 0, 0, 1, 1, 2])
_COL = np.array([0, 1, 2, 1, 2, 2])
# P hᵀ as a linear map of the 6 entries for the flow row h = (1, 0, -1) (for the detection row h = (1, 0, 0)
# it is the first 3 entries).
_FLOW_PH = np.array([[1, 0, -1, 0, 0, 0], [0, 1, 0, 0, -1, 0], [0, 0, 1, 0, 0, -1]], dtype=np.float64)


class KeypointFilter:
    """The causal filter for K keypoints: one :meth:`step` per frame.

    Parameters
    ----------
    n_keypoints : int
        Number of keypoints K.
    params : SmoothingParams
        Filter parameters.

    Attributes
    ----------
    mean : np.ndarray
        (3, K, 2): position, velocity and previous position of each keypoint, per axis (x, y).
    cov : np.ndarray
        (6, K) the distinct entries of their 3×3 covariance (the same for both axes), in the order
        (pos·pos, pos·vel, pos·prev, vel·vel, vel·prev, prev·prev).
    active : np.ndarray
        (K,) bool, False where the keypoint is lost or was never measured.
    """

    def __init__(self, n_keypoints: int, params):
        self.params = params
        self.mean = np.zeros((3, n_keypoints, 2))
        self.cov = np.zeros((6, n_keypoints))
        self.active = np.zeros(n_keypoints, dtype=bool)
        self.last_used = np.full(n_keypoints, -np.inf)
        self._predict_cache: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def position(self) -> np.ndarray:
        """(K, 2) current positions, NaN where lost."""
        return np.where(self.active[:, None], self.mean[0], np.nan)

    def step(self, time: float, dt: float, m: FrameMeasurements) -> tuple[np.ndarray, np.ndarray]:
        """Advance by one frame: predict over ``dt``, then use the frame's measurements (:func:`frame_measurements`).

        Returns
        -------
        visible : np.ndarray
            (K,) bool: a detection, the flow or an anchor was used.
        started : np.ndarray
            (K,) bool: the keypoint's filter (re)started at this frame (no prediction into it).
        """
        p = self.params
        active = self.active
        active &= (time - self.last_used) <= p.max_occluded_s
        if dt > 0:
            self._predict(dt)
        flow_var = np.where(active, m.flow_var, np.inf)
        flow_used = flow_var < np.inf
        any_flow = flow_used.any()
        if any_flow:
            self._update(True, self.mean[0] - self.mean[2], m.flow_displacement, flow_var, flow_used)
        z, var = m.position_xy, m.position_var
        used = var < np.inf
        if any_flow and p.detection_correlation_s > dt > 0:
            # beside the flow, a detection's error persists over detection_correlation_s: one independent
            # detection per that time, not per frame
            var = np.where(flow_used & ~m.anchored, var * (p.detection_correlation_s / dt), var)
        if any_flow:
            gate = flow_used & used & ~m.anchored
            if gate.any():
                with np.errstate(invalid="ignore"):
                    distance = ((z - self.mean[0]) ** 2).sum(axis=1) / (self.cov[0] + var)
                    far = gate & (distance > p.detection_gate)
                    inflated = (self.cov[0] + var) * (distance / p.detection_gate) ** 2 - self.cov[0]
                var = np.where(far, inflated, var)
        update = used & active
        if update.any():
            self._update(False, self.mean[0], z, np.where(update, var, np.inf), update)
        started = used & ~active
        if started.any():
            self._start(z, var, started, p.initial_speed_px_s)
        visible = used | flow_used
        self.last_used[visible] = time
        return visible, started

    def _predict(self, dt: float) -> None:
        cached = self._predict_cache.get(dt)
        if cached is None:
            transition, noise = transition_3(dt, self.params.process_noise)
            cov_map = np.zeros((6, 6))  # the 6 entries of F P Fᵀ as a linear map of the 6 entries of P
            for e, (i, j) in enumerate(zip(_ROW, _COL, strict=True)):
                for f, (a, b) in enumerate(zip(_ROW, _COL, strict=True)):
                    cov_map[e, f] = transition[i, a] * transition[j, b]
                    if a != b:
                        cov_map[e, f] += transition[i, b] * transition[j, a]
            cached = (cov_map, noise[_ROW, _COL][:, None])
            if len(self._predict_cache) < 64:
                self._predict_cache[dt] = cached
        cov_map, noise = cached
        mean = self.mean
        mean[2] = mean[0]
        mean[0] += dt * mean[1]
        self.cov = cov_map @ self.cov + noise

    def _update(self, flow: bool, predicted: np.ndarray, z: np.ndarray, var: np.ndarray, used: np.ndarray) -> None:
        """Scalar-per-axis Kalman update (flow row (1, 0, -1) or detection row (1, 0, 0)); ``var`` is inf
        where a keypoint takes no measurement."""
        cov = self.cov
        if flow:
            ph = _FLOW_PH @ cov  # (3, K): P hᵀ
            s = ph[0] - ph[2] + var
        else:
            ph = cov[:3]
            s = ph[0] + var
        gain = ph / s  # zero where var is inf
        innovation = np.where(used[:, None], z - predicted, 0.0)  # (K, 2)
        self.mean += gain[:, :, None] * innovation
        self.cov = cov - gain[_ROW] * ph[_COL]

    def _start(self, z: np.ndarray, var: np.ndarray, where: np.ndarray, speed: float) -> None:
        self.mean[0, where] = z[where]
        self.mean[1, where] = 0.0
        self.mean[2, where] = z[where]
        v = var[where]
        self.cov[:, where] = 0.0
        for e in (0, 2, 5):  # pos·pos, pos·prev, prev·prev
            self.cov[e, where] = v
        self.cov[3, where] = speed ** 2
        self.active |= where


def transition_3(dt: float, process_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Transition and process noise of one axis's (position, velocity, previous position) over ``dt``.

    The position/velocity block is the constant-velocity transition and the process noise of continuous white-noise
    acceleration with spectral density ``process_noise**2`` (filterpy's ``Q_continuous_white_noise``) for one
    axis; the previous position becomes the position.
    """
    transition = np.array([[1.0, dt, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    q = process_noise ** 2
    noise = np.array([[q * dt ** 3 / 3.0, q * dt ** 2 / 2.0, 0.0], [q * dt ** 2 / 2.0, q * dt, 0.0],
                      [0.0, 0.0, 0.0]])
    return transition, noise


def run_filter(measurements: FrameMeasurements, time: np.ndarray, params,
               smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Filter (and optionally RTS-smooth) a whole recording; arrays in ``measurements`` are (T, K, ...).

    Returns
    -------
    xy : np.ndarray
        (T, K, 2) positions, NaN where lost.
    visible : np.ndarray
        (T, K) bool.
    """
    n_frames, n_keypoints = measurements.position_var.shape
    kf = KeypointFilter(n_keypoints, params)
    means = np.empty((n_frames, 3, n_keypoints, 2))
    covs = np.empty((n_frames, 6, n_keypoints)) if smooth else None
    active = np.zeros((n_frames, n_keypoints), dtype=bool)
    started = np.zeros((n_frames, n_keypoints), dtype=bool)
    visible = np.zeros((n_frames, n_keypoints), dtype=bool)
    dts = np.diff(time, prepend=time[:1])
    for t in range(n_frames):
        visible[t], started[t] = kf.step(float(time[t]), float(dts[t]), measurements.frame(t))
        means[t] = kf.mean
        active[t] = kf.active
        if smooth:
            covs[t] = kf.cov
    if smooth:
        _rts_backward(means, covs, active, started, dts, params.process_noise)
    xy = np.where(active[..., None], means[:, 0], np.nan)
    return xy, visible


RTS_CHUNK = 2048


def _rts_backward(means: np.ndarray, covs: np.ndarray, active: np.ndarray, started: np.ndarray,
                  dts: np.ndarray, process_noise: float) -> None:
    """Rauch-Tung-Striebel pass in place on the filtered means (T, 3, K, 2).

    The gains depend on the covariances only, so they are computed for a chunk of frames at once; the
    recursion over the means is then one small batched product per frame. A keypoint's segments end where
    it is lost or restarts: no smoothing across them.
    """
    n_frames = len(means)
    for stop in range(n_frames - 1, 0, -RTS_CHUNK):
        start = max(0, stop - RTS_CHUNK)
        link = active[start:stop] & active[start + 1:stop + 1] & ~started[start + 1:stop + 1]
        gains = _rts_gains(covs[start:stop], dts[start + 1:stop + 1], process_noise, link)  # (n, K, 3, 3)
        for t in range(stop - 1, start - 1, -1):
            filtered, later = means[t], means[t + 1]
            residual = later.copy()  # the smoothed state at t+1 minus its prediction from the filtered one at t
            residual[0] -= filtered[0] + dts[t + 1] * filtered[1]
            residual[1] -= filtered[1]
            residual[2] -= filtered[0]
            filtered += np.matmul(gains[t - start], residual.transpose(1, 0, 2)).transpose(1, 0, 2)


def _rts_gains(covs: np.ndarray, dts: np.ndarray, process_noise: float, link: np.ndarray) -> np.ndarray:
    """(n, K, 3, 3) smoother gains P_f Fᵀ P_pred⁻¹ for filtered covariances (n, 6, K) and intervals (n,);
    zero where ``link`` (n, K) is False."""
    full = np.empty(covs.shape[:1] + covs.shape[2:] + (3, 3))
    for e, (i, j) in enumerate(zip(_ROW, _COL, strict=True)):
        full[..., i, j] = covs[:, e]
        full[..., j, i] = covs[:, e]
    full[~link] = np.eye(3)
    transition = np.broadcast_to(np.eye(3), dts.shape + (3, 3)).copy()
    transition[:, 0, 1] = dts
    transition[:, 2] = [1.0, 0.0, 0.0]
    q = process_noise ** 2
    noise = np.zeros(dts.shape + (3, 3))
    noise[:, 0, 0] = q * dts ** 3 / 3.0
    noise[:, 0, 1] = noise[:, 1, 0] = q * dts ** 2 / 2.0
    noise[:, 1, 1] = q * dts
    cross = full @ transition[:, None].swapaxes(-1, -2)  # P_f Fᵀ
    predicted = transition[:, None] @ cross + noise[:, None]
    gains = np.linalg.solve(predicted, cross.swapaxes(-1, -2)).swapaxes(-1, -2)
    gains[~link] = 0.0
    return gains


def fuse_keypoints(raw_xy: np.ndarray, confidence: np.ndarray, time: np.ndarray, flow: FlowTrack | None = None,
                   anchors: Anchors | None = None, params=None, smooth: bool = True):
    """Keypoint trajectories from detections, optical flow and anchors: causal filter or RTS smoother.

    Parameters
    ----------
    raw_xy : np.ndarray
        (T, K, 2) detections in pixels; NaN where there is none.
    confidence : np.ndarray
        (T, K) engine confidence in [0, 1].
    time : np.ndarray
        (T,) frame times in seconds, strictly increasing.
    flow : FlowTrack, optional
        Optical flow between consecutive frames (from :func:`tracker.kalman.measure_flow`).
    anchors : Anchors, optional
        Known positions on some frames.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.
    smooth : bool, default True
        True: forward filter + RTS backward pass (recorded files); False: the forward filter only (what a
        live stream gets).

    Returns
    -------
    xy : np.ndarray
        (T, K, 2) positions; NaN where the keypoint is lost.
    visible : np.ndarray
        (T, K) bool: a detection, the flow or an anchor was used at that frame.
    """
    params = params if params is not None else SmoothingParams()
    raw_xy, confidence, time = check_keypoint_arrays(raw_xy, confidence, time)
    anchor_xy = None if anchors is None else anchors.per_frame(*raw_xy.shape[:2])
    m = frame_measurements(raw_xy, confidence, params,
                           None if flow is None else flow.displacement, None if flow is None else flow.fb_error,
                           anchor_xy)
    return run_filter(m, time, params, smooth)
