"""Accuracy of adaptation variants on the bundled sample: the measurements behind AdaptConfig's defaults.

Adapts on samples/support.json with each variant, predicts every 7th frame of samples/sample.mp4 and prints
support-frame error, query error and PCK (0.1 and 0.2 of the keypoint bounding box) against samples/truth.json,
plus the FGAR ablations of the default engine. Slow on a CPU (each variant is a full adaptation):

    python bench/adapt_ablation.py                         # every variant, tiny preset
    python bench/adapt_ablation.py --only default ce-vs-mse
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine import AdaptConfig, Engine, FgarConfig
from ppmtrack.engine.augment import AugmentConfig
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.sources import read_frames_at

ROOT = Path(__file__).resolve().parents[1] / "samples"

VARIANTS = {
    "default": {},
    "ce-vs-mse": {"loss": "mse"},
    "no-augmentation": {"views_per_frame": 1, "steps": 200},
    "with-flip": {"augment": AugmentConfig(flip=True)},
    "fine-layers-only": {"layers": "9,10,11,12,13,14"},
}


def score(engine, frames, truth):
    pred = engine.predict(frames)
    err = np.linalg.norm(pred.keypoints - truth, axis=-1)
    size = (np.nanmax(truth, 1) - np.nanmin(truth, 1)).max(1)[:, None]
    return float(np.nanmean(err)), float((err <= 0.1 * size).mean()), float((err <= 0.2 * size).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    args = ap.parse_args()
    support = read_annotation(ROOT / "support.json").to_support()
    truth = read_annotation(ROOT / "truth.json")
    idx = list(range(0, len(truth.frames), 7))
    got = read_frames_at(ROOT / "sample.mp4", idx)
    frames = np.stack([got[i] for i in idx])
    gt = truth.keypoints[idx]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, model {args.model}")
    print(f"{'variant':<22}{'adapt s':>9}{'loss first→last':>20}{'support px':>12}{'query px':>10}"
          f"{'PCK@0.1':>9}{'PCK@0.2':>9}")
    for name in args.only or VARIANTS:
        t0 = time.perf_counter()
        engine = Engine.adapt(support, args.model, AdaptConfig(**VARIANTS[name]), validation="off")
        seconds = time.perf_counter() - t0
        first, last = engine.info["adaptation"]["keypoint_loss"]
        sup, _, _ = score(engine, np.stack(support.images), support.keypoints)
        err, p1, p2 = score(engine, frames, gt)
        print(f"{name:<22}{seconds:>9.0f}{f'{first:.3f}→{last:.3f}':>20}{sup:>12.1f}{err:>10.1f}{p1:>9.2f}{p2:>9.2f}")
        if name == "default":
            for rw, rf in [(False, False), (True, False), (False, True)]:
                engine.fgar = FgarConfig(reweight=rw, refine=rf)
                sup, _, _ = score(engine, np.stack(support.images), support.keypoints)
                err, p1, p2 = score(engine, frames, gt)
                label = f"  fgar rw={int(rw)} rf={int(rf)}"
                print(f"{label:<22}{'':>9}{'':>20}{sup:>12.1f}{err:>10.1f}{p1:>9.2f}{p2:>9.2f}")


if __name__ == "__main__":
    main()
