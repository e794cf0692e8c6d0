"""Animals from boxes: ``ppmtrack track --animals N --boxes SOURCE`` (top-down, as GKDT runs it).

A box source gives, per video frame, boxes ``(x0, y0, x1, y1)`` in frame pixel edges with a score and, where
the source has them, identities. Each kept box goes through the engine's per-animal crop forward
(:meth:`engine.api.Engine.predict_boxes`); identities come from the source's ids when it has them (``--box-ids
keep``, the default), otherwise from the Hungarian + appearance assignment of :mod:`tracker.identity`.

Sources (:func:`open_boxes`):

- a boxes table, ``.csv`` (header ``frame,[id,]x0,y0,x1,y1[,score]``) or ``.json`` (a list of such records, or
  ``{"boxes": [...]}``; ``"bbox": [x0, y0, x1, y1]`` may stand for the four corners);
- another tool's animals, boxes from their keypoints (the keypoints' extent, grown by ``KEYPOINT_MARGIN`` of its
  longer side): SLEAP ``.slp`` (predicted and user instances, ids = track names) or a SLEAP analysis ``.h5``
  (ids = ``track_names``), a DeepLabCut multi-animal output table ``.h5``/``.csv`` (ids = individuals);
- an ONNX detector ``.onnx`` run through onnxruntime on every frame. **Contract**: one input, float32
  ``(1, 3, H, W)``, RGB scaled to [0, 1]; a fixed ``H, W`` in the model makes the frame resized (stretched) to
  it, a dynamic one gets the frame as it is. The first output holds the boxes, ``(N, 5)`` or ``(1, N, 5)``
  rows ``x0, y0, x1, y1, score`` in the input's pixels (mapped back to the frame's). No ids.

What happens to the boxes of a frame (:func:`select_boxes`), each counted in the run summary
(``identities.boxes``): non-finite or empty boxes are dropped (``invalid``); boxes are clipped to the frame
(``clipped``), and one wholly outside is dropped (``outside``); below ``--box-min-score`` dropped (``low_score``);
a box overlapping a higher-scored one by IoU ≥ ``DUPLICATE_IOU`` is the same animal twice (``duplicates``);
lesser overlaps are kept — touching animals — and counted (``overlapping_pairs``); with ids, boxes whose id is
not among the first N ids of the source are dropped (``unknown_id``), otherwise the N best-scored are kept
(``extra``). Frames without a box (not in the source, or every box dropped) count as ``frames_without_boxes``;
their identities coast on their filters and optical flow. Frames with fewer boxes than N count as
``frames_with_fewer``.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ppmtrack.engine.errors import UsageError

KEYPOINT_MARGIN = 0.1
DUPLICATE_IOU = 0.9
OVERLAP_IOU = 0.1
MIN_LIKELIHOOD = 0.1  # a DeepLabCut point below this likelihood is not part of the animal's box
BOX_ID_MODES = ("keep", "ignore")
TABLE_SUFFIXES = (".csv", ".json")


class BoxesError(UsageError):
    """A box source that cannot be read: names the file and what is wrong."""


@dataclass
class FrameBoxes:
    """The boxes of one frame: ``xyxy`` (N, 4) pixel edges, ``score`` (N,), ``ids`` (N,) str or None."""

    xyxy: np.ndarray
    score: np.ndarray
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.xyxy)

    def take(self, rows) -> FrameBoxes:
        rows = list(rows)
        return FrameBoxes(self.xyxy[rows].reshape(-1, 4), self.score[rows],
                          None if self.ids is None else [self.ids[r] for r in rows])


@dataclass
class BoxCounts:
    """What happened to the source's boxes (module docstring); written to the run summary."""

    frames: int = 0
    frames_without_boxes: int = 0
    frames_with_fewer: int = 0
    boxes_used: int = 0
    invalid: int = 0
    outside: int = 0
    clipped: int = 0
    low_score: int = 0
    duplicates: int = 0
    overlapping_pairs: int = 0
    unknown_id: int = 0
    extra: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BoxSource:
    """Boxes per video frame from a table (or another tool's instances); :class:`OnnxDetector` computes them."""

    path: str
    kind: str
    table: dict[int, FrameBoxes] = field(default_factory=dict)
    id_order: list[str] = field(default_factory=list)  # ids in order of first appearance

    @property
    def has_ids(self) -> bool:
        return bool(self.id_order)

    def boxes_at(self, frame: int, image: np.ndarray) -> FrameBoxes | None:
        """The frame's boxes, or None when the source has no entry for it."""
        return self.table.get(int(frame))

    def describe(self) -> dict:
        return {"source": self.path, "kind": self.kind, "frames_in_source": len(self.table),
                "ids": len(self.id_order)}


