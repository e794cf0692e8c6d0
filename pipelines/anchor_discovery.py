"""Which frame of a video is each support frame, whatever format it came in.

A support frame anchors the tracks only when ``track`` knows which frame of the tracked video it is. Three ways
to know, tried in this order:

1. **The labels say so**: a ppmtrack annotation or SLEAP frame names its video and frame index.
2. **The file name says so**: DeepLabCut extracts frame N of ``<video>.mp4`` as
   ``labeled-data/<video>/imgNNNN.png`` (other tools name images ``frame_000123.jpg`` under a folder named
   after the video); the folder is the video's stem, the number ending the name its frame index.
3. **The pixels say so**: a support image identical or nearly identical (after re-encoding) to a decoded frame
   of the tracked video is that frame. ``adapt`` stores a small grey fingerprint of the labelled animal's
   surroundings (a crop around its keypoints, `FINGERPRINT_SIDE` px square); ``track`` compares every frame's
   crop at the same place and takes the closest frame if it is within `MAX_FINGERPRINT_DIFFERENCE` grey
   levels. Comparing the animal's surroundings, not the whole image, tells a frame from its neighbours (where
   only the animal moved) and from another session of the same arena. Found this way, an anchor pins the
   final (forward–backward) tracks of a file, not the causal positions of a live stream.

The run's summary lists, for every support frame, where it was anchored and how, or why not (``anchors``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np

from ppmtrack.pipelines.anchors import THUMBNAIL_SIDE, matching_anchor, thumbnail
from ppmtrack.pipelines.labels import FrameRef, Labels

logger = logging.getLogger("ppmtrack")

FRAME_NUMBER = re.compile(r"(\d+)$")  # DeepLabCut's img0123.png, frame_000123.jpg, 000123.png
FINGERPRINT_SIDE = 32
FINGERPRINT_MARGIN = 0.25  # the crop: the keypoints' bounding box grown by this fraction of its size on each side
MIN_CROP_PX = 24
MAX_FINGERPRINT_DIFFERENCE = 6.0  # mean absolute grey-level difference (0-255) of the crops: the same frame


def place(ref: FrameRef) -> tuple[str | None, int | None, str]:
    """(video name, frame index, how it was found) of a labelled frame, or (None, None, why not) when neither
    the labels nor the file name say which video frame it is."""
    if ref.video is not None and ref.frame is not None:
        return Path(ref.video).name, int(ref.frame), "named in the labels"
    if ref.image is not None:
        image = Path(ref.image)
        match = FRAME_NUMBER.search(image.stem)
        if match is not None and image.parent.name:
            how = ("DeepLabCut labeled-data/<video>/imgNNNN name" if image.parent.parent.name == "labeled-data"
                   else "image named <video folder>/<frame number>")
            return image.parent.name, int(match.group(1)), how
        return None, None, f"{image.name} is not named after a frame number"
    return None, None, "an embedded image that names no video frame"


def crop_box(points: np.ndarray, shape: tuple[int, int]) -> list[int] | None:
    """[x0, y0, x1, y1] around the labelled keypoints (K, 2), grown by `FINGERPRINT_MARGIN`, inside the image."""
    finite = points[np.isfinite(points).all(axis=1)]
    if not len(finite):
        return None
    lo, hi = finite.min(axis=0), finite.max(axis=0)
    pad = np.maximum((hi - lo) * FINGERPRINT_MARGIN, MIN_CROP_PX / 2)
    h, w = shape
    x0, y0 = np.floor(np.maximum(lo - pad, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(hi + pad, [w, h])).astype(int)
    return [int(x0), int(y0), int(x1), int(y1)] if x1 - x0 >= 4 and y1 - y0 >= 4 else None


def fingerprint(image: np.ndarray, box: list[int]) -> np.ndarray:
    """(`FINGERPRINT_SIDE`, same) float grey crop of an RGB (or grey) image at ``box``, area-averaged."""
    x0, y0, x1, y1 = box
    crop = np.asarray(image, dtype=np.uint8)[y0:y1, x0:x1]
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    return cv2.resize(grey, (FINGERPRINT_SIDE, FINGERPRINT_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)


def fingerprint_record(image: np.ndarray, points: np.ndarray) -> dict | None:
    """The ``content`` entry of an engine's support-frame record (None when no keypoint is labelled)."""
    box = crop_box(points, image.shape[:2])
    if box is None:
        return None
    return {"size": [int(image.shape[0]), int(image.shape[1])], "box": box,
            "grey": np.round(fingerprint(image, box)).astype(int).reshape(-1).tolist()}


def _same_video(record_video: str | None, source_name: str) -> bool:
    if not record_video:
        return False
    source = Path(source_name)
    return record_video in (source.name, source.stem) or Path(record_video).stem == source.stem


