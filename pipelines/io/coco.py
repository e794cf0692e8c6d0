"""COCO keypoints JSON (as written by CVAT, Label Studio, mmpose and sleap-io) in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ppmtrack.pipelines.io.files import read_json_file
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError


def _area(ann: dict, xyv: np.ndarray) -> float:
    """An annotation's size: its ``area``, else its bbox area, else the extent of its labelled keypoints."""
    if isinstance(ann.get("area"), (int, float)) and ann["area"] > 0:
        return float(ann["area"])
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox):
        return float(bbox[2] * bbox[3])
    pts = xyv[xyv[:, 2] > 0, :2]
    return float(np.prod(pts.max(axis=0) - pts.min(axis=0))) if len(pts) else 0.0


def read_coco(
    path: str | Path,
    image_root: str | Path | None = None,
    category: str | None = None,
    per_image: str = "first",
    keep_occluded: bool = False,
) -> Labels:
    """Read a COCO keypoints JSON file into Labels.

    Parameters
    ----------
    path : str or Path
        The JSON file (``images``, ``annotations``, ``categories`` with ``keypoints``).
    image_root : str or Path, optional
        Folder that ``images[].file_name`` is relative to. By default the JSON's folder, then its ``images/``
        subfolder.
    category : str, optional
        Name of the category to read; needed only when several categories define keypoints.
    per_image : {"first", "largest"}
        COCO allows several annotations (animals) per image; ppmtrack takes one: the first in the file, or the
        largest (by ``area``, else bbox, else keypoint extent). Crowd annotations and annotations without any
        labelled keypoint are skipped, and so are images left without an annotation.
    keep_occluded : bool
        COCO visibility is 0 (not labelled), 1 (labelled but occluded) or 2 (visible). By default only v=2
        points are kept and occluded ones become NaN, since the engine learns each keypoint's appearance from
        the support frames; True keeps v=1 points as well. Files that use the binary encoding (0/1, no 2
        anywhere) have v=1 meaning visible, and those points are kept.

    Returns
    -------
    Labels
        The skeleton comes from the category's 1-based ``skeleton`` index pairs.
    """
    path = Path(path)
    if per_image not in ("first", "largest"):
        raise ValueError(f"per_image must be 'first' or 'largest', got {per_image!r}")
    doc = read_json_file(path, "COCO file")
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise LabelsError(f"{path}: a COCO file needs lists 'images', 'annotations' and 'categories'")
    cats = [
        c
        for c in doc["categories"]
        if isinstance(c, dict) and isinstance(c.get("keypoints"), list) and c["keypoints"]
    ]
    if category is not None:
        cats = [c for c in cats if c.get("name") == category]
    if len(cats) != 1:
        names = [str(c.get("name")) for c in doc["categories"] if isinstance(c, dict) and c.get("keypoints")]
        what = "no category with keypoints" if not cats else "several categories with keypoints"
        if category is not None and not cats:
            what = f"no category {category!r} with keypoints"
        raise LabelsError(
            f"{path}: {what}; categories with keypoints: {', '.join(names) or 'none'}"
            + (" (choose one with category=)" if len(names) > 1 else "")
        )
    cat = cats[0]
    names = [str(n) for n in cat["keypoints"]]
    if len(set(names)) != len(names):
        raise LabelsError(f"{path}: category {cat.get('name')!r} has duplicate keypoint names")
    skeleton = []
    for e in cat.get("skeleton") or []:
        if not (
            isinstance(e, list)
            and len(e) == 2
            and all(isinstance(i, int) and 1 <= i <= len(names) for i in e)
        ):
            raise LabelsError(
                f"{path}: category {cat.get('name')!r}: skeleton edge {e!r} must be two 1-based "
                f"keypoint indices between 1 and {len(names)}"
            )
        skeleton.append((names[e[0] - 1], names[e[1] - 1]))
    images = {im.get("id"): im for im in doc["images"] if isinstance(im, dict)}
    chosen: dict = {}
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or ann.get("category_id") != cat.get("id") or ann.get("iscrowd"):
            continue
        kp = ann.get("keypoints")
        if not (
            isinstance(kp, list)
            and len(kp) == 3 * len(names)
            and all(isinstance(v, (int, float)) for v in kp)
        ):
            got = len(kp) if isinstance(kp, list) else type(kp).__name__
            raise LabelsError(
                f"{path}: annotations[{i}]: 'keypoints' must be {3 * len(names)} numbers "
                f"(x, y, v for each of {len(names)} keypoints), got {got}"
            )
        if ann.get("image_id") not in images:
            raise LabelsError(
                f"{path}: annotations[{i}] refers to image_id {ann.get('image_id')!r}, "
                "which is not in 'images'"
            )
        xyv = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
        if not (xyv[:, 2] > 0).any():
            continue
        best = chosen.get(ann["image_id"])
        if best is None or (per_image == "largest" and _area(ann, xyv) > _area(*best)):
            chosen[ann["image_id"]] = (ann, xyv)
    if not chosen:
        raise LabelsError(f"{path}: no annotation of category {cat.get('name')!r} has a labelled keypoint")
    ternary = any((xyv[:, 2] == 2).any() for _, xyv in chosen.values())
    min_visibility = 2 if ternary and not keep_occluded else 1
    roots = [Path(image_root)] if image_root is not None else [path.parent, path.parent / "images"]
    frames, keypoints = [], []
    for image_id, (_, xyv) in chosen.items():
        file_name = images[image_id].get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise LabelsError(f"{path}: image {image_id!r} has no 'file_name'")
        options = [root / file_name for root in roots]
        frames.append(FrameRef(image=next((p for p in options if p.is_file()), options[0])))
        xy = xyv[:, :2].copy()
        xy[xyv[:, 2] < min_visibility] = np.nan
        keypoints.append(xy)
    return Labels(names=names, frames=frames, keypoints=np.stack(keypoints), skeleton=skeleton, source=path)
