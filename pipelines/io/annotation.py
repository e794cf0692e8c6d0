"""ppmtrack's own annotation format (JSON); see docs/annotation-format.md."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.pipelines.io.files import read_json_file
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError

FORMAT_KEY = "ppmtrack_annotation"
FORMAT_VERSION = 1


def _pairs(doc: dict, key: str, path: Path) -> list[tuple[str, str]]:
    out = []
    for i, e in enumerate(doc.get(key, []) or []):
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(n, str) for n in e)):
            raise LabelsError(f"{path}: {key}[{i}] must be a pair of keypoint names, got {e!r}")
        out.append((e[0], e[1]))
    return out


def read_annotation(path: str | Path) -> Labels:
    """Read a ppmtrack annotation JSON file into Labels; relative image and video paths are taken from its folder."""
    path = Path(path)
    doc = read_json_file(path, "annotation file")
    if not isinstance(doc, dict) or "keypoints" not in doc or "frames" not in doc:
        raise LabelsError(f"{path}: expected a JSON object with 'keypoints' and 'frames' "
                          "(see docs/annotation-format.md)")
    names = doc["keypoints"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise LabelsError(f"{path}: 'keypoints' must be a non-empty list of names")
    if len(set(names)) != len(names):
        raise LabelsError(f"{path}: 'keypoints' has duplicate names")
    frames_doc = doc["frames"]
    if not isinstance(frames_doc, list) or not frames_doc:
        raise LabelsError(f"{path}: 'frames' is empty: at least one annotated frame is needed")
    individuals = doc.get("individuals") or []
    if not (isinstance(individuals, list) and all(isinstance(n, str) for n in individuals)
            and len(set(individuals)) == len(individuals)):
        raise LabelsError(f"{path}: 'individuals' must be a list of distinct animal names")
    index = {n: k for k, n in enumerate(names)}
    frames = []
    kps = np.full((len(frames_doc), max(1, len(individuals)), len(names), 2), np.nan)
    for i, f in enumerate(frames_doc):
        where = f"{path}: frames[{i}]"
        if not isinstance(f, dict):
            raise LabelsError(f"{where} must be an object")
        if "image" in f:
            ref = FrameRef(image=(path.parent / f["image"]))
        elif "video" in f:
            if not isinstance(f.get("frame"), int) or f["frame"] < 0:
                raise LabelsError(f"{where}: a video frame needs a non-negative integer 'frame'")
            ref = FrameRef(video=(path.parent / f["video"]), frame=int(f["frame"]))
        else:
            raise LabelsError(f"{where} needs 'image' or 'video' + 'frame'")
        if individuals:
            animals = f.get("individuals", {})
            if "points" in f or not isinstance(animals, dict):
                raise LabelsError(f"{where}: this file names individuals, so a frame gives 'individuals': "
                                  "{name: {keypoint: [x, y] or null}} instead of 'points'")
            for animal, points in animals.items():
                if animal not in individuals:
                    raise LabelsError(f"{where}: unknown individual {animal!r} (known: {', '.join(individuals)})")
                _read_points(points, f"{where}: individual {animal!r}", index, names,
                             kps[i, individuals.index(animal)])
        else:
            _read_points(f.get("points", {}), where, index, names, kps[i, 0])
        frames.append(ref)
    return Labels(
        names=list(names),
        frames=frames,
        keypoints=kps[:, 0],
        skeleton=_pairs(doc, "skeleton", path),
        flip_pairs=_pairs(doc, "flip_pairs", path),
        source=path,
        display=dict(doc["display"]) if isinstance(doc.get("display"), dict) else {},
        individuals=list(individuals),
        instances=kps if individuals else None,
    )


def _read_points(points, where: str, index: dict, names: list[str], out: np.ndarray) -> None:
    """Parse one animal's ``{name: [x, y] or null}`` into ``out`` (K, 2), which holds NaN beforehand."""
    if not isinstance(points, dict):
        raise LabelsError(f"{where}: 'points' must map keypoint names to [x, y] or null")
    for name, xy in points.items():
        if name not in index:
            raise LabelsError(f"{where}: unknown keypoint {name!r} (known: {', '.join(names)})")
        if xy is None:
            continue
        if not (isinstance(xy, (list, tuple)) and len(xy) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in xy)):
            raise LabelsError(f"{where}: keypoint {name!r} must be [x, y] or null, got {xy!r}")
        out[index[name]] = xy


def write_annotation(labels: Labels, path: str | Path) -> None:
    """Write Labels as a ppmtrack annotation file (atomically); paths are stored relative to its folder.

    Frames held only in memory (``FrameRef.pixels``) are saved as PNG files next to the annotation.
    """
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, ref in enumerate(labels.frames):
        if ref.image is not None:
            entry = {"image": os.path.relpath(Path(ref.image).resolve(), path.parent.resolve())}
        elif ref.video is not None:
            entry = {"video": os.path.relpath(Path(ref.video).resolve(), path.parent.resolve()), "frame": ref.frame}
        else:
            png = path.with_name(f"{path.stem}_frame{i:04d}.png")
            cv2.imwrite(str(png), cv2.cvtColor(ref.pixels[..., :3], cv2.COLOR_RGB2BGR))
            entry = {"image": png.name}
        if labels.individuals:
            entry["individuals"] = {animal: _points_of(labels.instances[i, a], labels.names)
                                    for a, animal in enumerate(labels.individuals)}
        else:
            entry["points"] = _points_of(labels.keypoints[i], labels.names)
        frames.append(entry)
    doc = {
        FORMAT_KEY: FORMAT_VERSION,
        "keypoints": list(labels.names),
        "skeleton": [list(e) for e in labels.skeleton],
        "flip_pairs": [list(e) for e in labels.flip_pairs],
        **({"individuals": list(labels.individuals)} if labels.individuals else {}),
        "frames": frames,
    }
    if labels.display:
        doc["display"] = dict(labels.display)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")


def _points_of(kp: np.ndarray, names: list[str]) -> dict:
    return {n: (None if np.isnan(kp[k]).any() else [round(float(v), 3) for v in kp[k]]) for k, n in enumerate(names)}