class AnchorFinder:
    """The support frames of an engine that anchor a run on ``source_name``: by name (checked against the
    stored thumbnail, :mod:`pipelines.anchors`) as frames arrive, and by content (the best-matching frame,
    known at the end of a file)."""

    def __init__(self, engine_info: dict, source_name: str, n_keypoints: int):

        self.by_frame: dict[int, dict] = {}
        self.by_content: list[dict] = []
        self.report: list[dict] = []
        for i, record in enumerate(engine_info.get("support_frames", [])):
            entry = {"support": record.get("label") or f"support frame {i + 1}"}
            self.report.append(entry)
            points = record.get("points", [])
            if len(points) != n_keypoints:
                entry["not_found"] = f"labels {len(points)} keypoints, the engine {n_keypoints}"
                continue
            xy = np.array([[np.nan, np.nan] if p is None else p for p in points], dtype=np.float64)
            if _same_video(record.get("video"), source_name) and record.get("frame") is not None:
                entry.update(frame=int(record["frame"]), found_by=record.get("placed_by", "named in the labels"))
                self.by_frame[int(record["frame"])] = {
                    "xy": xy, "entry": entry, "thumbnail": np.array(record["thumbnail"], dtype=np.uint8)
                    .reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE)}
            elif record.get("content"):
                content = record["content"]
                self.by_content.append({"xy": xy, "entry": entry, "size": tuple(content["size"]),
                                        "box": content["box"], "best": (np.inf, None, None),
                                        "grey": np.array(content["grey"], np.float32)
                                        .reshape(FINGERPRINT_SIDE, FINGERPRINT_SIDE)})
                entry["not_found"] = (f"of {record['video']}, not this video, and no frame of it looks the same"
                                      if record.get("video") else
                                      f"{record.get('unplaced', 'no video named')}; no frame looks the same")
            else:
                entry["not_found"] = (f"of {record['video']}, not this video" if record.get("video") else
                                      record.get("unplaced", "no video named") + " (an engine without fingerprints:"
                                      " adapt again to find it by content)")

    def __bool__(self) -> bool:
        return bool(self.by_frame or self.by_content)

    def match(self, frame_index: int, image: np.ndarray, row: int | None = None) -> np.ndarray | None:
        """The (K, 2) anchor of this frame if it is a support frame by name (and looks like it), else None;
        also compares the frame with the support frames to be found by content (``row``: its row in the kept
        frames, None when frames are not kept)."""

        xy = None
        anchor = self.by_frame.get(int(frame_index))
        if anchor is not None:
            xy = matching_anchor({int(frame_index): anchor}, frame_index, image)
            if xy is None:
                anchor["entry"]["not_found"] = f"frame {frame_index} of this video does not look like it"
                anchor["entry"].pop("frame", None)
                anchor["entry"].pop("found_by", None)
        if row is not None:
            for candidate in self.by_content:
                if tuple(image.shape[:2]) != candidate["size"]:
                    continue
                difference = float(np.abs(fingerprint(image, candidate["box"]) - candidate["grey"]).mean())
                if difference < candidate["best"][0]:
                    candidate["best"] = (difference, int(frame_index), row)
        return xy

    def found_by_content(self) -> list[tuple[int, np.ndarray]]:
        """(row, (K, 2)) of the support frames found by content: each at its closest frame, if close enough."""
        rows = []
        for candidate in self.by_content:
            difference, frame, row = candidate["best"]
            if frame is None:
                continue
            entry = candidate["entry"]
            if difference <= MAX_FINGERPRINT_DIFFERENCE:
                entry.pop("not_found", None)
                entry.update(frame=frame, found_by=f"content (crop differs by {difference:.1f} grey levels)")
                rows.append((row, candidate["xy"]))
            else:
                entry["closest_frame"] = {"frame": frame, "difference": round(difference, 1),
                                          "max": MAX_FINGERPRINT_DIFFERENCE}
        return rows

    def summary(self) -> list[dict]:
        """What the run's summary lists as ``anchors``: every support frame, where and how it was found, or why
        not."""
        return [dict(entry) for entry in self.report]


def support_frame_records(labels: Labels, images: list[np.ndarray]) -> list[dict]:
    """The engine-info records of every support frame, for anchoring (:mod:`pipelines.anchor_discovery`).

    Each record: ``{"label": where it came from, "video": file name or None, "frame": index or None,
    "placed_by": how the video frame was known (or "unplaced": why not), "points": [[x, y] or None per
    keypoint], "thumbnail": 256 ints, "content": fingerprint of the animal's surroundings}``. A frame placed by
    its labels or its file name anchors a video of that name; any frame can be found by content.
    """
    records = []
    for ref, points, image in zip(labels.frames, labels.keypoints, images, strict=True):
        video, frame, how = place(ref)
        record = {
            "label": ref.describe() if ref.image is None else f"{Path(ref.image).parent.name}/{Path(ref.image).name}",
            "video": video,
            "frame": frame,
            "points": [None if not np.isfinite(p).all() else [round(float(p[0]), 3), round(float(p[1]), 3)]
                       for p in points],
            "thumbnail": thumbnail(image).reshape(-1).astype(int).tolist(),
            "content": fingerprint_record(image, points),
        }
        record["placed_by" if video is not None else "unplaced"] = how
        records.append(record)
    return records