def keypoint_boxes(xy: np.ndarray, margin: float = KEYPOINT_MARGIN, min_points: int = 2) -> np.ndarray:
    """(N, 4) boxes around each of N animals' (N, K, 2) keypoints (NaN where missing), grown by ``margin`` of the
    longer side on every side; NaN rows for an animal with fewer than ``min_points`` keypoints."""
    xy = np.asarray(xy, dtype=np.float64)
    out = np.full((len(xy), 4), np.nan)
    for i, points in enumerate(xy):
        points = points[np.isfinite(points).all(axis=1)]
        if len(points) < min_points:
            continue
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        grow = margin * max(x1 - x0, y1 - y0, 1.0)
        out[i] = (x0 - grow, y0 - grow, x1 + grow + 1.0, y1 + grow + 1.0)  # pixel centres → pixel edges
    return out


def _add(table: dict, order: list, frame: int, xyxy, score: float, ident: str | None) -> None:
    entry = table.setdefault(int(frame), FrameBoxes(np.zeros((0, 4)), np.zeros(0), None if ident is None else []))
    entry.xyxy = np.vstack([entry.xyxy, np.asarray(xyxy, dtype=np.float64).reshape(1, 4)])
    entry.score = np.append(entry.score, float(score))
    if ident is not None:
        if entry.ids is None:
            entry.ids = []
        entry.ids.append(str(ident))
        if str(ident) not in order:
            order.append(str(ident))


def _records_table(path: Path, records: list[dict], kind: str) -> BoxSource:
    source = BoxSource(str(path), kind)
    with_ids = any(r.get("id") not in (None, "") for r in records)
    for n, r in enumerate(records, start=1):
        try:
            corners = r["bbox"] if "bbox" in r else [r[c] for c in ("x0", "y0", "x1", "y1")]
            xyxy = [float(v) for v in corners]
            frame = int(float(r["frame"]))
            score = float(r.get("score") if r.get("score") not in (None, "") else 1.0)
        except (KeyError, TypeError, ValueError) as e:
            raise BoxesError(f"{path}: box {n} needs frame, x0, y0, x1, y1 (and optionally id, score) as numbers "
                             f"({type(e).__name__}: {e})") from None
        if len(xyxy) != 4:
            raise BoxesError(f"{path}: box {n}: bbox needs 4 numbers, got {len(xyxy)}")
        ident = r.get("id")
        ident = None if not with_ids else ("" if ident is None else str(ident))
        _add(source.table, source.id_order, frame, xyxy, score, ident)
    if with_ids and "" in source.id_order:
        raise BoxesError(f"{path}: some boxes have an id and some not; give every box an id, or none")
    return source


