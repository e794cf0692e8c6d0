"""Does the detector see the animal? Agreement of raw detections with the motion, against chance (pure numpy).

Where the optical flow passes its forward–backward check, it says how the animal moved. A detector that finds
a keypoint puts its detection in frame t where its detection of frame t−m, carried along by the flow over
those m frames (``steps``), says it should be (the flow-propagated track of the detection); one that does not
(an engine that never learnt the keypoint, an animal it was not adapted on) puts it anywhere. So, per keypoint:
**agreement** = fraction of checked frames whose raw detection lies within ``radius`` of that propagated
detection; **chance** = the same fraction when the propagated detection starts from a detection displaced in
time (of a frame at least ``min_shift`` frames away, several shifts averaged) — what a detector that knows
where the keypoint usually is, but not where it is now, would score. (Comparing with the fused track instead
would flag good detections wherever the flow drifts.) Where agreement is no better than chance over a
stretch of frames, the detections there carry no information about the keypoint.

Where the animal barely moves over a stretch (its track spans less than ``2 × radius``), displaced detections
land on the same place as real ones: when the detections do agree there (at least `STILL_AGREEMENT`), agreement
and chance cannot be told apart and the stretch is **undecided** — neither flagged nor counted as good;
detections that do not even agree with a still track are flagged.

**Outlier frames** (as DeepLabCut's ``extract_outlier_frames``, automatically): the frames where detection and
motion disagree most (mean over keypoints of distance / radius), spread over the video: the frames worth
labelling next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MARGIN = 0.15  # agreement must beat chance by this much to count as "better than chance"
STILL_AGREEMENT = 0.5  # a still track with at least this agreement is undecided (chance cannot be told apart)
MIN_CHECKED = 10  # frames with a usable flow and detection a stretch needs before it is judged


@dataclass
class KeypointCheck:
    """The self-check of one keypoint: agreement and chance over the run, and stretches no better than chance."""

    name: str
    radius_px: float
    frames_checked: int
    agreement: float | None
    chance: float | None
    verdict: str  # "agrees", "no better than chance", "undecided" (too few frames, or the animal was still)
    bad_stretches: list[tuple[int, int]] = field(default_factory=list)  # (first, last) frame numbers

    def to_dict(self) -> dict:
        return {"radius_px": round(self.radius_px, 1), "frames_checked": self.frames_checked,
                "agreement": None if self.agreement is None else round(self.agreement, 3),
                "chance": None if self.chance is None else round(self.chance, 3), "verdict": self.verdict,
                "bad_frames": [list(s) for s in self.bad_stretches]}


def _fraction(distance: np.ndarray, ok: np.ndarray, radius: float) -> float | None:
    return float((distance[ok] <= radius).mean()) if ok.any() else None


def _judge(raw, predicted_from, motion, motion_ok, track, rows, radius, shifts) -> tuple[float | None, float | None,
                                                                                          str]:
    """raw (T, 2); predicted_from(start (T, 2)) → where those detections say frame t should be; rows: judged."""
    prediction = predicted_from(raw)
    ok = rows & motion_ok & np.isfinite(prediction).all(-1) & np.isfinite(raw).all(-1)
    agreement = _fraction(np.linalg.norm(raw - prediction, axis=-1), ok, radius)
    if agreement is None or ok.sum() < MIN_CHECKED:
        return agreement, None, "undecided"
    positions = track[ok]
    positions = positions[np.isfinite(positions).all(-1)]
    spread = float(np.linalg.norm(positions - np.median(positions, axis=0), axis=-1).max()) if len(positions) else 0.0
    values = []
    for shift in shifts:
        displaced = predicted_from(np.roll(raw, int(shift), axis=0))
        good = ok & np.isfinite(displaced).all(-1)
        value = _fraction(np.linalg.norm(raw - displaced, axis=-1), good, radius)
        if value is not None:
            values.append(value)
    chance = float(np.mean(values)) if values else None
    if chance is None or (spread < 2 * radius and agreement >= STILL_AGREEMENT):
        return agreement, chance, "undecided"
    return agreement, chance, "agrees" if agreement > chance + MARGIN else "no better than chance"


def _propagator(displacement: np.ndarray, flow_ok: np.ndarray, steps: int):
    """(function start (T, 2) → start[t − steps] + flow from t − steps to t, flow-ok mask (T,)) of one keypoint."""
    d = np.where(flow_ok[:, None], np.nan_to_num(displacement), 0.0)
    cumulative = np.concatenate([[[0.0, 0.0]], np.cumsum(d, axis=0)])  # cumulative[t + 1] = sum d[0..t]
    t = len(d)
    moved = np.full((t, 2), np.nan)
    moved[steps:] = cumulative[steps + 1:] - cumulative[1:t - steps + 1]
    bad = np.concatenate([[0], np.cumsum(~flow_ok)])
    ok = np.zeros(t, bool)
    ok[steps:] = (bad[steps + 1:] - bad[1:t - steps + 1]) == 0

    def predicted_from(start: np.ndarray) -> np.ndarray:
        out = np.full((t, 2), np.nan)
        out[steps:] = start[:t - steps] + moved[steps:]
        return out

    return predicted_from, ok


def check_detector(names: list[str], frame_numbers: np.ndarray, raw_xy: np.ndarray, displacement: np.ndarray,
                   flow_ok: np.ndarray, track_xy: np.ndarray, radius_px, window: int = 60, steps: int = 1,
                   min_shift: int | None = None, n_shifts: int = 8, seed: int = 0) -> list[KeypointCheck]:
    """Per keypoint: agreement of the raw detections with the flow-propagated detections, chance, and the
    stretches (windows of ``window`` frames, merged) where the detections agree no better than chance.

    Parameters
    ----------
    names : list of str
        Keypoint names (K).
    frame_numbers : np.ndarray
        (T,) video frame index of each row.
    raw_xy : np.ndarray
        (T, K, 2) raw detections (NaN where missing).
    displacement, flow_ok : np.ndarray
        (T, K, 2) optical flow of each keypoint from the previous frame, and (T, K) True where it passed its
        forward–backward check.
    track_xy : np.ndarray
        (T, K, 2) the fused track: only to tell whether the animal moved (a still stretch is undecided).
    radius_px : float or array
        (K,) the distance that counts as agreeing: the engine's detection error (held-out validation).
    window, steps : int
        Frames per judged stretch; frames the detections are carried along by the flow.
    min_shift : int, optional
        Smallest time displacement for chance, in frames (default: ``window // 2``).
    """
    raw_xy = np.asarray(raw_xy, dtype=np.float64)
    track_xy = np.asarray(track_xy, dtype=np.float64)
    t = len(raw_xy)
    radius = np.broadcast_to(np.asarray(radius_px, dtype=np.float64), (len(names),))
    rng = np.random.default_rng(seed)
    min_shift = max(1, window // 2 if min_shift is None else min_shift)
    shifts = (rng.integers(min_shift, t - min_shift, size=n_shifts) if t > 2 * min_shift + 1
              else np.array([], dtype=int))
    out = []
    for k, name in enumerate(names):
        predicted_from, motion_ok = _propagator(np.asarray(displacement, float)[:, k], np.asarray(flow_ok, bool)[:, k],
                                                steps)
        every = np.ones(t, bool)
        agreement, chance, verdict = _judge(raw_xy[:, k], predicted_from, motion_ok, motion_ok, track_xy[:, k], every,
                                            radius[k], shifts)
        bad: list[tuple[int, int]] = []
        for start in range(0, t, window):
            rows = np.zeros(t, bool)
            rows[start:start + window] = True
            _, _, local = _judge(raw_xy[:, k], predicted_from, motion_ok, motion_ok, track_xy[:, k], rows,
                                 radius[k], shifts)
            if local == "no better than chance":
                first, last = int(frame_numbers[start]), int(frame_numbers[min(start + window, t) - 1])
                if bad and start and bad[-1][1] >= int(frame_numbers[start - 1]):
                    bad[-1] = (bad[-1][0], last)
                else:
                    bad.append((first, last))
        checked = int((motion_ok & np.isfinite(raw_xy[:, k]).all(-1)).sum())
        out.append(KeypointCheck(name, float(radius[k]), checked, agreement, chance, verdict, bad))
    return out


def outlier_frames(frame_numbers: np.ndarray, raw_xy: np.ndarray, track_xy: np.ndarray, radius_px,
                   n: int = 10) -> list[dict]:
    """The ``n`` frames where detection and motion disagree most (mean distance / radius over the keypoints both
    have), spread over the video (at least ``len / (2n)`` frames apart), worst first."""
    radius = np.asarray(radius_px, dtype=np.float64)
    distance = np.linalg.norm(np.asarray(raw_xy, float) - np.asarray(track_xy, float), axis=-1) / radius
    with np.errstate(invalid="ignore"):
        score = np.nanmean(np.where(np.isfinite(distance), distance, np.nan), axis=1) if distance.size else distance
    score = np.where(np.isfinite(score), score, -np.inf)
    gap = max(1, len(score) // (2 * max(n, 1)))
    chosen: list[int] = []
    for row in np.argsort(-score, kind="stable"):
        if not np.isfinite(score[row]) or len(chosen) == n:
            break
        if all(abs(int(row) - c) >= gap for c in chosen):
            chosen.append(int(row))
    return [{"frame": int(frame_numbers[r]), "disagreement": round(float(score[r]), 2)} for r in chosen]
