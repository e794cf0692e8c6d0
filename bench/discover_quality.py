"""Quality of discovered keypoints (`ppmtrack discover`) by the StableKeypoints protocol, against controls.

On the bundled sample (exact truth, samples/truth.json): discovery runs on every ``--step``-th frame; a linear
regression without bias (the paper's protocol) maps the K discovered points of a frame to the 10 true keypoints,
fitted on the even frames of that set and scored on the odd ones; the error is divided by the diagonal of the
true keypoints' bounding box (as PCK normalises), so 0.1 means a tenth of the animal's size. Rows:

* ``discovered``: the optimised tokens (selection and test-time averaging as the engine does them);
* ``random tokens``: the same N random starting tokens, not optimised, with the same selection and read-out
  (the control: any gain of ``discovered`` over it is the optimisation's);
* ``PPM 1 / 3 frames``: an engine adapted on the first 1 or 3 frames of samples/support.json, scored on the same
  odd frames directly (no regression: its points are already the true keypoints' names), for scale.

Also: the equivariance error under held-out warps (mean distance between the warped peak and the peak on the
warped frame, as a fraction of the input side), seconds per run, and with ``--flops`` the FLOPs of one
optimisation step and of locating one frame on SD 1.5 (built on the meta device: no weights needed).

    python bench/discover_quality.py --model tiny --seeds 0 1 --steps 40 [--ppm] [--flops]

With the ``tiny`` (random-weight) model these numbers show whether the mechanics work (the optimisation beats
its own random start; stable across seeds or not), not what discovery achieves with Stable Diffusion's trained
attention.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def truth_frames(step: int):
    from ppmtrack.pipelines.io.annotation import read_annotation
    from ppmtrack.pipelines.sources import read_frames_at

    truth = read_annotation(ROOT / "samples" / "truth.json")
    idx = list(range(0, len(truth.frames), step))
    got = read_frames_at(ROOT / "samples" / "sample.mp4", idx)
    return idx, [got[i] for i in idx], truth.keypoints[idx]


def normaliser(truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.nanmax(truth, axis=1) - np.nanmin(truth, axis=1), axis=1)


def ppm_error(model, n_support: int, frames, truth, test: np.ndarray, resolution: int, steps: int) -> float:
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.pipelines.io.annotation import read_annotation

    support = read_annotation(ROOT / "samples" / "support.json").to_support()
    support.images, support.keypoints = support.images[:n_support], support.keypoints[:n_support]
    support.labels = support.labels[:n_support]
    engine = Engine.adapt(support, model, AdaptConfig(resolution=resolution, steps=steps))
    pred = np.concatenate([engine.predict(frames[i:i + 4]).keypoints for i in range(0, len(frames), 4)])
    err = np.linalg.norm(pred[test] - truth[test], axis=-1)
    return float(np.nanmean(err / normaliser(truth)[test, None]))


def flops_sd15(candidates: int, batch: int, resolution: int) -> dict:
    """FLOPs of one optimisation step's forwards (2 × batch images, N-token conditioning) and of one view's
    forward, on SD 1.5 built on the meta device; the backward is not counted (about twice the forward)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import SD15_UNET_CONFIG

    from ppmtrack.engine.unet_blocks import unet_forward_until

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
        cond = torch.zeros(1, candidates, 768)
        latents = torch.zeros(1, 4, resolution // 8, resolution // 8)
        t = torch.tensor([10])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet_forward_until(unet, latents, t, cond, ("up_blocks", 3))
    one = counter.get_total_flops()
    return {"one view forward": one, "optimisation step forwards": 2 * batch * one}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--step", type=int, default=8, help="every STEP-th frame of the sample (default: 8, 25)")
    parser.add_argument("--keypoints", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8, dest="top_k")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--tta-views", type=int, default=2, dest="tta_views")
    parser.add_argument("--ppm", action="store_true", help="also adapt PPM engines on 1 and 3 labelled frames")
    parser.add_argument("--ppm-steps", type=int, default=60, dest="ppm_steps")
    parser.add_argument("--flops", action="store_true", help="also count SD 1.5 FLOPs (meta device)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ppmtrack.engine.discover import DiscoverConfig, discover, equivariance_error, regression_error
    from ppmtrack.engine.models import load_model

    model = load_model(args.model)
    idx, frames, truth = truth_frames(args.step)
    fit = np.zeros(len(idx), bool)
    fit[::2] = True
    norm = normaliser(truth)
    print(f"# sample: {len(idx)} frames (every {args.step}th), K={args.keypoints}, N={args.candidates}, "
          f"k={args.top_k}, {args.steps} steps, lr {args.lr}, {args.resolution}², TTA {args.tta_views} views; "
          f"model {args.model}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| run | seed | regression error (test half) | equivariance error (held-out warps) | seconds |")
    print("|---|---|---|---|---|")
    rows = {}
    for seed in args.seeds:
        cfg = DiscoverConfig(resolution=args.resolution, candidates=args.candidates, top_k=args.top_k,
                             steps=args.steps, lr=args.lr, batch_size=2, views_per_frame=2,
                             tta_views=args.tta_views, seed=seed)
        for name, optimise in (("discovered", True), ("random tokens", False)):
            t0 = time.perf_counter()
            found = discover(model, frames, args.keypoints, cfg, optimise=optimise)
            seconds = time.perf_counter() - t0
            reg = regression_error(found.keypoints, truth, norm, fit)
            eq = equivariance_error(model, found, frames[1::3], n_warps=2, seed=1000 + seed)
            rows.setdefault(name, []).append((reg, eq))
            print(f"| {name} | {seed} | {reg:.3f} | {eq:.3f} | {seconds:.0f} |", flush=True)
    for name, values in rows.items():
        v = np.array(values)
        print(f"| {name} | mean ± sd | {v[:, 0].mean():.3f} ± {v[:, 0].std():.3f} | "
              f"{v[:, 1].mean():.3f} ± {v[:, 1].std():.3f} | |")
    if args.ppm:
        for n in (1, 3):
            t0 = time.perf_counter()
            err = ppm_error(model, n, frames, truth, ~fit, args.resolution, args.ppm_steps)
            print(f"| PPM, {n} labelled frame{'s' if n > 1 else ''} ({args.ppm_steps} steps) | 0 | {err:.3f} "
                  f"(direct, no regression) | | {time.perf_counter() - t0:.0f} |", flush=True)
    if args.flops:
        for k, v in flops_sd15(args.candidates, 2, 512).items():
            print(f"SD 1.5 at 512², N={args.candidates}: {k}: {v / 1e9:.0f} GFLOP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
