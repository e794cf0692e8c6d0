"""Inference benchmark: per-stage time table, optimisation variants side by side, batch-size sweep.

    python bench/bench_inference.py                          # tiny preset on the CPU, sample video
    python bench/bench_inference.py --arch sd15 --keypoints 20 --batch-sizes 1,2,4,8,16,32   # on a GPU

Every number is the median over `--repeats` timed runs after warm-up (compilation and CUDA-graph recording
happen in the warm-up and are reported apart). See bench/README.md and docs/performance.md.
The helpers here (`build_model`, `make_engine`, `Timer`, `print_table`, ...) are shared by the other bench
scripts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from arguments import describe_model, model_arguments, use_threads  # noqa: E402

from ppmtrack.engine import AdaptConfig, Engine  # noqa: E402
from ppmtrack.engine.fgar import fuse_layers_fgar  # noqa: E402
from ppmtrack.engine.models import SD_SCHEDULER_CONFIG, DiffusionModel, load_model, resolve_device, resolve_dtype  # noqa: E402
from ppmtrack.engine.speed import SpeedConfig  # noqa: E402

SAMPLE = ROOT / "samples" / "sample.mp4"
SAMPLE_SUPPORT = ROOT / "samples" / "support.json"
SAMPLE_TRUTH = ROOT / "samples" / "truth.json"

# Stable Diffusion 1.5's UNet and VAE (stable-diffusion-v1-5 configs), for random-weight timing runs.
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
    cross_attention_dim=768, norm_num_groups=32,
)
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
STAGES = ("decode", "preprocess", "VAE encode", "UNet", "map capture + FGAR", "localisation", "smoothing",
          "writing")


# ---- shared helpers ---------------------------------------------------------------------------------------
def build_model(arch: str, device: str | None = None, dtype: str | None = None,
                seed: int = 0) -> DiffusionModel:
    """`tiny` (the preset) or `sd15` (SD 1.5's architecture with random weights: same cost as real ones)."""
    if arch == "tiny":
        return load_model("tiny", device=device, dtype=dtype)
    if arch != "sd15":
        return load_model(arch, device=device, dtype=dtype)  # a real model: hub id or folder
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ppmtrack.engine.models import _alphas_cumprod

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.random.fork_rng(devices=[]), torch.device(dev):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    for m in (unet, vae):
        m.requires_grad_(False).eval().to(device=dev, dtype=dt)
    return DiffusionModel(name="sd15-random", vae=vae, unet=unet,
                          alphas_cumprod=_alphas_cumprod(SD_SCHEDULER_CONFIG), device=dev, dtype=dt,
                          revision=f"seed{seed}")


def model_copy(model: DiffusionModel, dtype: str | None = None) -> DiffusionModel:
    """An independent copy (speed switches change modules in place), optionally in another dtype."""
    dt = resolve_dtype(dtype, model.device) if dtype else model.dtype
    vae, unet = copy.deepcopy(model.vae), copy.deepcopy(model.unet)
    for m in (vae, unet):
        m.to(dtype=dt)
    return dataclasses.replace(model, vae=vae, unet=unet, dtype=dt)


def make_engine(model: DiffusionModel, keypoints: int, resolution: int | None = None,
                speed: SpeedConfig | None = None, engine_file: str | None = None) -> Engine:
    """An engine on `model`: loaded from `engine_file`, or with random prompts (same cost as adapted ones)."""
    if engine_file:
        return Engine.load(engine_file, model=model, speed=speed)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randn(keypoints, model.cross_attention_dim, generator=g)
    fg = torch.randn(model.cross_attention_dim, generator=g)
    names = [f"kp{i}" for i in range(keypoints)]
    return Engine(model, names, prompts, fg, AdaptConfig(resolution=resolution), speed=speed)


def sample_frames(n: int) -> np.ndarray:
    """The first `n` frames of the sample video (repeated if n > 200), (n, 240, 320, 3) RGB uint8."""
    from ppmtrack.pipelines.sources import read_frames_at

    got = read_frames_at(SAMPLE, list(range(min(n, 200))))
    return np.stack([got[i % len(got)] for i in range(n)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Accumulates seconds per named stage; `with timer("stage"):` synchronises the device on both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                sync(timer.device)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                sync(timer.device)
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Span()


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, MiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def machine_line(device: torch.device) -> str:
    """Machine, device and versions, for the table header."""
    import diffusers

    from ppmtrack.engine.api import package_version

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        where = f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return (f"machine: {where}; python {platform.python_version()}, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, ppmtrack {package_version()}")


def print_table(title: str, header: list[str], rows: list[list], file=None) -> None:
    """A GitHub-markdown table (pastes into docs/performance.md as is)."""
    out = file or sys.stdout
    print(f"\n### {title}\n", file=out)
    cells = [[_fmt(c) for c in r] for r in rows]
    print("| " + " | ".join(header) + " |", file=out)
    print("|" + "|".join("---" for _ in header) + "|", file=out)
    for r in cells:
        print("| " + " | ".join(r) + " |", file=out)
    out.flush()


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def median(values) -> float:
    return float(statistics.median(values))


# ---- stages -----------------------------------------------------------------------------------------------
def decode_ms_per_frame(n: int) -> float:
    """Decoding the sample video with PyAV (the pipeline's decoder), ms per frame."""
    import av

    t0 = time.perf_counter()
    count = 0
    with av.open(str(SAMPLE)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
            if count >= n:
                break
    return (time.perf_counter() - t0) * 1000 / max(count, 1)


def stage_times(engine: Engine, frames: np.ndarray, batch: int, write_video: bool = True) -> dict[str, float]:
    """Seconds per stage for predicting and writing `frames` in batches of `batch` (one pass)."""
    from ppmtrack.pipelines.io.csv import TracksCsvWriter
    from ppmtrack.pipelines.io.video import AnnotatedVideoWriter
    from ppmtrack.tracker import OnlineSmoother

    dev = engine.model.device
    timer = Timer(dev)
    k = len(engine.names)
    smoother = OnlineSmoother(k)
    engine.reset_stream()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        csv = TracksCsvWriter(Path(tmp) / "t.csv", engine.names)
        h, w = frames.shape[1:3]
        video = AnnotatedVideoWriter(Path(tmp) / "t.mp4", w, h, 30, engine.names) if write_video else None
        engine.cache_prompt()
        for s in range(0, len(frames), batch):
            chunk = frames[s:s + batch]
            with timer("preprocess"):
                x, box = engine.prepare(chunk)
            with timer("VAE encode"):
                z = engine.extractor.encode(x)
            with timer("UNet"):
                engine.extractor.layer_maps(z, engine.conditioning(), n_tokens=0)
            with timer("maps"):
                maps = (engine.map_runner or engine.eager_maps)(z)
            with timer("FGAR"):
                fg = maps[:, :, k].mean(dim=1)
                fuse_layers_fgar(maps[:, :, :k].transpose(1, 2), fg[:, None, None], engine.fgar.reweight,
                                 engine.fgar.refine)
            with timer("readout"):
                pred = engine.read_out(maps, box, False)
            for i in range(len(chunk)):
                t = (s + i) / 30.0
                with timer("smoothing"):
                    xy, vis = smoother.update(t, pred.keypoints[i], pred.confidence[i])
                with timer("writing"):
                    csv.write_frame(s + i, t, xy, pred.confidence[i], vis, pred.keypoints[i])
                    if video is not None:
                        video.write(chunk[i], xy, pred.confidence[i], vis, time=t)
        with timer("writing"):
            csv.close()
            if video is not None:
                video.close()
    sec = timer.seconds
    out = {
        "preprocess": sec["preprocess"],
        "VAE encode": sec["VAE encode"],
        "UNet": sec["UNet"],  # the same forward without map capture
        "map capture + FGAR": max(sec["maps"] - sec["UNet"], 0.0) + sec["FGAR"],
        "localisation": max(sec["readout"] - sec["FGAR"], 0.0),
        "smoothing": sec["smoothing"],
        "writing": sec["writing"],
    }
    return out


def stage_table(engine: Engine, frames: np.ndarray, batch: int, repeats: int, write_video: bool = True
                ) -> list[list]:
    """Rows of the stage table: median ms/frame over repeats, frames/s, share of the total."""
    runs = [stage_times(engine, frames, batch, write_video) for _ in range(repeats)]
    n = len(frames)
    ms = {name: median([r[name] for r in runs]) * 1000 / n for name in runs[0]}
    ms = {"decode": median([decode_ms_per_frame(n) for _ in range(repeats)]), **ms}
    total = sum(ms.values())
    rows = [[name, ms[name], 1000 / ms[name] if ms[name] > 0 else None, f"{100 * ms[name] / total:.1f} %"]
            for name in STAGES]
    rows.append(["total (serial)", total, 1000 / total, "100 %"])
    return rows


def predict_ms_per_frame(engine: Engine, frames: np.ndarray, batch: int, repeats: int
                         ) -> tuple[float, float, np.ndarray]:
    """(median ms/frame of preprocess → keypoints, warm-up seconds, keypoints of the last run)."""
    dev = engine.model.device

    def one_pass():
        engine.reset_stream()
        out = []
        for s in range(0, len(frames), batch):
            out.append(engine.predict(frames[s:s + batch]).keypoints)
        sync(dev)
        return np.concatenate(out)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        one_pass()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        kp = one_pass()
        times.append((time.perf_counter() - t0) * 1000 / len(frames))
    return median(times), warm, kp


# ---- variants ---------------------------------------------------------------------------------------------
def variant_list(names: str, device: torch.device, reuse: list[int], encoder: str) -> list[tuple]:
    """(label, SpeedConfig, dtype or None) of the requested variants; GPU-only ones are skipped on the CPU."""
    every = {
        "eager": SpeedConfig(prompt_kv_cache=False, truncate=False),
        "kv-cache": SpeedConfig(truncate=False),
        "default": SpeedConfig(),
        "channels-last": SpeedConfig(channels_last=True),
        "compile": SpeedConfig(compile=True),
        "cuda-graphs": SpeedConfig(cuda_graphs=True),
        "compile+cuda-graphs": SpeedConfig(compile=True, cuda_graphs=True),
        "float16": SpeedConfig(),
        "bfloat16": SpeedConfig(),
        "tiny-vae": SpeedConfig(encoder=encoder),
        **{f"reuse-{k}": SpeedConfig(reuse_every=k) for k in reuse},
        "all": SpeedConfig(channels_last=True, compile=True, cuda_graphs=device.type == "cuda",
                           encoder=encoder),
    }
    chosen = list(every) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for name in dict.fromkeys(chosen):
        if name not in every:
            raise SystemExit(f"unknown variant {name!r}; choose among {', '.join(every)}")
        if device.type != "cuda" and ("cuda-graphs" in name or name == "float16"):
            continue  # GPU-only
        out.append((name, every[name], name if name in ("float16", "bfloat16") else None))
    return out


def run_variants(master: DiffusionModel, args, frames: np.ndarray) -> list[list]:
    rows = []
    reference = None
    base_ms = None
    for label, speed, dtype in variant_list(args.variants, master.device, args.reuse, args.encoder):
        model = model_copy(master, dtype)
        reset_peak(model.device)
        engine = make_engine(model, args.keypoints, args.resolution, speed, args.engine)
        ms, warm, kp = predict_ms_per_frame(engine, frames, args.batch_size, args.repeats)
        if reference is None:
            reference, base_ms = kp, ms
        shift = np.linalg.norm(kp - reference, axis=-1)
        rows.append([label, ms, 1000 / ms, base_ms / ms, warm, float(np.median(shift)), float(shift.max()),
                     peak_memory_mib(model.device)])
        del engine, model
        if master.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def run_batch_sweep(master: DiffusionModel, args, frames: np.ndarray) -> list[list]:
    rows = []
    label, speed, dtype = variant_list(args.sweep_variant, master.device, args.reuse, args.encoder)[0]
    for b in args.batch_sizes:
        model = model_copy(master, dtype)
        reset_peak(model.device)
        engine = make_engine(model, args.keypoints, args.resolution, speed, args.engine)
        n = max(b, len(frames) // b * b)
        batch_frames = np.concatenate([frames] * (n // len(frames) + 1))[:n]
        ms, warm, _ = predict_ms_per_frame(engine, batch_frames, b, args.repeats)
        rows.append([b, ms, 1000 / ms, warm, peak_memory_mib(model.device)])
        del engine, model
    return rows


def parse_args(argv=None):
    p = model_arguments(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--frames", type=int, default=16, help="sample-video frames per timed pass")
    p.add_argument("--batch-size", type=int, default=8, help="batch for the stage and variant tables")
    p.add_argument("--batch-sizes", default="1,2,4,8", help="batch sweep, e.g. 1,2,4,8,16,32 ('' to skip)")
    p.add_argument("--sweep-variant", default="default", help="variant used for the batch sweep")
    p.add_argument("--variants",
                   default="eager,kv-cache,default,channels-last,bfloat16,tiny-vae,reuse-2,reuse-4",
                   help="comma-separated, or 'all' (eager, kv-cache, default, channels-last, compile, "
                        "cuda-graphs, compile+cuda-graphs, float16, bfloat16, tiny-vae, reuse-K, all); "
                        "'' to skip")
    p.add_argument("--reuse", default="2,4", help="key-frame periods of the reuse-K variants")
    p.add_argument("--encoder", default="untrained",
                   help="encoder of the tiny-vae variant: untrained | taesd | a folder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-video", action="store_true", help="leave the annotated video out of 'writing'")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.reuse = [int(k) for k in args.reuse.split(",") if k.strip()]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    use_threads(args)
    master = build_model(args.arch, args.device, args.dtype)
    frames = sample_frames(max(args.frames, args.batch_size))
    engine = make_engine(model_copy(master), args.keypoints, args.resolution, SpeedConfig(), args.engine)
    print(machine_line(master.device))
    print(f"{describe_model(args, master)}, "
          f"resolution {engine.resolution}², keypoints {len(engine.names)}, "
          f"frames {len(frames)} of {SAMPLE.name} "
          f"({frames.shape[2]}×{frames.shape[1]}), batch {args.batch_size}, repeats {args.repeats} (medians)")

    stage_times(engine, frames[:args.batch_size], args.batch_size, not args.no_video)  # warm-up
    print_table(f"Stages (default switches, batch {args.batch_size})",
                ["stage", "ms/frame", "frames/s", "share"],
                stage_table(engine, frames, args.batch_size, args.repeats, not args.no_video))
    del engine
    if args.variants:
        print_table(f"Variants (batch {args.batch_size}; preprocess → keypoints; shift vs the first variant)",
                    ["variant", "ms/frame", "frames/s", "speed-up", "warm-up s", "median shift px",
                     "max shift px", "peak GPU MiB"], run_variants(master, args, frames))
    if args.batch_sizes:
        print_table(f"Batch sweep ({args.sweep_variant}; preprocess → keypoints)",
                    ["batch", "ms/frame", "frames/s", "warm-up s", "peak GPU MiB"],
                    run_batch_sweep(master, args, frames))


if __name__ == "__main__":
    main()
