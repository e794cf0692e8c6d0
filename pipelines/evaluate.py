"""Score tracks against ground-truth labels: PCK at several thresholds, pixel error, frames tracked.

PCK (percentage of correct keypoints) as in category-agnostic pose estimation: a predicted keypoint is
correct when its distance to the ground truth is at most α · max(w, h), where w × h is the bounding box of
that frame's labelled keypoints. See docs/outputs.md.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppmtrack.engine.errors import UsageError
from ppmtrack.engine.validate import MIN_BBOX_SIZE_PX, bbox_sizes
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError
from ppmtrack.tracker.track import Tracks

if TYPE_CHECKING:
    from ppmtrack.engine.interface import EngineLike

FRAME_NUMBER = re.compile(r"(\d+)$")  # DeepLabCut's img0123.png, frame_000123.jpg, 000123.png


@dataclass
class EvalResult:
    """Scores of one tracks file against one truth file.

    Parameters
    ----------
    names : list of str
        Keypoint names (K), in the truth's order.
    use : str
        Which positions were scored: "xy" (smoothed) or "raw".
    thresholds : tuple of float
        The PCK thresholds α.
    pck : dict of float to float
        α → fraction of ground-truth-visible keypoints predicted within α · bbox size (missing = wrong).
    pck_per_keypoint : dict of float to np.ndarray
        α → (K,) the same per keypoint (NaN where a keypoint is never labelled).
    mean_error_px : float
        Mean distance in pixels over the labelled keypoints that have a prediction (NaN if none).
    mean_error_per_keypoint_px : np.ndarray
        (K,) the same per keypoint.
    n_labelled, n_predicted : np.ndarray
        (K,) ground-truth-visible keypoints, and how many of them have a prediction.
    n_truth_frames, n_tracked_frames : int
        Truth frames, and how many of them the tracks contain.
    n_outside_span : int
        Truth frames left out because they lie outside the tracked frames (``tracked_span_only=True``).
    support_frames_excluded : list of int
        Truth frames left out because they are the engine's support frames (``exclude_frames``): the engine
        was trained on them and the tracks are anchored there, so scoring them measures the labels, not the
        tracker.
    """

    names: list[str]
    use: str
    thresholds: tuple[float, ...]
    pck: dict[float, float]
    pck_per_keypoint: dict[float, np.ndarray]
    mean_error_px: float
    mean_error_per_keypoint_px: np.ndarray
    n_labelled: np.ndarray
    n_predicted: np.ndarray
    n_truth_frames: int
    n_tracked_frames: int
    n_outside_span: int = 0
    support_frames_excluded: list[int] = dataclasses.field(default_factory=list)

    @property
    def fraction_tracked(self) -> float:
        """Fraction of truth frames that the tracks contain."""
        return self.n_tracked_frames / self.n_truth_frames


_bbox_sizes = bbox_sizes  # one PCK length for tracks and for adaptation's held-out frames (engine.validate)


def _video_name(ref: FrameRef) -> str:
    """The video a labelled frame belongs to: the video's stem, or an image's folder (DeepLabCut's
    ``labeled-data/<video>/imgNNNN.png``)."""
    if ref.video is not None:
        return Path(ref.video).stem
    if ref.image is not None:
        return Path(ref.image).parent.name
    return ""


def truth_for_video(truth: Labels, video: str | None = None) -> Labels:
    """The truth frames of one video, each with its video frame index.

    Frames labelled on a video keep their index. Labelled images (DeepLabCut's ``labeled-data/<video>/
    img0123.png``, COCO or ppmtrack images named after their frame) get the number that ends the file name:
    DeepLabCut names extracted frames ``img<frame index>``. The video of an image is its folder's name (for
    DeepLabCut, the video's stem).

    Parameters
    ----------
    truth : Labels
        Labels in any format (:func:`pipelines.io.formats.read_labels`).
    video : str, optional
        Keep only the frames of this video (a video's file name or stem, or a ``labeled-data`` folder name).
        Needed when the truth labels frames of several videos.
    """
    names = [_video_name(ref) for ref in truth.frames]
    videos = list(dict.fromkeys(names))
    if video is not None:
        wanted = Path(video).stem
        if wanted not in videos:
            raise LabelsError(f"{truth.source}: no labelled frames of video {video!r}; the truth labels frames "
                              f"of: {', '.join(videos)}")
        keep = [i for i, n in enumerate(names) if n == wanted]
    elif len(videos) > 1:
        raise LabelsError(
            f"{truth.source}: truth labels frames of {len(videos)} videos ({', '.join(videos)}); tracks hold one "
            "video: choose it with --truth-video NAME (Python: video=NAME)"
        )
    else:
        keep = list(range(len(truth.frames)))
    frames = []
    for i in keep:
        ref = truth.frames[i]
        if ref.frame is None:
            match = FRAME_NUMBER.search(Path(ref.image).stem) if ref.image is not None else None
            if match is None:
                raise LabelsError(
                    f"{truth.source}: truth frame {i} ({ref.describe()}) is not a video frame and its name does "
                    "not end in a frame number; evaluation needs frames of the tracked video ('video' + "
                    "'frame' entries, or images named like DeepLabCut's img<frame>.png)"
                )
            ref = FrameRef(image=ref.image, video=Path(names[i]), frame=int(match.group(1)))
        frames.append(ref)
    return dataclasses.replace(truth, frames=frames, keypoints=truth.keypoints[keep])


def evaluate(tracks: Tracks, truth: Labels, thresholds=(0.05, 0.1, 0.2), use: str = "xy",
             min_bbox_size: float = MIN_BBOX_SIZE_PX, video: str | None = None,
             tracked_span_only: bool = False, exclude_frames=()) -> EvalResult:
    """Compare tracks with ground-truth labels of the same video.

    Truth frames are matched to tracked frames by video frame index (``FrameRef.frame`` against
    ``Tracks.frame``) and keypoints by name. Only keypoints labelled in the truth count. A labelled keypoint
    without a prediction (lost, NaN, keypoint or frame not tracked) counts as wrong for PCK and is left out
    of the pixel error.

    Parameters
    ----------
    tracks : Tracks
        The tracker's output, e.g. from ``read_tracks_csv``.
    truth : Labels
        Ground truth in any labels format (``read_labels``): video frames ("video" + "frame" entries, SLEAP
        user instances) or images named after their frame (DeepLabCut's ``labeled-data/<video>/img0123.png``,
        COCO); see :func:`truth_for_video`.
    thresholds : sequence of float
        PCK thresholds α, as fractions of the bounding-box size max(w, h).
    use : {"xy", "raw"}
        Score the smoothed positions (``Tracks.xy``, NaN when lost) or the raw measurements.
    min_bbox_size : float
        Smallest bounding-box size in pixels, used when a frame's labelled keypoints span less (one keypoint,
        or keypoints very close together).
    video : str, optional
        Score only the truth frames of this video (see :func:`truth_for_video`); needed when the truth
        labels several videos.
    tracked_span_only : bool
        Leave out truth frames before the first or after the last tracked frame (tracks of part of a video);
        they are counted in ``n_outside_span``. By default they count as not tracked.
    exclude_frames : iterable of int
        Video frame indices not to score: the engine's support frames (:func:`support_frames_of_run`). Those
        that are truth frames are listed in ``support_frames_excluded``.
    """
    if use not in ("xy", "raw"):
        raise ValueError(f"use must be 'xy' or 'raw', got {use!r}")
    thresholds = tuple(float(a) for a in thresholds)
    truth = truth_for_video(truth, video)
    excluded = sorted({int(f) for f in exclude_frames} & {int(ref.frame) for ref in truth.frames})
    if excluded:
        keep = [i for i, ref in enumerate(truth.frames) if int(ref.frame) not in set(excluded)]
        if not keep:
            raise UsageError(f"{truth.source}: every truth frame is a support frame of the engine ({_span(excluded)});"
                             " nothing is left to score (--include-support scores them anyway)")
        truth = dataclasses.replace(truth, frames=[truth.frames[i] for i in keep], keypoints=truth.keypoints[keep])
    n_outside = 0
    if tracked_span_only and len(tracks.frame):
        first, last = int(tracks.frame.min()), int(tracks.frame.max())
        inside = [i for i, ref in enumerate(truth.frames) if first <= ref.frame <= last]
        n_outside = len(truth.frames) - len(inside)
        if not inside:
            raise UsageError(f"{truth.source}: no truth frame lies within the tracked frames {first}–{last}")
        truth = dataclasses.replace(truth, frames=[truth.frames[i] for i in inside],
                                    keypoints=truth.keypoints[inside])
    frames = [int(ref.frame) for ref in truth.frames]
    row_of = {int(f): t for t, f in enumerate(tracks.frame)}
    tracked = np.array([f in row_of for f in frames])
    if not tracked.any():
        raise UsageError(
            f"{truth.source}: no truth frame is in the tracks (truth frames {_span(frames)}, tracked frames "
            f"{_span(tracks.frame.tolist())}); check that the truth belongs to the tracked video"
        )

    positions = tracks.xy if use == "xy" else tracks.raw_xy
    column_of = {n: k for k, n in enumerate(tracks.names)}
    predicted = np.full(truth.keypoints.shape, np.nan)
    for i, f in enumerate(frames):
        if f in row_of:
            for k, name in enumerate(truth.names):
                if name in column_of:
                    predicted[i, k] = positions[row_of[f], column_of[name]]

    labelled = np.isfinite(truth.keypoints).all(axis=2)
    error = np.linalg.norm(predicted - truth.keypoints, axis=2)  # NaN where either is missing
    has_prediction = labelled & np.isfinite(error)
    size = _bbox_sizes(truth.keypoints, float(min_bbox_size))[:, None]
    n_labelled = labelled.sum(axis=0)
    n_predicted = has_prediction.sum(axis=0)
    pck, pck_per_keypoint = {}, {}
    for a in thresholds:
        correct = has_prediction & (np.nan_to_num(error, nan=np.inf) <= a * size)
        pck[a] = float(correct.sum() / labelled.sum()) if labelled.any() else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            pck_per_keypoint[a] = correct.sum(axis=0) / n_labelled
    masked = np.where(has_prediction, error, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_keypoint = masked.sum(axis=0) / n_predicted
    overall = float(masked.sum() / has_prediction.sum()) if has_prediction.any() else float("nan")
    return EvalResult(
        names=list(truth.names),
        use=use,
        thresholds=thresholds,
        pck=pck,
        pck_per_keypoint=pck_per_keypoint,
        mean_error_px=overall,
        mean_error_per_keypoint_px=per_keypoint,
        n_labelled=n_labelled,
        n_predicted=n_predicted,
        n_truth_frames=len(frames),
        n_tracked_frames=int(tracked.sum()),
        n_outside_span=n_outside,
        support_frames_excluded=excluded,
    )


def _span(frames: list[int]) -> str:
    return f"{min(frames)}–{max(frames)}" if frames else "none"


def support_frames_of_run(tracks_csv: str | Path, summary: str | Path | None = None,
                          engine: str | Path | None = None, video: str | None = None) -> tuple[set[int], str]:
    """The engine's support frames that lie in the tracked video, and where that was learnt.

    Read from the run's summary (``STEM.summary.json`` beside ``STEM.csv`` unless ``summary`` names one): the
    frames it anchored (``settings.anchor_frames``), and the support frames recorded in its engine file that
    belong to the tracked video; and from ``engine`` if given. A missing summary or engine file is not an
    error (nothing is known: an empty set).

    Returns
    -------
    (set of int, str)
        The frame indices, and a short description of the sources read (for the report).
    """
    import json

    frames: set[int] = set()
    sources = []
    path = Path(summary) if summary is not None else Path(tracks_csv).with_suffix(".summary.json")
    doc = None
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read the run's summary ({exc})") from None
        sources.append(path.name)
    elif summary is not None:
        raise UsageError(f"{path}: no such summary file")
    names = {Path(video).name} if video else set()
    engine_paths = [Path(engine)] if engine is not None else []
    if doc is not None:
        frames |= {int(f) for f in (doc.get("settings") or {}).get("anchor_frames", [])}
        source = (doc.get("input") or {}).get("path") or (doc.get("input") or {}).get("source")
        if source:
            names.add(Path(str(source)).name)
        recorded = (doc.get("engine") or {}).get("path")
        if engine is None and recorded and Path(recorded).is_file():
            engine_paths.append(Path(recorded))
    stems = {Path(n).stem for n in names}
    for engine_path in engine_paths:
        from ppmtrack.engine.engine_file import read_engine_file

        _, meta = read_engine_file(engine_path)
        sources.append(engine_path.name)
        for record in (meta.get("info") or {}).get("support_frames", []):
            if Path(str(record.get("video", ""))).stem in stems and record.get("frame") is not None:
                frames.add(int(record["frame"]))
    return frames, " and ".join(sources)


def format_report(result: EvalResult, detection_only: EvalResult | None = None,
                  support_note: str = "") -> str:
    """A plain-text report: one line per PCK threshold, the mean pixel error, frames tracked, and a
    per-keypoint table. ``detection_only`` (the same scores on the raw detections) adds a column beside each
    PCK line; ``support_note`` names where the support frames were learnt."""
    total = int(result.n_labelled.sum())
    lines = [
        f"Evaluation of {'smoothed (xy)' if result.use == 'xy' else 'raw'} positions: "
        f"{result.n_truth_frames} truth frames, {total} labelled keypoints",
        f"frames tracked: {result.n_tracked_frames}/{result.n_truth_frames} "
        f"({100 * result.fraction_tracked:.1f}%)",
        f"keypoints predicted: {int(result.n_predicted.sum())}/{total}",
    ]
    if result.n_outside_span:
        lines.insert(2, f"truth frames outside the tracked frames, not scored: {result.n_outside_span}")
    n_support = len(result.support_frames_excluded)
    if n_support:
        frames = ", ".join(str(f) for f in result.support_frames_excluded[:8])
        frames += ", …" if n_support > 8 else ""
        source = f" (from {support_note})" if support_note else ""
        lines.insert(2, f"{n_support} support frame{'s' if n_support != 1 else ''} not scored{source}: {frames}; "
                        "--include-support to score them")
    for a in result.thresholds:
        line = f"PCK@{a:g}: {result.pck[a]:.3f} ({round(result.pck[a] * total)}/{total} keypoints)"
        if detection_only is not None:
            line += f"   detection-only: {detection_only.pck[a]:.3f}"
        lines.append(line)
    if detection_only is not None:
        lines.append("  (detection-only: the engine's raw detections, before flow, anchors and smoothing)")
    lines.append(f"mean error: {result.mean_error_px:.2f} px (over predicted keypoints)")
    width = max([len("keypoint"), *(len(n) for n in result.names)])
    header = f"{'keypoint':<{width}}  {'labelled':>8}  {'predicted':>9}"
    header += "".join(f"  {'PCK@' + format(a, 'g'):>9}" for a in result.thresholds) + f"  {'error px':>8}"
    lines += ["", header]
    for k, name in enumerate(result.names):
        row = f"{name:<{width}}  {result.n_labelled[k]:>8d}  {result.n_predicted[k]:>9d}"
        row += "".join(f"  {result.pck_per_keypoint[a][k]:>9.3f}" for a in result.thresholds)
        lines.append(row + f"  {result.mean_error_per_keypoint_px[k]:>8.2f}")
    return "\n".join(lines) + "\n"


def support_errors(engine: EngineLike, support) -> np.ndarray:
    """(F, K) pixel distance between the engine's prediction and the label on each support frame (NaN where
    the keypoint is not labelled)."""
    predicted = np.full(support.keypoints.shape, np.nan)
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(support.images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        for chunk in range(0, len(indices), 8):
            batch = indices[chunk:chunk + 8]
            predicted[batch] = engine.predict(np.stack([support.images[i] for i in batch])).keypoints
    return np.linalg.norm(predicted - support.keypoints, axis=2)


def format_support_error(engine: EngineLike, support) -> str:
    """A table of the mean pixel error per keypoint on the support frames, after adaptation."""
    errors = support_errors(engine, support)
    width = max(len("all keypoints"), *(len(n) for n in support.names))
    lines = ["support-frame error (px, mean over the frames where the keypoint is labelled):"]
    labelled = np.isfinite(errors)
    counts = labelled.sum(axis=0)  # a keypoint labelled in no frame has no error: "n/a", and no numpy warning
    per_keypoint = np.where(labelled, errors, 0.0).sum(axis=0) / np.maximum(counts, 1)
    for name, value, n in zip(support.names, per_keypoint, counts, strict=True):
        lines.append(f"  {name:<{width}}  {value:8.2f}" if n else f"  {name:<{width}}       n/a")
    overall = f"{errors[labelled].mean():8.2f}" if labelled.any() else "     n/a"
    lines.append(f"  {'all keypoints':<{width}}  {overall}")
    return "\n".join(lines)


@dataclass
class MultiEvalResult:
    """Scores of several animals' tracks against ground truth with identities (:func:`evaluate_multi`).

    Parameters
    ----------
    individuals : list of str
        Ground-truth animals (N).
    thresholds : tuple of float
        PCK thresholds α.
    pck : dict of str to dict of float to float
        Ground-truth animal → α → fraction of its labelled keypoints predicted within α · its bbox size by the
        predicted animal matched to it in that frame (unmatched = wrong).
    pck_all : dict of float to float
        α → the same over all animals.
    mean_error_px : dict of str to float
        Ground-truth animal → mean keypoint distance of its matches.
    identity_switches : dict of str to int
        Ground-truth animal → how often the predicted identity matched to it changed from one matched frame
        to the next; only matches whose mean keypoint error is within ``switch_alpha`` · bbox size count
        (a far-off match says nothing about identity).
    matched_to : dict of str to str
        Ground-truth animal → the predicted identity matched to it most often.
    n_frames : int
        Truth frames scored (those in the tracks).
    """

    individuals: list[str]
    thresholds: tuple[float, ...]
    pck: dict[str, dict[float, float]]
    pck_all: dict[float, float]
    mean_error_px: dict[str, float]
    identity_switches: dict[str, int]
    matched_to: dict[str, str]
    n_frames: int

    @property
    def switches_per_1000_frames(self) -> float:
        return 1000.0 * sum(self.identity_switches.values()) / max(self.n_frames, 1)


def match_animals(predicted: np.ndarray, truth: np.ndarray) -> list[tuple[int, int]]:
    """Hungarian matching of predicted animals (M, K, 2) to ground-truth animals (N, K, 2) on mean keypoint
    distance over the keypoints finite in both; pairs sharing no keypoint are never matched.

    Returns (truth index, predicted index) pairs.
    """
    from scipy.optimize import linear_sum_assignment

    from ppmtrack.tracker.identity import mean_keypoint_distance

    cost = np.array([[mean_keypoint_distance(p, t) for p in predicted] for t in truth]).reshape(len(truth), -1)
    if cost.size == 0 or not np.isfinite(cost).any():
        return []
    rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e12))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if np.isfinite(cost[r, c])]


def evaluate_multi(tracks: dict[str, Tracks], truth: Labels, thresholds=(0.05, 0.1, 0.2), use: str = "xy",
                   min_bbox_size: float = MIN_BBOX_SIZE_PX, switch_alpha: float = 0.2) -> MultiEvalResult:
    """Score several animals' tracks (individual → Tracks on one frame axis) against truth with individuals.

    In each truth frame the predicted animals are matched to the ground-truth animals by
    :func:`match_animals`; PCK is computed per ground-truth animal as in :func:`evaluate`, with the bbox of
    that animal's labelled keypoints; an identity switch is counted when the predicted identity matched to a
    ground-truth animal differs from the one matched to it in its previous frame with a close match.
    """
    if use not in ("xy", "raw"):
        raise ValueError(f"use must be 'xy' or 'raw', got {use!r}")
    if not tracks:
        raise ValueError("no tracked animals to evaluate")
    thresholds = tuple(float(a) for a in thresholds)
    gt = truth.instances if truth.instances is not None else truth.keypoints[:, None]
    gt_names = list(truth.individuals) or ["animal"]
    pred_names = list(tracks)
    first = tracks[pred_names[0]]
    row_of = {int(f): t for t, f in enumerate(first.frame)}
    column_of = {n: k for k, n in enumerate(first.names)}
    columns = [column_of.get(n) for n in truth.names]
    n = len(gt_names)
    errors = [[] for _ in range(n)]
    correct = {a: np.zeros(n) for a in thresholds}
    labelled = np.zeros(n)
    previous: list[int | None] = [None] * n
    switches = [0] * n
    votes = [dict() for _ in range(n)]
    n_frames = 0
    for i, ref in enumerate(truth.frames):
        if ref.frame is None or int(ref.frame) not in row_of:
            continue
        n_frames += 1
        t = row_of[int(ref.frame)]
        predicted = np.full((len(pred_names), len(truth.names), 2), np.nan)
        for m, name in enumerate(pred_names):
            positions = tracks[name].xy if use == "xy" else tracks[name].raw_xy
            for k, c in enumerate(columns):
                if c is not None:
                    predicted[m, k] = positions[t, c]
        matched = dict(match_animals(predicted, gt[i]))
        for a in range(n):
            seen = np.isfinite(gt[i, a]).all(axis=1)
            labelled[a] += seen.sum()
            if a not in matched or not seen.any():
                continue
            m = matched[a]
            votes[a][m] = votes[a].get(m, 0) + 1
            error = np.linalg.norm(predicted[m] - gt[i, a], axis=1)[seen]
            errors[a].extend(error[np.isfinite(error)].tolist())
            size = _bbox_sizes(gt[i, a][None], float(min_bbox_size))[0]
            if np.nanmean(error) <= switch_alpha * size:
                if previous[a] is not None and previous[a] != m:
                    switches[a] += 1
                previous[a] = m
            for alpha in thresholds:
                correct[alpha][a] += np.sum(np.nan_to_num(error, nan=np.inf) <= alpha * size)
    if not n_frames:
        raise ValueError(f"{truth.source}: no truth frame is in the tracks; check that the truth belongs to the "
                         "tracked video")
    with np.errstate(invalid="ignore", divide="ignore"):
        pck = {gt_names[a]: {alpha: float(correct[alpha][a] / labelled[a]) for alpha in thresholds}
               for a in range(n)}
        pck_all = {alpha: float(correct[alpha].sum() / labelled.sum()) for alpha in thresholds}
    return MultiEvalResult(
        individuals=gt_names, thresholds=thresholds, pck=pck, pck_all=pck_all,
        mean_error_px={gt_names[a]: float(np.mean(errors[a])) if errors[a] else float("nan") for a in range(n)},
        identity_switches={gt_names[a]: switches[a] for a in range(n)},
        matched_to={gt_names[a]: pred_names[max(votes[a], key=votes[a].get)] if votes[a] else "" for a in range(n)},
        n_frames=n_frames,
    )


def format_multi_report(result: MultiEvalResult) -> str:
    """A plain-text report: per ground-truth animal its matched identity, PCK, mean error and switches."""
    lines = [f"Evaluation of {len(result.individuals)} animals over {result.n_frames} truth frames "
             f"(predicted animals matched per frame by mean keypoint distance)"]
    for a in result.thresholds:
        lines.append(f"PCK@{a:g}: {result.pck_all[a]:.3f} (all animals)")
    lines.append(f"identity switches (among matches within 0.2 of the animal's size): "
                 f"{sum(result.identity_switches.values())} "
                 f"({result.switches_per_1000_frames:.1f} per 1000 frames)")
    width = max([len("animal"), *(len(n) for n in result.individuals)])
    header = f"{'animal':<{width}}  {'matched to':>10}" + "".join(
        f"  {'PCK@' + format(a, 'g'):>9}" for a in result.thresholds) + f"  {'error px':>8}  {'switches':>8}"
    lines += ["", header]
    for name in result.individuals:
        row = f"{name:<{width}}  {result.matched_to[name]:>10}"
        row += "".join(f"  {result.pck[name][a]:>9.3f}" for a in result.thresholds)
        lines.append(row + f"  {result.mean_error_px[name]:>8.2f}  {result.identity_switches[name]:>8d}")
    return "\n".join(lines) + "\n"
