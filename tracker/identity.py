"""Identities of several animals: frame-to-frame assignment of detected animals to tracks.

Each frame brings a few *detections* (one candidate animal each: K keypoints, their confidences and an
appearance vector, e.g. the mean diffusion features inside that animal's foreground). Each *track* is one
identity. Every frame, :class:`IdentityTracker`

1. predicts where each track's animal is now: a constant-velocity Kalman filter on the animal's centre
   (the keypoint filter of :mod:`tracker.fusion`, with one point, whose detection noise is the RMS of the used
   keypoints' noise: one value, or one per keypoint from the engine's validation) moves the track's last
   keypoints rigidly to the predicted centre;
2. builds a cost for every (track, detection) pair: the mean distance between predicted and detected
   keypoints in units of the animal's size, plus ``appearance_weight`` times the cosine distance between
   the track's appearance (a running mean) and the detection's;
3. solves the assignment with the Hungarian method (:func:`scipy.optimize.linear_sum_assignment`),
   refusing pairs that cost more than ``max_cost``;
4. records an :class:`UncertainDecision` whenever swapping two assigned tracks would have cost less than
   ``uncertain_margin`` more than the chosen assignment — the frames to check by eye after a crossing.

A track whose animal is not detected *coasts* on its filter for ``max_coast_s`` seconds; after that its
position says nothing and only appearance can bring the animal back. A track absent for longer than
``max_absent_s`` is *closed*: with a fixed number of animals its identity is handed to the next unmatched
detection that resembles it most; with a maximum (``--animals auto``) a new animal gets a new identity.

``motion="nearest"`` is the baseline a reader may compare with: each track's last detected keypoints
stand for its prediction and appearance is ignored (nearest-position assignment).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from ppmtrack.tracker.fusion import KeypointFilter, frame_measurements
from ppmtrack.tracker.kalman import SmoothingParams
from ppmtrack.tracker.visibility import measured_mask

MOTION_MODELS = ("kalman", "nearest")
UNASSIGNED = -1


@dataclass(frozen=True)
class IdentityParams:
    """Parameters of the identity assignment.

    Parameters
    ----------
    max_animals : int, default 2
        Most tracks (identities) alive at once.
    fixed_count : bool, default True
        True: exactly ``max_animals`` animals are in the video (``--animals N``), so identities are never
        more than ``max_animals`` and a closed identity is reused. False (``--animals auto``): a new animal
        after a closed track gets a new identity.
    appearance_weight : float, default 1.0
        Weight of the appearance cost (cosine distance, 0 to 2) against the position cost (mean keypoint
        distance in animal sizes).
    max_cost : float, default 3.0
        A (track, detection) pair costing more is never assigned.
    max_coast_s : float, default 0.5
        How long a track's position is predicted from its motion after its animal was last detected; later
        its position cost is the constant ``lost_position_cost`` and only appearance tells animals apart.
    lost_position_cost : float, default 1.0
        Position cost of a track coasted past ``max_coast_s`` (so a re-entering animal is matched by
        appearance, and an animal still followed by position is preferred to a lost one).
    max_absent_s : float, default 10.0
        A track whose animal has not been detected for this long is closed (see the module docstring).
    uncertain_margin : float, default 0.3
        Assignments whose best pairwise swap costs less than this much more are recorded as uncertain.
    appearance_momentum : float, default 0.9
        Running mean of a track's appearance: ``a <- m a + (1 - m) a_new``, updated only on confident
        (not uncertain) assignments so two touching animals do not blend.
    min_animal_size_px : float, default 4.0
        Floor of the animal size (RMS keypoint spread) used to scale the position cost.
    motion : {"kalman", "nearest"}, default "kalman"
        "nearest": predicted keypoints are the last detected ones and appearance is ignored.
    """

    max_animals: int = 2
    fixed_count: bool = True
    appearance_weight: float = 1.0
    max_cost: float = 3.0
    max_coast_s: float = 0.5
    lost_position_cost: float = 1.0
    max_absent_s: float = 10.0
    uncertain_margin: float = 0.3
    appearance_momentum: float = 0.9
    min_animal_size_px: float = 4.0
    motion: str = "kalman"

    def __post_init__(self):
        if int(self.max_animals) < 1:
            raise ValueError(f"max_animals must be at least 1, got {self.max_animals}.")
        if self.motion not in MOTION_MODELS:
            raise ValueError(f"motion must be one of {', '.join(MOTION_MODELS)}, got {self.motion!r}.")
        if not 0.0 <= self.appearance_momentum < 1.0:
            raise ValueError(f"appearance_momentum must lie in [0, 1), got {self.appearance_momentum}.")
        for name in ("appearance_weight", "max_cost", "max_coast_s", "lost_position_cost", "max_absent_s",
                     "uncertain_margin", "min_animal_size_px"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative finite number, got {value}.")


@dataclass(frozen=True)
class UncertainDecision:
    """An assignment the tracker was not sure of: swapping ``tracks`` would cost only ``margin`` more."""

    frame: int
    time: float
    tracks: tuple[int, int]
    margin: float

    def to_dict(self) -> dict:
        return {"frame": int(self.frame), "time": round(float(self.time), 4),
                "tracks": [int(t) for t in self.tracks], "margin": round(float(self.margin), 4)}


@dataclass
class _Track:
    identity: int
    keypoints: np.ndarray  # (K, 2) last detected keypoints (NaN where never seen)
    centre_filter: KeypointFilter | None  # one point: the animal's centre
    last_seen: float
    size_px: float
    appearance: np.ndarray | None
    closed: bool = False
    centre_at_last: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
    filter_time: float = -np.inf  # time of the centre filter's last step


def animal_centre(keypoints: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Mean of the used keypoints, (2,); NaN when none is used."""
    if not used.any():
        return np.full(2, np.nan)
    return keypoints[used].mean(axis=0)


