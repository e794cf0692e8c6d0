"""Feature correspondence on real clips: label propagation (clicks saved) and TAP-Vid-style point tracking.

Clips: ``../shared/data`` BADJA camel and cows, DLC reaching (skipped when absent).

1. Label propagation (``ppmtrack label``'s "propose"): the first 1 or 3 labelled frames are the labels; every
   other labelled frame gets suggestions; a suggestion within PCK@0.1 (0.1 × the max side of the frame's
   labelled-keypoint box, as ``ppmtrack eval``) is a click saved. Rows: correspondence only; correspondence +
   flow for frames within 5 of a labelled frame; and two controls that need no model: the labels of the
   nearest labelled frame copied ("copy from the previous frame") and random positions in the frame.
2. Point tracking (``ppmtrack points``): the labelled keypoints of the first labelled frame are the queries;
   the whole clip is tracked once; δ_avg (TAP-Vid: fraction of visible points within 1, 2, 4, 8, 16 px after
   resizing frames to 256², averaged) on the later labelled frames, and occlusion accuracy where the truth
   marks invisible joints (BADJA). Rows: features alone (the run's raw detections, as ``--flow off``),
   features + flow (the run's RTS output), pure Lucas-Kanade from the queries, and random positions.
   ms/frame is the run's inference stage.

With ``--model tiny`` (the only model on machines without downloads) the numbers show the mechanics (and
that the untrained UNet's features already carry some local structure); they say nothing about SD 1.5.

    python bench/correspondence.py --model tiny [--clips camel,cows,reaching] [--skip-tracking]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIPS = {
    "camel": (DATA / "badja_camel" / "video.mp4", DATA / "badja_camel" / "labels.npz"),
    "cows": (DATA / "badja_cows" / "video.mp4", DATA / "badja_cows" / "labels.npz"),
    "reaching": (DATA / "dlc_reaching" / "reaching_frames0-30.mp4", DATA / "dlc_reaching" / "labels_frames0-30.npz"),
}
THRESHOLDS_256 = (1, 2, 4, 8, 16)


def pck(pred: np.ndarray, truth: np.ndarray, alpha: float = 0.1) -> tuple[int, int]:
    """(hits, visible) of (F, K, 2) predictions against truth, with the bbox length of ``ppmtrack eval``."""
    from ppmtrack.engine.validate import bbox_sizes

    size = bbox_sizes(truth)[:, None]
    visible = np.isfinite(truth).all(axis=-1)
    err = np.linalg.norm(pred - truth, axis=-1)
    hits = visible & np.isfinite(err) & (err <= alpha * size)
    return int(hits.sum()), int(visible.sum())


def delta_avg(pred: np.ndarray, truth: np.ndarray, width: int, height: int) -> float:
    """TAP-Vid δ_avg over visible truth points, at 256×256."""
    scale = np.array([256.0 / width, 256.0 / height])
    visible = np.isfinite(truth).all(axis=-1)
    err = np.linalg.norm((pred - truth) * scale, axis=-1)[visible]
    err = np.where(np.isfinite(err), err, np.inf)
    return float(np.mean([(err < t).mean() for t in THRESHOLDS_256]))


def occlusion_accuracy(pred_visible: np.ndarray, truth: np.ndarray) -> float | None:
    truth_visible = np.isfinite(truth).all(axis=-1)
    if truth_visible.all():
        return None
    return float((pred_visible == truth_visible).mean())


def propagation_rows(matcher, frames, idx, kps, width, height, rng) -> list[tuple]:
    from ppmtrack.pipelines.propagate import keypoint_descriptors, propose

    rows = []
    for k in (1, 3):
        labelled = {int(idx[i]): kps[i] for i in range(k)}
        targets = [int(t) for t in idx[k:]]
        truth = kps[k:]
        desc = keypoint_descriptors(matcher, labelled, frames.__getitem__)
        t0 = time.perf_counter()
        feats = propose(matcher, labelled, targets, frames.__getitem__, near=0, descriptors=desc)
        seconds = (time.perf_counter() - t0) / len(targets)
        both = propose(matcher, labelled, targets, frames.__getitem__, near=5, descriptors=desc)
        nearest = np.stack([labelled[min(labelled, key=lambda i: (abs(i - t), i))] for t in targets])
        random = rng.uniform([0, 0], [width, height], size=truth.shape)
        for name, pred in (("features", np.stack([feats[t].xy for t in targets])),
                           ("features + flow (≤5 frames)", np.stack([both[t].xy for t in targets])),
                           ("copy nearest labelled frame", nearest), ("random", random)):
            hits, n = pck(pred, truth)
            rows.append((k, name, hits, n, seconds * 1000 if name == "features" else None))
    return rows


def tracking_rows(model, video, frames, idx, kps, width, height, rng, resolution) -> tuple[list[tuple], float]:
    from ppmtrack.pipelines.io.csv import read_tracks_csv
    from ppmtrack.pipelines.points import PointQuery, track_points
    from ppmtrack.tracker.flow import track_points_flow

    first = int(idx[0])
    names = [f"k{j}" for j in range(kps.shape[1])]
    ok = np.isfinite(kps[0]).all(axis=1)
    queries = [PointQuery(names[j], first, float(kps[0, j, 0]), float(kps[0, j, 1])) for j in np.flatnonzero(ok)]
    with tempfile.TemporaryDirectory() as out:
        summary = track_points(video, queries, out, model, resolution=resolution, write_video=False,
                               progress=False, batch_size=4)
        tracks = read_tracks_csv(summary.outputs["csv"])
    ms = summary.stages["inference"].busy_s / max(1, summary.stages["inference"].frames) * 1000
    rows_of = {int(f): i for i, f in enumerate(tracks.frame)}
    later = [i for i in range(1, len(idx)) if int(idx[i]) in rows_of]
    truth = kps[later][:, ok]
    sel = [rows_of[int(idx[i])] for i in later]
    lk = track_points_flow([frames[i] for i in range(len(frames))], first, kps[0, ok])[[int(idx[i]) for i in later]]
    random = rng.uniform([0, 0], [width, height], size=truth.shape)
    rows = []
    for name, pred, vis in (("features alone (--flow off)", tracks.raw_xy[sel], None),
                            ("features + flow", tracks.xy[sel], tracks.visible[sel]),
                            ("pure LK from the queries", lk, None), ("random", random, None)):
        rows.append((name, delta_avg(pred, truth, width, height),
                     None if vis is None else occlusion_accuracy(np.asarray(vis, bool), truth)))
    return rows, ms


class Frames(dict):
    pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clips", default="camel,cows,reaching")
    parser.add_argument("--resolution", type=int, help="engine input side (default: the model's)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--skip-tracking", action="store_true", help="label propagation only")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    import torch

    from ppmtrack.engine.correspond import CorrespondConfig
    from ppmtrack.engine.correspond_points import PointMatcher
    from ppmtrack.engine.models import load_model
    from ppmtrack.pipelines.sources import read_frames_at

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    matcher = PointMatcher(model, resolution=args.resolution, config=CorrespondConfig(views=args.views))
    print(f"# Feature correspondence — {platform.node()} ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}, "
          f"input {matcher.resolution}², {args.views} views per labelled frame\n")
    prop, track = [], []
    for clip in args.clips.split(","):
        video, labels = CLIPS[clip]
        if not video.is_file():
            print(f"({clip}: {video} absent, skipped)")
            continue
        data = np.load(labels)
        idx, kps = data["frame_idx"].astype(int), data["keypoints_xy"].astype(np.float64)
        frames = read_frames_at(video, range(int(idx.max()) + 1))
        height, width = frames[0].shape[:2]
        rng = np.random.default_rng(0)
        for row in propagation_rows(matcher, frames, idx, kps, width, height, rng):
            prop.append((clip, *row))
        if not args.skip_tracking:
            rows, ms = tracking_rows(model, video, frames, idx, kps, width, height, rng, args.resolution)
            track += [(clip, *r, ms) for r in rows]
    print("## Label propagation: suggestions already within PCK@0.1 (clicks saved)\n")
    print("| clip | labelled frames | suggestions | within PCK@0.1 | points | ms/frame (features) |")
    print("|---|---|---|---|---|---|")
    for clip, k, name, hits, n, ms in prop:
        print(f"| {clip} | {k} | {name} | {hits / max(n, 1):.3f} | {n} | {'' if ms is None else f'{ms:.0f}'} |")
    if track:
        print("\n## Point tracking from the first labelled frame (TAP-Vid style, 256²)\n")
        print("| clip | method | δ_avg | occlusion accuracy | inference ms/frame |")
        print("|---|---|---|---|---|")
        for clip, name, d, oa, ms in track:
            print(f"| {clip} | {name} | {d:.3f} | {'—' if oa is None else f'{oa:.3f}'} | "
                  f"{f'{ms:.0f}' if name.startswith('features') else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
