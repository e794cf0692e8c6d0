"""The detector's self-check in every file run: wires :mod:`tracker.selfcheck` to a run's tracks and summary.

After the forward–backward pass, each keypoint's raw detections are compared with the flow-fused track where
the flow passed its forward–backward check, against chance (:func:`tracker.selfcheck.check_detector`). The
summary's ``detector`` holds the agreement and chance per keypoint, the stretches of frames where a keypoint's
detections agree no better than chance (one log line each; the positions there get confidence at most
`LOW_CONFIDENCE` in the CSV and formats, so that they are not presented as good) and the outlier frames (where
detection and motion disagree most, spread over the video) — the frames to label next
(``ppmtrack label VIDEO --frames-from STEM.summary.json``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ppmtrack.tracker.selfcheck import check_detector, outlier_frames
from ppmtrack.tracker.track import Tracks

logger = logging.getLogger("ppmtrack")

LOW_CONFIDENCE = 0.05
MIN_RADIUS_PX = 5.0  # below this, sub-pixel jitter of a good detector would count as disagreement
N_OUTLIER_FRAMES = 10


def self_check(tracks: Tracks, flow_displacement: list, flow_error: list, params, fps: float | None
               ) -> tuple[Tracks, dict]:
    """(tracks with low confidence where the detections are no better than chance, the summary's ``detector``)."""
    if not len(flow_error) or len(flow_error) != len(tracks.frame) or len(flow_displacement) != len(flow_error):
        return tracks, {"skipped": "no optical flow in this run (--flow off, or a stream): nothing to check the "
                                   "detections against"}
    k = len(tracks.names)
    fb = np.asarray(flow_error, dtype=np.float64).reshape(-1, k)
    flow_ok = np.isfinite(fb) & (fb <= params.max_flow_error_px)
    noise = np.broadcast_to(np.asarray(params.measurement_noise_px, dtype=np.float64), (k,))
    radius = np.maximum(noise, MIN_RADIUS_PX)
    window = max(30, int(round(2 * (fps or 30))))
    displacement = np.asarray(flow_displacement, dtype=np.float64).reshape(-1, k, 2)
    checks = check_detector(tracks.names, tracks.frame, tracks.raw_xy, displacement, flow_ok, tracks.xy, radius,
                            window=window)
    confidence = tracks.confidence.copy()
    row_of = {int(f): i for i, f in enumerate(tracks.frame)}
    for k_index, check in enumerate(checks):
        if check.verdict == "no better than chance" and not check.bad_stretches:  # no window alone was decided
            check.bad_stretches = [(int(tracks.frame[0]), int(tracks.frame[-1]))]
        for first, last in check.bad_stretches:
            logger.warning("%s: detections agree with the motion no better than chance in frames %d–%d: the engine "
                           "does not find it in this video; ppmtrack review shows these frames", check.name, first,
                           last)
            rows = [row_of[f] for f in range(first, last + 1) if f in row_of]
            confidence[rows, k_index] = np.minimum(confidence[rows, k_index], LOW_CONFIDENCE)
    report = {
        "what": "per keypoint: fraction of frames with a good optical flow whose raw detection lies within "
                "radius_px of the previous frame's detection carried along by the flow (agreement), and the same "
                "for detections displaced in time (chance)",
        "window_frames": window,
        "keypoints": {c.name: c.to_dict() for c in checks},
        "flagged": [c.name for c in checks if c.verdict == "no better than chance" or c.bad_stretches],
        "outlier_frames": outlier_frames(tracks.frame, tracks.raw_xy, tracks.xy, radius, N_OUTLIER_FRAMES),
    }
    return dataclasses.replace(tracks, confidence=confidence), report
