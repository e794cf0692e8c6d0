"""End-to-end benchmark: video file → tracks CSV (+ annotated video) through `pipelines.track.track_video`,
with the run's own per-stage busy times, the pipeline's overhead share, and the live latency (frame decoded →
smoothed keypoints, batch 1).

    python bench/bench_pipeline.py                              # tiny preset, CPU, the sample video
    python bench/bench_pipeline.py --arch sd15 --keypoints 20 --batch-size 16 --compile --cuda-graphs  # GPU

The overhead target (CPU, tiny preset): decode + smoothing + writing ≤ 10 % of inference time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import describe_model, model_arguments, use_threads  # noqa: E402
from bench_inference import (  # noqa: E402
    SAMPLE,
    build_model,
    machine_line,
    make_engine,
    median,
    peak_memory_mib,
    print_table,
    reset_peak,
    sync,
)

from ppmtrack.engine.speed import SpeedConfig  # noqa: E402


def pipeline_run(engine, video: Path, batch: int, write_video: bool, stop: int | None) -> dict:
    """One `track_video` run (it resets the engine's stream state itself); returns its summary as a dict."""
    from ppmtrack.pipelines.track import track_video

    with tempfile.TemporaryDirectory() as tmp:
        summary = track_video(video, engine, tmp, batch_size=batch, write_video=write_video, progress=False,
                              stop=stop)
    return summary.to_dict()


def live_latency_ms(engine, video: Path, frames: int) -> list[float]:
    """Per-frame latency with batch 1: from a frame leaving the decoder to its smoothed keypoints."""
    from ppmtrack.pipelines.sources import open_source
    from ppmtrack.tracker import OnlineSmoother

    smoother = OnlineSmoother(len(engine.names))
    engine.reset_stream()
    out = []
    with open_source(video, stop=frames) as source:
        for item in source:
            image = getattr(item, "image", None)
            if image is None:
                continue
            t0 = time.perf_counter()
            pred = engine.predict(image[None])
            smoother.update(item.time, pred.keypoints[0], pred.confidence[0])
            sync(engine.model.device)
            out.append((time.perf_counter() - t0) * 1000)
    return out[1:] if len(out) > 1 else out  # the first frame carries one-off costs


def parse_args(argv=None):
    p = model_arguments(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--video", default=str(SAMPLE))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--stop", type=int, default=None, help="track frames [0, stop) only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--live-frames", type=int, default=30, help="frames for the latency measurement (0: skip)")
    p.add_argument("--no-video", action="store_true", help="no annotated video")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--encoder", default="vae", help="vae | taesd | untrained | a folder")
    p.add_argument("--reuse-every", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    use_threads(args)
    speed = SpeedConfig(compile=args.compile, cuda_graphs=args.cuda_graphs, channels_last=args.channels_last,
                        encoder=args.encoder, reuse_every=args.reuse_every)
    model = build_model(args.arch, args.device, args.dtype)
    engine = make_engine(model, args.keypoints, args.resolution, speed, args.engine)
    video = Path(args.video)
    print(machine_line(model.device))
    print(f"{describe_model(args, model)}, "
          f"resolution {engine.resolution}², keypoints {len(engine.names)}, batch {args.batch_size}, "
          f"video {video.name}, annotated video {'off' if args.no_video else 'on'}, "
          f"switches {speed.changes()}, "
          f"repeats {args.repeats} (medians)")
    pipeline_run(engine, video, args.batch_size, not args.no_video, min(args.stop or 16, 2 * args.batch_size))
    reset_peak(model.device)
    runs = [pipeline_run(engine, video, args.batch_size, not args.no_video, args.stop)
            for _ in range(args.repeats)]
    rows = []
    busy = {name: median([r["stages"][name]["busy_s"] or 0.0 for r in runs]) for name in runs[0]["stages"]}
    frames = {name: runs[0]["stages"][name]["frames"] for name in busy}
    infer = busy["inference"]
    for name in busy:
        n = frames[name] or 1
        rows.append([name, 1000 * busy[name] / n, n / busy[name] if busy[name] else None,
                     f"{100 * busy[name] / infer:.1f} %" if infer else None])
    print_table("Pipeline stages (busy time in track_video; share of inference)",
                ["stage", "ms/frame", "frames/s", "share of inference"], rows)
    overhead = busy["decode"] + busy["smoothing"] + busy["writing"]
    wall = median([r["wall_time_s"] for r in runs])
    n_frames = runs[0]["frames_processed"]
    finalize = median([sum(r["finalize_s"].values()) for r in runs])
    print_table("End to end", ["measure", "value"], [
        ["frames", n_frames],
        ["wall s (median)", wall],
        ["frames/s end to end", n_frames / wall if wall else None],
        ["pipeline overhead (decode + smoothing + writing) / inference", f"{100 * overhead / infer:.1f} %"],
        ["end of run (RTS + CSV rewrite) s", finalize],
        ["peak GPU MiB", peak_memory_mib(model.device)],
    ])
    if args.live_frames:
        lat = live_latency_ms(engine, video, args.live_frames)
        print_table("Live latency (batch 1, frame decoded → smoothed keypoints)", ["measure", "ms"], [
            ["median", median(lat)], ["p95", float(np.percentile(lat, 95))], ["max", max(lat)],
            ["frames", len(lat)]])


if __name__ == "__main__":
    main()