def read_boxes_csv(path: Path) -> BoxSource:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            records = [{k.strip().lower(): v.strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BoxesError(f"{path}: not a readable boxes CSV ({e})") from None
    return _records_table(path, records, "boxes csv")


def read_boxes_json(path: Path) -> BoxSource:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BoxesError(f"{path}: not a readable boxes JSON file ({e})") from None
    records = doc.get("boxes") if isinstance(doc, dict) else doc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BoxesError(f"{path}: expected a list of box records or {{\"boxes\": [...]}}")
    return _records_table(path, records, "boxes json")


def boxes_from_instances(path: Path, kind: str, frames: np.ndarray, xy: np.ndarray, score: np.ndarray,
                         ids: list[str | None]) -> BoxSource:
    """A source of boxes around instances: (M,) frames, (M, K, 2) keypoints, (M,) scores, (M,) ids."""
    source = BoxSource(str(path), kind)
    boxes = keypoint_boxes(xy)
    any_id = any(i is not None for i in ids)
    for frame, box, s, ident in zip(frames, boxes, score, ids, strict=True):
        if np.isfinite(box).all():
            _add(source.table, source.id_order, int(frame), box, float(s) if np.isfinite(s) else 1.0,
                 (ident if ident is not None else "untracked") if any_id else None)
    return source


def read_sleap_boxes(path: Path) -> BoxSource:
    """Boxes from a SLEAP ``.slp`` (every instance of the first video) or analysis ``.h5`` (every track)."""
    if path.suffix.lower() == ".slp":
        try:
            import sleap_io

            labels = sleap_io.load_slp(str(path), open_videos=False)
        except Exception as e:  # sleap-io raises many kinds on a damaged file
            raise BoxesError(f"{path}: not a readable SLEAP file ({type(e).__name__}: {e})") from None
        video = labels.videos[0] if labels.videos else None
        frames, xy, score, ids = [], [], [], []
        for lf in labels.labeled_frames:
            if video is not None and lf.video is not video:
                continue
            for inst in lf.instances:
                frames.append(lf.frame_idx)
                xy.append(inst.numpy()[:, :2])
                score.append(float(getattr(inst, "score", 1.0)))
                ids.append(inst.track.name if inst.track is not None else None)
        if not frames:
            raise BoxesError(f"{path}: holds no instances")
        return boxes_from_instances(path, "sleap instances", np.array(frames), np.stack(xy), np.array(score), ids)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            tracks = np.asarray(f["tracks"], dtype=np.float64)  # (n_tracks, 2, n_nodes, n_frames)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["track_names"][()]] \
                if "track_names" in f else []
            scores = np.asarray(f["instance_scores"], dtype=np.float64) if "instance_scores" in f else None
    except (OSError, KeyError, ValueError) as e:
        raise BoxesError(f"{path}: not a SLEAP analysis HDF5 file with a 'tracks' dataset ({e})") from None
    if tracks.ndim != 4 or tracks.shape[1] != 2:
        raise BoxesError(f"{path}: 'tracks' has shape {tracks.shape}, expected (tracks, 2, nodes, frames)")
    n_tracks, _, _, n_frames = tracks.shape
    names = names if len(names) == n_tracks else [f"track_{i}" for i in range(n_tracks)]
    xy = tracks.transpose(0, 3, 2, 1)  # (n_tracks, n_frames, n_nodes, 2)
    frames, points, score, ids = [], [], [], []
    for t in range(n_tracks):
        for fr in np.flatnonzero(np.isfinite(xy[t]).all(axis=2).any(axis=1)):
            frames.append(fr)
            points.append(xy[t, fr])
            score.append(scores[t, fr] if scores is not None and scores.shape == (n_tracks, n_frames) else 1.0)
            ids.append(names[t])
    if not frames:
        raise BoxesError(f"{path}: holds no tracked instance")
    return boxes_from_instances(path, "sleap analysis", np.array(frames), np.stack(points), np.array(score), ids)


def read_dlc_boxes(path: Path) -> BoxSource:
    """Boxes from a DeepLabCut multi-animal output table (``.h5`` or ``.csv``; levels with ``individuals``)."""
    from ppmtrack.pipelines.io import dlc

    levels, header, index, values = (dlc._table_from_h5(path) if path.suffix.lower() == ".h5"
                                     else dlc._table_from_csv(path))
    if "individuals" not in levels or "coords" not in levels:
        raise BoxesError(f"{path}: not a DeepLabCut multi-animal table (header levels {levels}; expected "
                         "scorer, individuals, bodyparts, coords)")
    individuals, coords = header[levels.index("individuals")], header[levels.index("coords")]
    bodyparts = header[levels.index("bodyparts")]
    values = np.array([[dlc._number(c) for c in row] for row in values]) if not isinstance(values, np.ndarray) \
        else values
    frames, points, score, ids = [], [], [], []
    names = list(dict.fromkeys(individuals))
    for row, idx in enumerate(index):
        try:
            frame = int(float(idx[-1]))
        except ValueError:
            digits = re.findall(r"\d+", idx[-1])
            if not digits:
                raise BoxesError(f"{path}: row {idx} names no frame number") from None
            frame = int(digits[-1])
        for name in names:
            cols = {(bp, c): j for j, (ind, bp, c) in enumerate(zip(individuals, bodyparts, coords, strict=True))
                    if ind == name}
            parts = list(dict.fromkeys(bp for bp, _ in cols))
            xy = np.array([[values[row, cols[(bp, "x")]], values[row, cols[(bp, "y")]]] for bp in parts])
            like = np.array([values[row, cols[(bp, "likelihood")]] if (bp, "likelihood") in cols else 1.0
                             for bp in parts])
            with np.errstate(invalid="ignore"):
                xy[~(like >= MIN_LIKELIHOOD)] = np.nan
            if np.isfinite(xy).all(axis=1).sum() >= 2:
                frames.append(frame)
                points.append(xy)
                score.append(float(np.nanmean(np.where(np.isfinite(xy).all(axis=1), like, np.nan))))
                ids.append(name)
    if not frames:
        raise BoxesError(f"{path}: holds no animal with two or more keypoints")
    return boxes_from_instances(path, "deeplabcut multi-animal", np.array(frames), np.stack(points),
                                np.array(score), ids)


class OnnxDetector(BoxSource):
    """Boxes from an ONNX detector run on every frame (contract in the module docstring)."""

    def __init__(self, path: Path):
        super().__init__(str(path), "onnx detector")
        try:
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except ImportError:
            raise BoxesError("an ONNX detector needs onnxruntime: pip install onnxruntime") from None
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise BoxesError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BoxesError(f"{path}: the detector must take one (1, 3, H, W) input; it takes "
                             f"{[(i.name, i.shape) for i in inputs]} (docs/multi-animal.md, 'Boxes')")
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2:]
        self.fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def boxes_at(self, frame: int, image: np.ndarray) -> FrameBoxes:
        import cv2

        height, width = image.shape[:2]
        resized = image if self.fixed is None else cv2.resize(image, (self.fixed[1], self.fixed[0]),
                                                              interpolation=cv2.INTER_AREA)
        x = (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        out = np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float64)
        if out.size % 5 or (out.ndim not in (2, 3)):
            raise BoxesError(f"{self.path}: the detector's first output has shape {out.shape}; expected (N, 5) or "
                             "(1, N, 5) rows x0, y0, x1, y1, score")
        out = out.reshape(-1, 5)
        if self.fixed is not None:
            out[:, [0, 2]] *= width / self.fixed[1]
            out[:, [1, 3]] *= height / self.fixed[0]
        return FrameBoxes(out[:, :4], out[:, 4])

    def describe(self) -> dict:
        return {"source": self.path, "kind": self.kind, "input": list(self.fixed) if self.fixed else "frame size"}


def open_boxes(spec: str | Path) -> BoxSource:
    """The box source for ``--boxes SPEC`` by its suffix (module docstring); a clear error for anything else."""
    path = Path(spec)
    if not path.is_file():
        raise BoxesError(f"--boxes {spec}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = f.readline().strip().lower()
        return read_dlc_boxes(path) if first.startswith("scorer") else read_boxes_csv(path)
    if suffix == ".json":
        return read_boxes_json(path)
    if suffix == ".slp":
        return read_sleap_boxes(path)
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                is_sleap = "tracks" in f
        except OSError as e:
            raise BoxesError(f"{path}: not a readable HDF5 file ({e})") from None
        return read_sleap_boxes(path) if is_sleap else read_dlc_boxes(path)
    if suffix == ".onnx":
        return OnnxDetector(path)
    raise BoxesError(f"--boxes {spec}: unknown kind of box source; give a boxes .csv/.json, a SLEAP .slp or "
                     "analysis .h5, a DeepLabCut multi-animal .h5/.csv, or an ONNX detector .onnx")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of (N, 4) and (M, 4) boxes."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / (area_a[:, None] + area_b[None, :] - inter), 0.0)


def select_boxes(boxes: FrameBoxes | None, frame_size: tuple[int, int], n_animals: int, counts: BoxCounts,
                 allowed_ids: list[str] | None = None, min_score: float = 0.0) -> FrameBoxes:
    """The boxes of one frame that go to the engine (module docstring), each decision counted in ``counts``.

    ``frame_size`` is (height, width); ``allowed_ids``: with ids kept, the ids that have an identity.
    """
    counts.frames += 1
    h, w = frame_size
    if boxes is None or not len(boxes):
        counts.frames_without_boxes += 1
        return FrameBoxes(np.zeros((0, 4)), np.zeros(0), None if allowed_ids is None else [])
    xyxy, score = boxes.xyxy.astype(np.float64), boxes.score.astype(np.float64)
    valid = np.isfinite(xyxy).all(axis=1) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    counts.invalid += int((~valid).sum())
    clipped = xyxy.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
    inside = valid & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    counts.outside += int((valid & ~inside).sum())
    counts.clipped += int((inside & (np.abs(clipped - xyxy) > 1e-9).any(axis=1)).sum())
    score = np.where(np.isfinite(score), score, 0.0)
    good = inside & (score >= min_score)
    counts.low_score += int((inside & ~good).sum())
    keep: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if not good[i]:
            continue
        if boxes.ids is not None and allowed_ids is not None:
            if boxes.ids[i] not in allowed_ids:
                counts.unknown_id += 1
                continue
            if any(boxes.ids[j] == boxes.ids[i] for j in keep):  # one box per id: the best-scored
                counts.duplicates += 1
                continue
        if keep and box_iou(clipped[[i]], clipped[keep]).max() >= DUPLICATE_IOU:
            counts.duplicates += 1
            continue
        keep.append(int(i))
    if allowed_ids is None and len(keep) > n_animals:
        counts.extra += len(keep) - n_animals
        keep = keep[:n_animals]
    if len(keep) > 1:
        iou = box_iou(clipped[keep], clipped[keep])
        counts.overlapping_pairs += int((np.triu(iou, 1) > OVERLAP_IOU).sum())
    if not keep:
        counts.frames_without_boxes += 1
    elif len(keep) < n_animals:
        counts.frames_with_fewer += 1
    counts.boxes_used += len(keep)
    chosen = FrameBoxes(clipped, score, boxes.ids if allowed_ids is not None else None).take(keep)
    return chosen


def safe_individual_name(ident: str, fallback: str) -> str:
    """A source id as an individual's name in every output (letters, digits, ``_.-``), else ``fallback``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(ident)).strip("._")
    return name or fallback
