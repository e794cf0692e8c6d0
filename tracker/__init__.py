"""Keypoint track smoothing: a constant-velocity Kalman filter per keypoint, online or offline (RTS)."""

from __future__ import annotations

import dataclasses

from ppmtrack.tracker.kalman import OnlineSmoother, SmoothingParams
from ppmtrack.tracker.smoothing import filter_keypoints, smooth_keypoints
from ppmtrack.tracker.track import Tracks

__all__ = [
    "OnlineSmoother",
    "SmoothingParams",
    "Tracks",
    "filter_keypoints",
    "smooth_keypoints",
    "smooth_tracks",
]


def smooth_tracks(tracks: Tracks, params: SmoothingParams | None = None, causal: bool = False) -> Tracks:
    """Fill a track's smoothed positions and visibility from its raw measurements.

    Parameters
    ----------
    tracks : Tracks
        Tracks with ``raw_xy``, ``confidence`` and ``time`` set; not modified.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.
    causal : bool, default False
        False: offline Rauch-Tung-Striebel smoothing (:func:`smooth_keypoints`),
        best for recorded files. True: the forward filter only
        (:func:`filter_keypoints`), the numbers a live stream would give.

    Returns
    -------
    Tracks
        A copy of ``tracks`` whose ``xy`` (NaN where lost) and ``visible``
        come from the filter.
    """
    run = filter_keypoints if causal else smooth_keypoints
    xy, visible = run(tracks.raw_xy, tracks.confidence, tracks.time, params)
    return dataclasses.replace(tracks, xy=xy, visible=visible)
