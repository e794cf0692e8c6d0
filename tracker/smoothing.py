"""Filtering and smoothing of whole keypoint recordings.

:func:`filter_keypoints` runs the causal Kalman filter over a recording (the
numbers a live :class:`tracker.kalman.OnlineSmoother` would give);
:func:`smooth_keypoints` adds the Rauch-Tung-Striebel backward pass, so
every estimate also uses the frames after it. Both run all keypoints at once
(:mod:`tracker.fusion`, which also fuses optical flow); a keypoint's track
segments (see :func:`tracker.visibility.track_segments`) are smoothed apart.
"""

from __future__ import annotations

import numpy as np

from ppmtrack.tracker.fusion import fuse_keypoints
from ppmtrack.tracker.params import SmoothingParams


def filter_keypoints(
    raw_xy: np.ndarray,
    confidence: np.ndarray,
    time: np.ndarray,
    params: SmoothingParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Causal (forward-only) Kalman filtering of keypoint trajectories.

    Each estimate uses only the current and earlier frames, exactly as
    :class:`tracker.kalman.OnlineSmoother` fed the frames one by one.

    Parameters
    ----------
    raw_xy : np.ndarray
        (T, K, 2) measured positions in pixels; NaN where there is none.
    confidence : np.ndarray
        (T, K) engine confidence in [0, 1].
    time : np.ndarray
        (T,) frame times in seconds, strictly increasing; gaps are predicted across.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.

    Returns
    -------
    xy : np.ndarray
        (T, K, 2) filtered positions; NaN where the keypoint is lost.
    visible : np.ndarray
        (T, K) bool, True where the measurement was used.
    """
    return _run_keypoint_filters(raw_xy, confidence, time, params, smooth=False)


def smooth_keypoints(
    raw_xy: np.ndarray,
    confidence: np.ndarray,
    time: np.ndarray,
    params: SmoothingParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Offline forward-backward (Rauch-Tung-Striebel) smoothing of keypoint trajectories.

    Each estimate uses the whole track segment it belongs to, before and
    after it, so occlusions shorter than ``params.max_occluded_s`` are
    interpolated between the measurements on either side. Segments separated
    by a lost stretch are smoothed independently; the lost stretch is NaN.

    Parameters
    ----------
    raw_xy : np.ndarray
        (T, K, 2) measured positions in pixels; NaN where there is none.
    confidence : np.ndarray
        (T, K) engine confidence in [0, 1].
    time : np.ndarray
        (T,) frame times in seconds, strictly increasing; gaps are predicted across.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.

    Returns
    -------
    xy : np.ndarray
        (T, K, 2) smoothed positions; NaN where the keypoint is lost.
    visible : np.ndarray
        (T, K) bool, True where the measurement was used.
    """
    return _run_keypoint_filters(raw_xy, confidence, time, params, smooth=True)


def _run_keypoint_filters(
    raw_xy: np.ndarray,
    confidence: np.ndarray,
    time: np.ndarray,
    params: SmoothingParams | None,
    smooth: bool,
) -> tuple[np.ndarray, np.ndarray]:
    return fuse_keypoints(raw_xy, confidence, time, params=params, smooth=smooth)
