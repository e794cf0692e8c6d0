"""Which keypoint measurements count, and when an unmeasured keypoint is lost.

This module is the one place for the occlusion rule shared by the online filter
(:class:`tracker.kalman.OnlineSmoother`) and the offline functions in
:mod:`tracker.smoothing`:

- a measurement is *used* (the keypoint is **visible**) when its confidence is
  at least ``min_confidence`` and greater than zero, and both the confidence and
  the position are finite;
- an unused measurement means the keypoint is **occluded**: the filter predicts
  through it without inventing a measurement;
- a keypoint that has not been measured for longer than ``max_occluded_s``
  seconds, or has never been measured, is **lost**: its position is NaN until
  it is measured again, where a new track segment starts.
"""

from __future__ import annotations

import numpy as np


def measured_mask(raw_xy: np.ndarray, confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """Mark the measurements that the filter uses.

    Parameters
    ----------
    raw_xy : np.ndarray
        (..., 2) measured positions in pixels; NaN where the engine gave none.
    confidence : np.ndarray
        (...) engine confidence in [0, 1]; NaN counts as no measurement.
    min_confidence : float
        Measurements with a confidence below this value are treated as missing
        (the keypoint is occluded). A confidence of exactly zero never counts,
        even when ``min_confidence`` is zero.

    Returns
    -------
    np.ndarray
        (...) bool, True where the measurement is used (the keypoint is visible).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    raw_xy = np.asarray(raw_xy, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        confident = (confidence >= min_confidence) & (confidence > 0)
    return confident & np.isfinite(confidence) & np.isfinite(raw_xy).all(axis=-1)


def time_since_measured(time: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Seconds since each keypoint was last measured, at every frame.

    Parameters
    ----------
    time : np.ndarray
        (T,) frame times in seconds, increasing.
    measured : np.ndarray
        (T, K) bool, True where the measurement is used (see :func:`measured_mask`).

    Returns
    -------
    np.ndarray
        (T, K) seconds since the last used measurement at or before each frame:
        0 at measured frames, ``inf`` before a keypoint's first measurement.
    """
    time = np.asarray(time, dtype=np.float64)
    measured = np.asarray(measured, dtype=bool)
    frame_index = np.arange(len(time))[:, None]
    last_measured = np.maximum.accumulate(np.where(measured, frame_index, -1), axis=0)
    last_time = np.where(last_measured >= 0, time[np.maximum(last_measured, 0)], -np.inf)
    return time[:, None] - last_time


def lost_mask(time: np.ndarray, measured: np.ndarray, max_occluded_s: float) -> np.ndarray:
    """Mark the frames where a keypoint is lost.

    Parameters
    ----------
    time : np.ndarray
        (T,) frame times in seconds, increasing.
    measured : np.ndarray
        (T, K) bool, True where the measurement is used (see :func:`measured_mask`).
    max_occluded_s : float
        A keypoint unmeasured for longer than this many seconds is lost.

    Returns
    -------
    np.ndarray
        (T, K) bool, True where the keypoint is lost: never measured yet, or
        last measured more than ``max_occluded_s`` seconds earlier. Its
        position is reported as NaN there.
    """
    return time_since_measured(time, measured) > max_occluded_s


def track_segments(time: np.ndarray, measured: np.ndarray, max_occluded_s: float) -> list[tuple[int, int]]:
    """Split one keypoint's frames into independently filtered segments.

    A segment starts at a used measurement that follows no earlier measurement
    within ``max_occluded_s`` seconds (the filter is initialised there) and
    runs until the keypoint is lost or the next segment starts.

    Parameters
    ----------
    time : np.ndarray
        (T,) frame times in seconds, increasing.
    measured : np.ndarray
        (T,) bool for one keypoint, True where the measurement is used.
    max_occluded_s : float
        A keypoint unmeasured for longer than this many seconds is lost.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` frame index ranges (stop exclusive), in order and
        disjoint. Frames outside every segment are exactly those that
        :func:`lost_mask` marks lost.
    """
    time = np.asarray(time, dtype=np.float64)
    measured = np.asarray(measured, dtype=bool)
    lost = lost_mask(time, measured[:, None], max_occluded_s)[:, 0]
    measured_index = np.flatnonzero(measured)
    gap_before = np.diff(time[measured_index], prepend=-np.inf)
    starts = measured_index[gap_before > max_occluded_s]
    segments = []
    for segment_number, start in enumerate(starts):
        end = starts[segment_number + 1] if segment_number + 1 < len(starts) else len(time)
        lost_after = np.flatnonzero(lost[start:end])
        stop = start + lost_after[0] if len(lost_after) else end
        segments.append((int(start), int(stop)))
    return segments
