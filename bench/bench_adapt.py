"""Adaptation benchmark: time of each phase of few-shot adaptation and peak memory.

Five support frames of the sample video (from its ground truth), keypoints padded to `--keypoints` with the
midpoints of skeleton edges (same cost as real annotations).

    python bench/bench_adapt.py --fg-steps 5 --steps 5 --views-per-frame 2      # tiny preset, CPU, short
    python bench/bench_adapt.py --arch sd15 --keypoints 20                       # GPU: the 60 s target
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import describe_model, model_arguments, use_threads  # noqa: E402
from bench_inference import (  # noqa: E402
    SAMPLE,
    SAMPLE_TRUTH,
    build_model,
    machine_line,
    peak_memory_mib,
    print_table,
    reset_peak,
    sync,
)

from ppmtrack.engine import AdaptConfig, Engine  # noqa: E402
from ppmtrack.engine.support import SupportSet  # noqa: E402

SUPPORT_FRAMES = (10, 50, 100, 150, 190)


def support_set(n_keypoints: int, frames=SUPPORT_FRAMES) -> SupportSet:
    """Sample-video support frames with their true keypoints, padded to `n_keypoints` with edge midpoints."""
    from ppmtrack.pipelines.io.annotation import read_annotation
    from ppmtrack.pipelines.sources import read_frames_at

    truth = read_annotation(SAMPLE_TRUTH)
    rows = [next(i for i, f in enumerate(truth.frames) if f.frame == n) for n in frames]
    kp = truth.keypoints[rows]
    names = list(truth.names)
    index = {n: i for i, n in enumerate(names)}
    edges = [(index[a], index[b]) for a, b in truth.skeleton]
    extra = []
    while len(names) + len(extra) < n_keypoints:
        a, b = edges[len(extra) % len(edges)]
        w = 0.5 / (1 + len(extra) // len(edges))
        extra.append((1 - w) * kp[:, a] + w * kp[:, b])
    if extra:
        kp = np.concatenate([kp, np.stack(extra, axis=1)], axis=1)
        names += [f"extra{i}" for i in range(len(extra))]
    kp = kp[:, :n_keypoints]
    names = names[:n_keypoints]
    images = read_frames_at(SAMPLE, list(frames))
    skeleton = [e for e in truth.skeleton if e[0] in names and e[1] in names]
    return SupportSet(names, [images[n] for n in frames], kp, skeleton=skeleton)


def parse_args(argv=None):
    p = model_arguments(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        engine=False)
    p.add_argument("--support-frames", type=int, default=5)
    defaults = AdaptConfig()
    p.add_argument("--fg-steps", type=int, default=defaults.fg_steps)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--views-per-frame", type=int, default=defaults.views_per_frame)
    p.add_argument("--batch", type=int, default=defaults.batch_size)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    use_threads(args)
    model = build_model(args.arch, args.device, args.dtype)
    support = support_set(args.keypoints, SUPPORT_FRAMES[:args.support_frames])
    cfg = AdaptConfig(resolution=args.resolution, fg_steps=args.fg_steps, steps=args.steps,
                      views_per_frame=args.views_per_frame, batch_size=args.batch)
    print(machine_line(model.device))
    print(f"{describe_model(args, model)}, "
          f"keypoints {args.keypoints}, support frames {len(support.images)}, "
          f"views/frame {cfg.views_per_frame}, "
          f"foreground steps {cfg.fg_steps}, keypoint steps {cfg.steps}, batch {cfg.batch_size}")
    marks = {}
    t_start = time.perf_counter()

    def progress(phase: str, step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        marks.setdefault(f"{phase} first", now)
        marks[f"{phase} last"] = now

    reset_peak(model.device)
    engine = Engine.adapt(support, model, cfg, progress=progress, validation="off")
    sync(model.device)
    total = time.perf_counter() - t_start
    fg0 = marks.get("foreground first", t_start)
    kp0 = marks.get("keypoints first", marks.get("foreground last", fg0))
    rows = [
        ["views (letterbox, FARA, augment, encode) + first step", fg0 - t_start],
        ["foreground prompt", kp0 - fg0],
        ["keypoint prompts", marks.get("keypoints last", kp0) - kp0],
        ["total", total],
        ["peak GPU MiB", peak_memory_mib(model.device)],
        ["peak process RSS MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024],
        ["resolution", engine.resolution],
    ]
    print_table("Adaptation", ["phase", "s (or MiB)"], rows)


if __name__ == "__main__":
    main()
