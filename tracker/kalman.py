"""The online (causal) smoother, and :func:`measure_flow`, which runs it over a recording to measure the flow.

The state of each keypoint is ``(x, y, vx, vy)`` in pixels and pixels per
second. Between frames it moves at constant velocity, disturbed by white-noise
acceleration; each frame's engine output is a noisy measurement of ``(x, y)``
whose noise grows as the engine's confidence falls, and optical flow (when
given) measures its movement since the previous frame. The filter itself,
vectorised over keypoints, is :class:`tracker.fusion.KeypointFilter`; this
module holds the online front end that decides when to
update, when to only predict, and when to give a keypoint up as lost (see
:mod:`tracker.visibility`).
"""

from __future__ import annotations

import numpy as np

from ppmtrack.tracker.flow import FlowParams, flow_image, propagate_points
from ppmtrack.tracker.fusion import Anchors, FlowTrack, KeypointFilter, frame_measurements
from ppmtrack.tracker.params import SmoothingParams

__all__ = ["OnlineSmoother", "SmoothingParams", "measure_flow"]


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


def measure_flow(frames, raw_xy: np.ndarray, confidence: np.ndarray, time: np.ndarray, anchors: Anchors | None = None,
                 params=None, flow_params=None) -> FlowTrack:
    """Run the causal flow-fused filter over a recording and return the flow it measured.

    The flow of frame t is measured at the causal estimate of frame t-1, exactly as a live run does;
    :func:`tracker.fusion.fuse_keypoints` then reuses it (e.g. for the RTS pass).

    Parameters
    ----------
    frames : sequence of np.ndarray
        (T) RGB uint8 frames.
    raw_xy, confidence, time, anchors, params
        As for :func:`tracker.fusion.fuse_keypoints`.
    flow_params : FlowParams, optional
        Optical-flow settings; the defaults when omitted.
    """
    smoother = OnlineSmoother(raw_xy.shape[1], params, flow=flow_params or FlowParams())
    anchor_xy = None if anchors is None else anchors.per_frame(*raw_xy.shape[:2])
    displacement = np.full(raw_xy.shape, np.nan)
    fb_error = np.full(raw_xy.shape[:2], np.inf)
    for t in range(len(time)):
        smoother.update(time[t], raw_xy[t], confidence[t], frames[t], None if anchor_xy is None else anchor_xy[t])
        displacement[t], fb_error[t] = smoother.last_flow
    return FlowTrack(displacement, fb_error)
