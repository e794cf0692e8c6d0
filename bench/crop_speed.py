"""Inference cost per frame with and without animal-centred crops (``ppmtrack track --crop``), same engine and frames.

Runs the engine on the first ``--frames`` frames of a video in batches of ``--batch``: whole frames
(``--crop off``), crops at the engine's resolution and crops at smaller ``--crop-sizes``, each through the same
code as a tracking run (:func:`pipelines.crops.predict_with_crops`, policy state carried from batch to batch,
but cropping even where a crop would not enlarge the animal, so each size's own cost is measured), the variants
interleaved over ``--repeats`` rounds so that a change in machine load hits them alike. Reports the median
ms/frame of each (the first batch is always whole frames), and the crop statistics of the last round.

    python bench/crop_speed.py [--video samples/sample.mp4] [--engine ENGINE] [--frames 32] [--crop-sizes 128]

Default engine: a tiny engine with random prompts at 256² (speed does not depend on the prompts; crops then
follow whatever the random prompts find).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def read_frames(path: Path, n: int) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(n), container.decode(video=0), strict=False)]
    return np.stack(frames)


def random_engine(resolution: int = 256, keypoints: int = 10):
    import torch

    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    g = torch.Generator().manual_seed(0)
    return Engine(load_model("tiny"), [f"k{i}" for i in range(keypoints)], torch.randn(keypoints, 768, generator=g),
                  torch.randn(768, generator=g), AdaptConfig(resolution=resolution))


def run_once(engine, frames: np.ndarray, batch: int, crop_size: int) -> tuple[float, dict | None]:
    """Seconds for all frames, and the crop statistics (None for whole frames, ``crop_size`` 0).

    The policy crops whatever the gain (``min_gain`` 0), so that a crop size's own cost is measured: every
    frame after the first batch is a crop, unless a crop loses the animal."""
    from ppmtrack.pipelines.crops import CropParams, CropPolicy, predict_with_crops

    policy = None if crop_size == 0 else CropPolicy(engine.resolution, CropParams(size=crop_size, min_gain=0.0))
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch]
        if policy is None:
            engine.predict(chunk)
        else:
            predict_with_crops(engine, chunk, policy)
    return time.perf_counter() - t0, None if policy is None else policy.stats.to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=str(ROOT / "samples" / "sample.mp4"))
    parser.add_argument("--engine", help="an engine file (default: random tiny prompts at 256²)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop-sizes", default="128", dest="crop_sizes",
                        help="crop sizes besides the engine's resolution (comma-separated multiples of 64)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ppmtrack.engine import Engine

    engine = Engine.load(args.engine) if args.engine else random_engine()
    frames = read_frames(Path(args.video), args.frames)
    sizes = [0, engine.resolution] + [int(s) for s in args.crop_sizes.split(",") if s]
    run_once(engine, frames[:args.batch], args.batch, 0)  # warm-up
    times: dict[int, list[float]] = {s: [] for s in sizes}
    stats: dict[int, dict | None] = {}
    for _ in range(args.repeats):
        for s in sizes:
            seconds, stats[s] = run_once(engine, frames, args.batch, s)
            times[s].append(1000 * seconds / len(frames))
    print(f"machine: {platform.node()} ({platform.processor() or platform.machine()}), CPU, {args.threads} threads; "
          f"{len(frames)} frames of {Path(args.video).name} ({frames.shape[2]}x{frames.shape[1]}), batch "
          f"{args.batch}, engine {args.engine or 'random tiny'} at {engine.resolution}², median of {args.repeats}")
    print("| variant | ms/frame | crop frames | whole frames | re-acquisitions |")
    print("|---|---|---|---|---|")
    for s in sizes:
        name = "whole frames (--crop off)" if s == 0 else f"crops {s}²"
        st = stats[s] or {}
        print(f"| {name} | {statistics.median(times[s]):.0f} | {st.get('crop_frames', '–')} | "
              f"{st.get('whole_frames', len(frames))} | {st.get('reacquisitions', '–')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