def animal_size(keypoints: np.ndarray, used: np.ndarray) -> float:
    """RMS distance of the used keypoints from their mean, in pixels (0 with fewer than two)."""
    if used.sum() < 2:
        return 0.0
    points = keypoints[used]
    return float(np.sqrt(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=1))))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b) in [0, 2]; 0 when either vector is missing or zero."""
    if a is None or b is None:
        return 0.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(1.0 - np.dot(a, b) / (na * nb))


def mean_keypoint_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance over the keypoints finite in both (K, 2) arrays; NaN when none is."""
    both = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not both.any():
        return float("nan")
    return float(np.linalg.norm(a[both] - b[both], axis=1).mean())


class IdentityTracker:
    """Online assignment of each frame's detected animals to identities (see the module docstring).

    Parameters
    ----------
    n_keypoints : int
        Keypoints per animal, K.
    params : IdentityParams, optional
        Assignment parameters; the defaults when omitted.
    smoothing : SmoothingParams, optional
        Supplies ``min_confidence`` (which keypoints of a detection count) and the filter noise of the
        centre filter; the defaults when omitted.
    """

    def __init__(self, n_keypoints: int, params: IdentityParams | None = None,
                 smoothing: SmoothingParams | None = None):
        self.n_keypoints = int(n_keypoints)
        self.params = params if params is not None else IdentityParams()
        self.smoothing = smoothing if smoothing is not None else SmoothingParams()
        self.tracks: list[_Track] = []
        self.uncertain: list[UncertainDecision] = []
        self._last_time: float | None = None

    @property
    def n_identities(self) -> int:
        """Identities handed out so far."""
        return len(self.tracks)

    def update(self, frame: int, time: float, keypoints: np.ndarray, confidence: np.ndarray,
               appearance: np.ndarray | None = None) -> np.ndarray:
        """Assign one frame's detections to identities.

        Parameters
        ----------
        frame : int
            Frame index (recorded in uncertain decisions).
        time : float
            Frame time in seconds; must increase from call to call.
        keypoints : np.ndarray
            (D, K, 2) keypoints of the D detected animals, in pixels.
        confidence : np.ndarray
            (D, K) their confidences.
        appearance : np.ndarray, optional
            (D, F) appearance vectors; without them only positions count.

        Returns
        -------
        np.ndarray
            (D,) int identity of each detection, ``UNASSIGNED`` (-1) for a detection left out (no usable
            keypoint, or more animals than allowed).
        """
        p = self.params
        time = float(time)
        if self._last_time is not None and time <= self._last_time:
            raise ValueError(f"time must increase from frame to frame: got {time} after {self._last_time}.")
        keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, self.n_keypoints, 2)
        confidence = np.asarray(confidence, dtype=np.float64).reshape(-1, self.n_keypoints)
        n_det = len(keypoints)
        if appearance is not None:
            appearance = np.asarray(appearance, dtype=np.float64)
            appearance = appearance.reshape(n_det, -1) if n_det else appearance.reshape(0, 0)
        used = measured_mask(keypoints, confidence, self.smoothing.min_confidence)
        usable = used.any(axis=1)
        det_xy = np.where(used[..., None], keypoints, np.nan)
        self._last_time = time

        for track in self.tracks:
            if not track.closed and time - track.last_seen > p.max_absent_s:
                track.closed = True

        open_tracks = [t for t in self.tracks if not t.closed]
        candidates = [d for d in range(n_det) if usable[d]]
        cost = np.full((len(open_tracks), len(candidates)), np.inf)
        for i, track in enumerate(open_tracks):
            predicted = self._predicted_keypoints(track, time)
            for j, d in enumerate(candidates):
                cost[i, j] = self._pair_cost(track, predicted, det_xy[d], None if appearance is None
                                             else appearance[d], time)
        identity = np.full(n_det, UNASSIGNED, dtype=np.int64)
        pairs = []
        if cost.size:
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))
            pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if cost[r, c] <= p.max_cost]
        uncertain_tracks = self._record_uncertain(frame, time, open_tracks, cost, pairs)
        for r, c in pairs:
            identity[candidates[c]] = open_tracks[r].identity
        self._place_unmatched(identity, candidates, appearance, time, open_tracks, cost)
        for d in np.flatnonzero(identity != UNASSIGNED):
            track = self.tracks[identity[d]]
            self._observe(track, det_xy[d], confidence[d], used[d], None if appearance is None else appearance[d],
                          time, update_appearance=track.identity not in uncertain_tracks)
        return identity

    # ---- internals ---------------------------------------------------------------------------------------
    def _centre_params(self, used: np.ndarray) -> SmoothingParams:
        """The filter parameters of an animal's one-point centre: the keypoints' detection noise (one value, or
        one per keypoint as validation gives it) as the RMS over the keypoints used this frame."""
        noise = self.smoothing.detection_noise(self.n_keypoints)
        centre_noise = float(np.sqrt(np.mean(noise[used] ** 2)))
        if centre_noise == self.smoothing.measurement_noise_px:
            return self.smoothing
        return replace(self.smoothing, measurement_noise_px=centre_noise)

    def _predicted_keypoints(self, track: _Track, time: float) -> np.ndarray:
        if self.params.motion == "nearest" or time - track.last_seen > self.params.max_coast_s:
            return track.keypoints
        f = track.centre_filter  # constant velocity from its last step to now
        return track.keypoints + (f.mean[0, 0] + (time - track.filter_time) * f.mean[1, 0] - track.centre_at_last)

    def _pair_cost(self, track: _Track, predicted: np.ndarray, det_xy: np.ndarray,
                   appearance: np.ndarray | None, time: float) -> float:
        p = self.params
        coasted_out = p.motion == "kalman" and time - track.last_seen > p.max_coast_s
        if coasted_out:
            position = p.lost_position_cost
        else:
            distance = mean_keypoint_distance(predicted, det_xy)
            if not np.isfinite(distance):  # no keypoint in common: compare centres
                distance = float(np.linalg.norm(np.nanmean(predicted, axis=0) - np.nanmean(det_xy, axis=0)))
            position = distance / max(track.size_px, p.min_animal_size_px)
        if p.motion == "nearest":
            return position
        return position + p.appearance_weight * cosine_distance(track.appearance, appearance)

    def _record_uncertain(self, frame, time, open_tracks, cost, pairs) -> set[int]:
        """Record assigned track pairs whose swap would cost less than the margin more; their identities."""
        found: set[int] = set()
        for a in range(len(pairs)):
            for b in range(a + 1, len(pairs)):
                (ra, ca), (rb, cb) = pairs[a], pairs[b]
                swapped = cost[ra, cb] + cost[rb, ca]
                margin = swapped - (cost[ra, ca] + cost[rb, cb])
                if np.isfinite(margin) and margin < self.params.uncertain_margin:
                    ids = tuple(sorted((open_tracks[ra].identity, open_tracks[rb].identity)))
                    self.uncertain.append(UncertainDecision(int(frame), float(time), ids, float(margin)))
                    found.update(ids)
        return found

    def _place_unmatched(self, identity: np.ndarray, candidates: list[int], appearance, time: float,
                         open_tracks: list[_Track], cost: np.ndarray) -> None:
        """New identities for unmatched detections, or, when the count is fixed, the missing animals'."""
        p = self.params
        row_of = {t.identity: i for i, t in enumerate(open_tracks)}
        for j, d in enumerate(candidates):
            if identity[d] != UNASSIGNED:
                continue
            n_open = sum(not t.closed for t in self.tracks)
            if len(self.tracks) < p.max_animals or (not p.fixed_count and n_open < p.max_animals):
                self.tracks.append(_Track(len(self.tracks), np.full((self.n_keypoints, 2), np.nan), None,
                                          -np.inf, 0.0, None))
                identity[d] = len(self.tracks) - 1
                continue
            if not p.fixed_count:
                continue
            taken = set(identity[identity != UNASSIGNED].tolist())
            spare = [t for t in self.tracks if t.identity not in taken]
            if not spare:
                continue
            # the count is fixed: a detection beyond the gate still belongs to one of the missing animals;
            # one followed by position if any (lowest cost), else the closest in appearance
            followed = [t for t in spare if t.identity in row_of and time - t.last_seen <= p.max_coast_s]
            if followed:
                best = min(followed, key=lambda t: cost[row_of[t.identity], j])
            else:
                app = None if appearance is None else appearance[d]
                best = min(spare, key=lambda t: cosine_distance(t.appearance, app))
            best.closed = False
            identity[d] = best.identity

    def _observe(self, track: _Track, det_xy: np.ndarray, confidence: np.ndarray, used: np.ndarray,
                 appearance: np.ndarray | None, time: float, update_appearance: bool) -> None:
        centre = animal_centre(det_xy, used)
        measured = frame_measurements(centre[None], np.array([np.mean(confidence[used])]), self._centre_params(used))
        restart = track.centre_filter is None or time - track.last_seen > self.params.max_coast_s
        if restart:
            track.centre_filter = KeypointFilter(1, self.smoothing)
            track.filter_time = time
        track.centre_filter.step(time, time - track.filter_time, measured)
        track.filter_time = time
        previous_centre = track.centre_at_last
        track.centre_at_last = track.centre_filter.mean[0, 0].copy()
        # keypoints not detected this frame move with the animal's centre
        shift = track.centre_at_last - previous_centre if np.isfinite(previous_centre).all() else np.zeros(2)
        track.keypoints = np.where(used[:, None], det_xy, track.keypoints + shift)
        size = animal_size(det_xy, used)
        if size > 0:
            track.size_px = size if track.size_px == 0 else 0.8 * track.size_px + 0.2 * size
        track.last_seen = time
        track.closed = False
        if appearance is not None and (update_appearance or track.appearance is None):
            m = self.params.appearance_momentum if track.appearance is not None else 0.0
            track.appearance = appearance.copy() if m == 0.0 else m * track.appearance + (1 - m) * appearance


def nearest_position_params(params: IdentityParams) -> IdentityParams:
    """The same parameters with ``motion="nearest"``: the nearest-position baseline."""
    return replace(params, motion="nearest")
