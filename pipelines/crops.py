"""Animal-centred crops: the engine sees a square crop around where the animal is expected, not the whole frame.

A whole frame letterboxed into the engine makes a small animal a few cells of the attention maps. Once the
animal is found, :class:`CropPolicy` predicts where it will be in the next frames and the engine gets a square
crop of that region, resized to its input (``--crop-size``), so the animal fills the maps; keypoints come back
in frame pixels (:mod:`engine.geometry`). The policy is causal — it uses only frames already tracked — so it
works for live streams as for files.

Per frame, the policy keeps the animal's centre (the middle of its keypoints' extent), its extent (the longer
side of that extent, smoothed) and its velocity (smoothed change of the centre per frame). The box of the
``i``-th frame after the last tracked one is centred at ``centre + i * velocity``, with side
``(extent + i * speed) * (1 + 2 * margin)``, at least ``size / max_zoom`` frame pixels, shifted inside the
frame where it fits. When such a crop would not enlarge the animal at least ``min_gain`` times over the whole
frame, the whole frame is used.

A crop is checked after the engine has seen it. The animal is taken as lost — and that frame is run again
whole (a *re-acquisition*) — when

- its mean keypoint confidence falls below ``min_confidence_ratio`` times the mean confidence of the
  whole-frame passes so far;
- at least ``max_border_keypoints`` of its keypoints lie in the band of width ``border`` (fraction of the
  crop's side) along the crop's edges that are inside the frame (the animal is leaving the crop);
- at least ``max_edge_foreground`` of its foreground map's mass (``M_f``, normalised to [0, 1] and counted
  above 0.5) lies in that band.

Batches: the frames of one batch are cropped with boxes predicted from the state *before* the batch
(``centre + i * velocity`` for its ``i``-th frame), so a larger batch predicts further ahead: the boxes grow
with ``i * speed`` to keep a moving animal inside, and an animal that turns or stops suddenly is caught by
the checks one batch later than with smaller batches (costing whole-frame re-runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ppmtrack.engine.geometry import square_box

CROP_MODES = ("auto", "on", "off")


@dataclass
class CropParams:
    """Settings of :class:`CropPolicy` (see the module's docstring).

    Parameters
    ----------
    size : int, optional
        Side of the engine input a crop is resized to (a multiple of 64); default: the engine's resolution.
    margin : float
        Added around the animal's extent on every side, as a fraction of it.
    max_zoom : float
        At most this many engine-input pixels per frame pixel (the smallest crop is ``size / max_zoom``).
    min_gain : float
        Crop only when the animal is enlarged at least this many times over the letterboxed whole frame.
    min_confidence_ratio, border, max_border_keypoints, max_edge_foreground : float
        When a crop counts as having lost the animal.
    smoothing : float
        Weight of the newest frame in the smoothed extent and velocity (0–1).
    """

    size: int | None = None
    margin: float = 0.25
    max_zoom: float = 2.0
    min_gain: float = 1.25
    min_confidence_ratio: float = 0.8
    border: float = 0.05
    max_border_keypoints: float = 0.5
    max_edge_foreground: float = 0.5
    smoothing: float = 0.5

    def __post_init__(self):
        if self.size is not None and (self.size < 64 or self.size % 64):
            raise ValueError(f"--crop-size must be a multiple of 64 (64, 128, ..., 512), got {self.size}")


@dataclass
class CropStats:
    """What the crops did in a run: frames the engine saw as crops or whole, and the re-acquisitions."""

    crop_frames: int = 0
    whole_frames: int = 0
    reacquisitions: int = 0
    reasons: dict = field(default_factory=dict)  # why crops lost the animal → how often

    def to_dict(self) -> dict:
        return asdict(self)


class CropPolicy:
    """Causal crop boxes for the next frames from the frames tracked so far, and the lost-animal checks.

    Parameters
    ----------
    resolution : int
        The engine's input side (whole frames are letterboxed to it).
    params : CropParams, optional
    """

    def __init__(self, resolution: int, params: CropParams | None = None, mode: str = "on"):
        self.params = params or CropParams()
        self.mode = mode
        self.resolution = int(resolution)
        self.size = int(self.params.size or resolution)
        self.stats = CropStats()
        self.centre: np.ndarray | None = None
        self.velocity = np.zeros(2)
        self.extent = 0.0
        self.reference_confidence: float | None = None

    def settings(self) -> dict:
        """The parameters, for the run summary."""
        return {"mode": self.mode, "active": True, **asdict(self.params), "size": self.size}

    def boxes(self, n: int, frame_size: tuple[int, int]) -> np.ndarray | None:
        """``(n, 4)`` square crop boxes for the next ``n`` frames of ``frame_size`` (width, height), or None:
        use whole frames (nothing tracked yet, or a crop would not enlarge the animal enough)."""
        if self.centre is None:
            return None
        p = self.params
        speed = float(np.hypot(*self.velocity))
        out = []
        for i in range(1, n + 1):
            c = self.centre + i * self.velocity
            half = (self.extent + i * speed) / 2.0
            out.append(square_box(c[0] - half, c[1] - half, c[0] + half, c[1] + half, p.margin,
                                  self.size / p.max_zoom, frame_size))
        boxes = np.array(out)
        side = float((boxes[:, 2] - boxes[:, 0]).max())
        gain = (self.size / side) / (self.resolution / max(frame_size))
        return boxes if gain >= p.min_gain else None

    def lost_reason(self, keypoints: np.ndarray, confidence: np.ndarray, foreground: np.ndarray | None,
                    box: np.ndarray, frame_size: tuple[int, int]) -> str | None:
        """Why the crop ``box`` no longer holds the animal (see the module's docstring), or None if it does.

        ``keypoints`` (K, 2) in frame pixels, ``confidence`` (K,), ``foreground`` (R, R) over the crop or None.
        """
        p = self.params
        if self.reference_confidence is not None and \
                float(np.mean(confidence)) < p.min_confidence_ratio * self.reference_confidence:
            return "confidence"
        inner = _inner_edges(box, frame_size)
        band = p.border * (box[2] - box[0])
        xy = np.asarray(keypoints, dtype=np.float64)
        near = np.zeros(len(xy), dtype=bool)
        for axis, low, high in ((0, 0, 2), (1, 1, 3)):
            if inner[low]:
                near |= xy[:, axis] < box[low] + band
            if inner[high]:
                near |= xy[:, axis] > box[high] - band
        if len(xy) and near.mean() >= p.max_border_keypoints:
            return "keypoints at the crop border"
        if foreground is not None and _edge_mass(foreground, inner, p.border) >= p.max_edge_foreground:
            return "foreground at the crop edge"
        return None

    def update(self, keypoints: np.ndarray, confidence: np.ndarray, whole: bool, restart: bool = False) -> None:
        """Take in the final keypoints (K, 2) and confidences (K,) of the next frame, in frame order.

        ``whole``: the engine saw the whole frame (its confidence sets the reference); ``restart``: the animal
        was re-acquired, so the velocity starts again from zero.
        """
        p = self.params
        xy = np.asarray(keypoints, dtype=np.float64)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if whole:
            mean = float(np.mean(confidence))
            self.reference_confidence = mean if self.reference_confidence is None else \
                (1 - p.smoothing) * self.reference_confidence + p.smoothing * mean
        if not len(xy):
            self.centre = None
            return
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        centre, extent = (lo + hi) / 2.0, float((hi - lo).max())
        if self.centre is None or restart:
            self.velocity = np.zeros(2)
            self.extent = extent
        else:
            self.velocity = (1 - p.smoothing) * self.velocity + p.smoothing * (centre - self.centre)
            self.extent = (1 - p.smoothing) * self.extent + p.smoothing * extent
        self.centre = centre


def crop_policy_for(engine, mode: str = "auto", size: int | None = None) -> CropPolicy | None:
    """The crop policy of a tracking run (``--crop``, ``--crop-size``), or None for whole frames.

    ``on``: crops; ``off``: whole frames; ``auto``: crops when the engine was adapted on crops
    (``engine.info["crop"]["views_per_frame"]`` > 0, ``ppmtrack adapt --crop-views``), else whole frames — an
    engine adapted on whole frames only tracks worse on crops (docs/performance.md). The margin and zoom limit
    are those the engine was adapted with; the crop size defaults to the engine's resolution.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    params = CropParams(size=size)  # checks the size whatever the mode
    adapted = (getattr(engine, "info", None) or {}).get("crop") or {}
    if mode == "off" or (mode == "auto" and not adapted.get("views_per_frame")):
        return None
    known = {k: adapted[k] for k in ("margin", "max_zoom") if k in adapted}
    return CropPolicy(engine.resolution, CropParams(size=size, **known) if known else params, mode)


def crop_settings(engine, mode: str, policy: CropPolicy | None) -> dict:
    """``settings.crop`` of the run summary: the policy's parameters, or why whole frames were used."""
    if policy is not None:
        return policy.settings()
    why = "--crop off" if mode == "off" else "the engine was not adapted on crops (adapt --crop-views N)"
    return {"mode": mode, "active": False, "why": why}


def _inner_edges(box: np.ndarray, frame_size: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """Which edges (left, top, right, bottom) of ``box`` lie inside the frame (an animal can leave there)."""
    w, h = frame_size
    return box[0] > 0.5, box[1] > 0.5, box[2] < w - 0.5, box[3] < h - 0.5


def _edge_mass(foreground: np.ndarray, inner: tuple[bool, bool, bool, bool], border: float) -> float:
    """Fraction of the foreground map's mass (normalised to [0, 1], above 0.5) in the band along inner edges."""
    f = np.asarray(foreground, dtype=np.float64)
    lo, hi = f.min(), f.max()
    if hi - lo < 1e-6:
        return 0.0
    mass = np.clip((f - lo) / (hi - lo) - 0.5, 0.0, None)
    total = mass.sum()
    if total <= 0:
        return 0.0
    r = f.shape[-1]
    n = max(1, int(round(border * r)))
    band = np.zeros_like(mass, dtype=bool)
    if inner[0]:
        band[:, :n] = True
    if inner[1]:
        band[:n, :] = True
    if inner[2]:
        band[:, -n:] = True
    if inner[3]:
        band[-n:, :] = True
    return float(mass[band].sum() / total)


def predict_with_crops(engine, images: np.ndarray, policy: CropPolicy):
    """The engine's prediction for a batch of frames, through animal-centred crops where the policy has a box.

    Crops that lost the animal are run again as whole frames; the policy takes in every frame's final result.
    Returns the engine's ``Prediction`` (keypoints in frame pixels; ``foreground`` over each frame's own input,
    None when crops and re-run whole frames of the batch have maps of different sizes: ``--crop-size`` below the
    engine's resolution).
    """
    n, h, w = images.shape[:3]
    frame_size = (w, h)
    boxes = policy.boxes(n, frame_size)
    stats = policy.stats
    if boxes is None:
        pred = engine.predict(images, return_foreground=True)
        whole = np.ones(n, dtype=bool)
    else:
        pred = engine.predict(images, boxes=boxes, crop_size=policy.size, return_foreground=True)
        whole = np.zeros(n, dtype=bool)
        reasons = [policy.lost_reason(pred.keypoints[i], pred.confidence[i],
                                      None if pred.foreground is None else pred.foreground[i], boxes[i], frame_size)
                   for i in range(n)]
        lost = [i for i, r in enumerate(reasons) if r]
        for r in reasons:
            if r:
                stats.reasons[r] = stats.reasons.get(r, 0) + 1
        if lost:
            again = engine.predict(images[lost], return_foreground=True)
            pred = _replace_rows(pred, lost, again)
            whole[lost] = True
            stats.reacquisitions += len(lost)
        stats.crop_frames += n
    stats.whole_frames += int(whole.sum())
    for i in range(n):
        policy.update(pred.keypoints[i], pred.confidence[i], whole=bool(whole[i]),
                      restart=bool(whole[i]) and boxes is not None)
    return pred


def _replace_rows(pred, rows: list[int], other):
    """``pred`` with the batch rows ``rows`` taken from ``other`` (a prediction of those frames only); maps of
    different sizes in the two are dropped (None)."""
    import dataclasses

    fields = {}
    for f in dataclasses.fields(pred):
        a, b = getattr(pred, f.name), getattr(other, f.name)
        if a is None or b is None or np.shape(a)[1:] != np.shape(b)[1:]:
            fields[f.name] = None
            continue
        a = np.array(a, copy=True)
        a[rows] = b
        fields[f.name] = a
    return dataclasses.replace(pred, **fields)


__all__ = ["CROP_MODES", "CropParams", "CropPolicy", "CropStats", "crop_policy_for", "crop_settings",
           "predict_with_crops"]
