"""Measurements of several-animal tracking (docs/multi-animal.md): labels for the fly pair, and frames/s.

    python bench/multi_animal.py fly-labels OUT_DIR [--first 0 --last 300 --support 20,90,160,240]
        Writes OUT_DIR/flies_support.json and flies_truth.json from the SLEAP *predictions* shipped with the
        fly pair (../shared/data/sleap_centered_pair): per frame the two highest-scoring predicted instances
        with score >= --min-score, as individuals named by SLEAP's (fragmented) track. Approximate: these are
        a model's predictions, not hand labels, and their identities are not ground truth.
    python bench/multi_animal.py fps VIDEO ENGINE [--animals 1,2,4 --frames 40]
        Frames/s of 'ppmtrack track --animals N' on the first --frames frames, for each N, on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
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


def fps(video: str, engine_path: str, animals: list[int], n_frames: int) -> None:
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
                                        progress=False)
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
    args = ap.parse_args()
    if args.cmd == "fly-labels":
        fly_labels(args.out, args.first, args.last, [int(f) for f in args.support.split(",")], args.min_score)
    else:
        fps(args.video, args.engine, [int(n) for n in args.animals.split(",")], args.frames)


if __name__ == "__main__":
    main()
