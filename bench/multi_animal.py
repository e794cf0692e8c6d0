"""Measurements of several-animal tracking (docs/multi-animal.md): labels for the fly pair, and frames/s.

    python bench/multi_animal.py fly-labels OUT_DIR [--first 0 --last 300 --support 20,90,160,240]
        Writes OUT_DIR/flies_support.json and flies_truth.json from the SLEAP *predictions* shipped with the
        fly pair (../shared/data/sleap_centered_pair): per frame the two highest-scoring predicted instances
        with score >= --min-score, as individuals named by SLEAP's (fragmented) track. Approximate: these are
        a model's predictions, not hand labels, and their identities are not ground truth.
    python bench/multi_animal.py fps VIDEO ENGINE [--animals 1,2,4 --frames 40 --crops]
        Frames/s of 'ppmtrack track --animals N' on the first --frames frames, for each N, on this machine.
    python bench/multi_animal.py score VIDEO ENGINE TRUTH [--first 0 --stop N --crops]
        Tracks VIDEO with 2 animals three ways (Kalman + appearance, the default; Kalman without appearance;
        nearest position only) and prints, per truth animal, PCK@0.1/0.2 of the raw positions and the identity
        switches per 1000 frames, counted two ways: among close matches (as 'ppmtrack eval') and by matching
        each identity's mean keypoint to the nearest truth animal's centre in every frame.
    python bench/multi_animal.py compare VIDEO ENGINE TRUTH [--stop N --boxes NAME=SOURCE ...]
        Foreground split vs boxes (oracle boxes around each truth animal's keypoints, and any --boxes source,
        e.g. SLEAP's own tracks), each with optical flow off and on; identities by Hungarian + appearance
        everywhere (box ids ignored, so no way is handed the truth's identities). Prints per way: frames with a
        wrong number of animals, identity switches per 1000 frames (close matches, as 'ppmtrack eval'), PCK@0.1
        and @0.2 of the final positions per truth animal. Inference runs once per source (replayed for flow on).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

FLIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sleap_centered_pair"


def fly_labels(out_dir: Path, first: int, last: int, support: list[int], min_score: float) -> None:
    import sleap_io as sio

    labels = sio.load_slp(str(FLIES / "centered_pair_predictions.slp"), open_videos=False)
    names = list(labels.skeletons[0].node_names)
    frames = {}
    for lf in labels.labeled_frames:
        if first <= lf.frame_idx <= last:
            kept = sorted((i for i in lf.instances if float(i.score) >= min_score), key=lambda i: -float(i.score))
            frames[lf.frame_idx] = {(i.track.name if i.track is not None else f"untracked{j}"): i.numpy()
                                    for j, i in enumerate(kept[:2])}
    individuals = sorted({n for row in frames.values() for n in row}, key=lambda n: (len(n), n))

    def entry(f):
        return {"video": str(FLIES / "centered_pair_low_quality.mp4"), "frame": int(f), "individuals": {
            who: {n: None if not np.isfinite(xy[k]).all() else [round(float(v), 3) for v in xy[k]]
                  for k, n in enumerate(names)} for who, xy in frames[f].items()}}

    head = {"ppmtrack_annotation": 1, "keypoints": names,
            "skeleton": [[e.source.name, e.destination.name] for e in labels.skeletons[0].edges],
            "individuals": individuals}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, chosen in (("flies_truth.json", sorted(frames)), ("flies_support.json", support)):
        (out_dir / name).write_text(json.dumps({**head, "frames": [entry(f) for f in chosen if f in frames]}))
    print(f"wrote {out_dir}/flies_truth.json ({len(frames)} frames, {len(individuals)} SLEAP tracks) and "
          f"flies_support.json (frames {support})")


def centre_switches(tracks: dict, truth) -> tuple[int, int]:
    """Identity switches when each identity's mean keypoint is matched (Hungarian) to the nearest truth
    animal's centre in every truth frame where both are seen: (switches, frames counted)."""
    from scipy.optimize import linear_sum_assignment

    names = list(tracks)
    first = tracks[names[0]]
    row_of = {int(f): t for t, f in enumerate(first.frame)}
    previous: dict[str, int] = {}
    switches = counted = 0
    for i, ref in enumerate(truth.frames):
        t = row_of.get(int(ref.frame))
        if t is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN animals: mean of nothing
            gt = np.nanmean(truth.instances[i], axis=1)  # (N, 2)
            pred = np.array([np.nanmean(tracks[n].raw_xy[t], axis=0) for n in names])
        ok_gt, ok_pred = np.isfinite(gt).all(1), np.isfinite(pred).all(1)
        if not ok_gt.any() or not ok_pred.any():
            continue
        counted += 1
        cost = np.linalg.norm(pred[ok_pred][:, None] - gt[ok_gt][None], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            name, animal = names[np.flatnonzero(ok_pred)[r]], int(np.flatnonzero(ok_gt)[c])
            if name in previous and previous[name] != animal:
                switches += 1
            previous[name] = animal
    return switches, counted


class _Replay:
    """An engine whose ``predict_animals`` answers are computed on the first run and replayed after it, so
    the ways of assigning identities are compared on exactly the same detections (and inference runs once)."""

    def __init__(self, engine):
        self.engine, self.answers, self.calls = engine, [], 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def predict_boxes(self, frames, *args, **kwargs):
        return self.predict_animals(frames, *args, _method="predict_boxes", **kwargs)

    def predict_animals(self, frames, *args, _method="predict_animals", **kwargs):
        if self.calls == len(self.answers):
            self.answers.append(getattr(self.engine, _method)(frames, *args, **kwargs))
        self.calls += 1
        return self.answers[self.calls - 1]


def score(video: str, engine_path: str, truth_path: str, first: int, stop: int | None, crops: bool) -> None:
    from ppmtrack.engine import Engine
    from ppmtrack.pipelines.evaluate import evaluate_multi
    from ppmtrack.pipelines.io.csv import read_multi_tracks_csv
    from ppmtrack.pipelines.io.formats import read_labels
    from ppmtrack.pipelines.track_multi import track_video_multi
    from ppmtrack.tracker.identity import IdentityParams

    engine = _Replay(Engine.load(engine_path))
    truth = read_labels(truth_path)
    print(f"{video}, frames {first}..{stop}, engine {engine_path}, crops {crops}, "
          f"machine {platform.processor() or platform.machine()}")
    ways = {"Kalman + appearance": IdentityParams(),
            "Kalman, no appearance": IdentityParams(appearance_weight=0.0),
            "nearest position only": IdentityParams(motion="nearest")}
    for way, params in ways.items():
        engine.calls = 0
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = track_video_multi(video, engine, out, animals=2, start=first, stop=stop, identity=params,
                                        write_video=False, progress=False, crops=crops)
            wall = time.perf_counter() - t0
            tracks = read_multi_tracks_csv(Path(out) / f"{Path(video).stem}.csv")
        result = evaluate_multi(tracks, truth, thresholds=(0.1, 0.2), use="raw")
        switches, counted = centre_switches(tracks, truth)
        pck = "; ".join(f"{a}: PCK@0.1 {result.pck[a][0.1]:.3f} PCK@0.2 {result.pck[a][0.2]:.3f}"
                        for a in result.individuals)
        print(f"{way}: {pck}; switches among close matches {sum(result.identity_switches.values())} "
              f"({result.switches_per_1000_frames:.1f}/1000 frames); centre-matched {switches} "
              f"({1000 * switches / max(counted, 1):.1f}/1000 frames over {counted}); "
              f"{summary.frames_processed} frames in {wall:.0f} s (inference only on the first way)")


def oracle_boxes(truth, path: Path) -> Path:
    """A boxes CSV around each truth animal's keypoints (no ids)."""
    from ppmtrack.pipelines.boxes import keypoint_boxes

    rows = ["frame,x0,y0,x1,y1,score"]
    for i, ref in enumerate(truth.frames):
        for box in keypoint_boxes(truth.instances[i]):
            if np.isfinite(box).all():
                rows.append(f"{ref.frame}," + ",".join(f"{v:.2f}" for v in box) + ",1")
    path.write_text("\n".join(rows) + "\n")
    return path


def wrong_count_frames(tracks: dict, truth) -> tuple[int, int]:
    """Truth frames where the number of identities with a detection differs from the truth's animals."""
    first = next(iter(tracks.values()))
    row_of = {int(f): t for t, f in enumerate(first.frame)}
    wrong = counted = 0
    for i, ref in enumerate(truth.frames):
        t = row_of.get(int(ref.frame))
        if t is None:
            continue
        counted += 1
        want = int(np.isfinite(truth.instances[i]).all(-1).any(-1).sum())
        got = sum(int(np.isfinite(a.raw_xy[t]).all(-1).any() and a.confidence[t].max() > 0) for a in tracks.values())
        wrong += got != want
    return wrong, counted


def compare(video: str, engine_path: str, truth_path: str, stop: int | None, sources: list[str]) -> None:
    from ppmtrack.engine import Engine
    from ppmtrack.pipelines.evaluate import evaluate_multi
    from ppmtrack.pipelines.io.csv import read_multi_tracks_csv
    from ppmtrack.pipelines.io.formats import read_labels
    from ppmtrack.pipelines.track_multi import track_video_multi

    base = Engine.load(engine_path)
    truth = read_labels(truth_path)
    tmp = Path(tempfile.mkdtemp())
    named = {"foreground split": None, "oracle boxes": oracle_boxes(truth, tmp / "oracle.csv")}
    named.update(dict(s.split("=", 1) for s in sources))
    print(f"{video}, frames 0..{stop}, engine {engine_path}, machine {platform.processor() or platform.machine()}")
    print("| animals from | flow | wrong-count frames | switches /1000 frames | PCK@0.1 per animal "
          "| PCK@0.2 per animal | s/frame |")
    print("|---|---|---|---|---|---|---|")
    for name, boxes in named.items():
        engine = _Replay(base)
        for flow in ("off", "auto"):
            engine.calls = 0
            out = tmp / f"{len(list(tmp.iterdir()))}"
            t0 = time.perf_counter()
            summary = track_video_multi(video, engine, out, animals=2, stop=stop, boxes=boxes, box_ids="ignore",
                                        flow=flow, write_video=False, progress=False)
            wall = time.perf_counter() - t0
            tracks = read_multi_tracks_csv(out / f"{Path(video).stem}.csv")
            result = evaluate_multi(tracks, truth, thresholds=(0.1, 0.2), use="xy")
            wrong, counted = wrong_count_frames(tracks, truth)
            pck = [" / ".join(f"{result.pck[a][alpha]:.3f}" for a in result.individuals) for alpha in (0.1, 0.2)]
            print(f"| {name} | {'on' if flow == 'auto' else 'off'} | {wrong} of {counted} | "
                  f"{result.switches_per_1000_frames:.1f} | {pck[0]} | {pck[1]} | "
                  f"{wall / max(summary.frames_processed, 1):.3f}{' (replayed)' if flow == 'auto' else ''} |")


def fps(video: str, engine_path: str, animals: list[int], n_frames: int, crops: bool = False) -> None:
    import torch

    from ppmtrack.engine import Engine
    from ppmtrack.pipelines.track_multi import track_video_multi

    engine = Engine.load(engine_path)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {engine.model.device}")
    for n in animals:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = track_video_multi(video, engine, out, animals=n, stop=n_frames, write_video=False,
                                        progress=False, crops=crops)
            wall = time.perf_counter() - t0
        print(f"--animals {n}: {summary.frames_processed} frames in {wall:.1f} s = "
              f"{summary.frames_processed / wall:.2f} frames/s (inference {summary.stages['inference'].fps:.2f} "
              f"frames/s; identities {len(summary.identities['individuals'])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    fl = sub.add_parser("fly-labels")
    fl.add_argument("out", type=Path)
    fl.add_argument("--first", type=int, default=0)
    fl.add_argument("--last", type=int, default=300)
    fl.add_argument("--support", default="20,90,160,240")
    fl.add_argument("--min-score", type=float, default=10.0, dest="min_score")
    fp = sub.add_parser("fps")
    fp.add_argument("video")
    fp.add_argument("engine")
    fp.add_argument("--animals", default="1,2,4")
    fp.add_argument("--frames", type=int, default=40)
    fp.add_argument("--crops", action="store_true")
    sc = sub.add_parser("score")
    sc.add_argument("video")
    sc.add_argument("engine")
    sc.add_argument("truth")
    sc.add_argument("--first", type=int, default=0)
    sc.add_argument("--stop", type=int)
    sc.add_argument("--crops", action="store_true")
    cp = sub.add_parser("compare")
    cp.add_argument("video")
    cp.add_argument("engine")
    cp.add_argument("truth")
    cp.add_argument("--stop", type=int)
    cp.add_argument("--boxes", action="append", default=[], metavar="NAME=SOURCE")
    args = ap.parse_args()
    if args.cmd == "fly-labels":
        fly_labels(args.out, args.first, args.last, [int(f) for f in args.support.split(",")], args.min_score)
    elif args.cmd == "compare":
        compare(args.video, args.engine, args.truth, args.stop, args.boxes)
    elif args.cmd == "score":
        score(args.video, args.engine, args.truth, args.first, args.stop, args.crops)
    else:
        fps(args.video, args.engine, [int(n) for n in args.animals.split(",")], args.frames, args.crops)


if __name__ == "__main__":
    main()
