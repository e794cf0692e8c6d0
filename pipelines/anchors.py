"""Support frames as anchors: labelled frames that lie in the video being tracked pin the tracks there.

(Which video frame a support frame is — from its labels, its file name or its pixels — is
:mod:`pipelines.anchor_discovery`; this module holds the records and the thumbnail check.)

``ppmtrack adapt`` records, in the engine file's info, where each support frame came from (video file name and
frame index), its labelled keypoints and a 16×16 grey thumbnail. When ``ppmtrack track`` runs on a video of
that name, those frames' labels enter the keypoint filter as near-exact positions (anchors,
:mod:`tracker.fusion`), from which the optical flow starts — if the frame's pixels match the thumbnail (so a
different video that happens to share the name is not anchored).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger("ppmtrack")

THUMBNAIL_SIDE = 16
MAX_THUMBNAIL_DIFFERENCE = 8.0  # mean absolute grey-level difference (0-255) that still counts as the same frame


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(16, 16) uint8 grey thumbnail of an RGB frame (area-averaged), for recognising the frame later."""
    grey = cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)


def anchors_for_source(engine_info: dict, source_name: str, n_keypoints: int) -> dict[int, dict]:
    """The support frames recorded in an engine that belong to a video named ``source_name``.

    Returns
    -------
    dict
        frame index → ``{"xy": (K, 2) array (NaN where not labelled), "thumbnail": (16, 16) uint8}``.
    """
    out = {}
    for record in engine_info.get("support_frames", []):
        if (record.get("video") is None or record.get("frame") is None or Path(record["video"]).stem
                != Path(source_name).stem or len(record.get("points", [])) != n_keypoints):
            continue
        xy = np.array([[np.nan, np.nan] if p is None else p for p in record["points"]], dtype=np.float64)
        out[int(record["frame"])] = {"xy": xy, "thumbnail": np.array(record["thumbnail"], dtype=np.uint8)
                                     .reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE)}
    return out


def matching_anchor(anchors: dict[int, dict], frame_index: int, image: np.ndarray) -> np.ndarray | None:
    """The (K, 2) anchor of this frame if there is one and the frame looks like the support frame, else None."""
    anchor = anchors.get(int(frame_index))
    if anchor is None:
        return None
    difference = float(np.abs(thumbnail(image).astype(np.float64) - anchor["thumbnail"]).mean())
    if difference > MAX_THUMBNAIL_DIFFERENCE:
        logger.warning("frame %d is not the support frame of the same name and index (thumbnails differ by %.0f "
                       "grey levels); it is not used as an anchor", frame_index, difference)
        return None
    return anchor["xy"]
