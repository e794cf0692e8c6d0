"""FLOPs per frame of the engine's forward on Stable Diffusion 1.5, counted exactly (no weights, no GPU).

The SD 1.5 UNet and VAE (and TAESD, diffusers' ``AutoencoderTiny`` at full size) are built from their configs
on PyTorch's ``meta`` device and run under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
floating-point operations of every matmul, convolution and attention (2 per multiply-add). The UNet runs the
way the engine runs it (``engine.unet_blocks.unet_forward_until``): the default layers ``up`` stop after the
last up block (the 64² layers); "UNet to 32²" stops after ``up_blocks.2``, the last block with 32² cross-
attention (at 512² input). Whole frame and crop differ in what the pixels show, not in cost: a crop
resized to the same side costs the same.

The second table is the feature correspondence (``engine.correspond``, ``ppmtrack points``, label
propagation) on the same forward's decoder features: the cosine correlation of N point descriptors with
every cell of the up path's feature grid (counted the same way, on the CPU), plus the kernel soft-argmax read-out
(``engine.correspond.correlation_flops``: ~10 operations per point and cell, an estimate: the counter sees
only the matrix product).

    python bench/flops.py [--keypoints 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import SD15_UNET_CONFIG, SD15_VAE_CONFIG  # noqa: E402

ROWS = (("whole frame", 512), ("crop", 512), ("crop", 384), ("crop", 256))


def count(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def main(argv=None) -> int:
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from ppmtrack.engine.encoders import TAESD_CONFIG
    from ppmtrack.engine.unet_blocks import unet_forward_until

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keypoints", type=int, default=20, help="(the cost does not depend on it: PEI)")
    args = parser.parse_args(argv)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
        vae = AutoencoderKL(**SD15_VAE_CONFIG).eval()
        taesd = AutoencoderTiny(**TAESD_CONFIG).eval()
        conditioning = torch.zeros(1, 77, 768)
        timestep = torch.tensor([10])
    results = []
    with torch.no_grad():
        for label, side in ROWS:
            images = torch.zeros(1, 3, side, side, device="meta")
            latents = torch.zeros(1, 4, side // 8, side // 8, device="meta")
            row = {"input": f"{label} {side}²",
                   "vae": count(lambda x: vae.encode(x).latent_dist.mean, images),
                   "taesd": count(taesd.encoder, images),
                   "unet_64": count(unet_forward_until, unet, latents, timestep, conditioning, ("up_blocks", 3)),
                   "unet_32": count(unet_forward_until, unet, latents, timestep, conditioning, ("up_blocks", 2))}
            results.append(row)
    t = 1e12
    print("FLOPs per frame (TFLOP, 1 frame, SD 1.5 architecture, torch.utils.flop_counter; "
          f"{args.keypoints} keypoints in one forward, PEI)\n")
    print("| input | VAE enc | TAESD enc | UNet (up, default) | UNet to 32² | VAE + UNet | TAESD + UNet | "
          "VAE + UNet to 32² | TAESD + UNet to 32² |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = [r["vae"], r["taesd"], r["unet_64"], r["unet_32"], r["vae"] + r["unet_64"], r["taesd"] + r["unet_64"],
                 r["vae"] + r["unet_32"], r["taesd"] + r["unet_32"]]
        print(f"| {r['input']} | " + " | ".join(f"{c / t:.3f}" for c in cells) + " |")
    print_correspondence(args.keypoints, results)
    return 0


def print_correspondence(n_points: int, results: list[dict]) -> None:
    """The correspondence read-out's cost beside the forward's (second table of the module docstring)."""
    from ppmtrack.engine.correspond import correlation, correlation_flops

    # the up path's cross-attention layers: 3 per up block with attention, at 1280, 640 and 320 channels
    channels = 3 * sum(SD15_UNET_CONFIG["block_out_channels"][:3])
    print(f"\nFeature correspondence, {n_points} points (GFLOP per frame; descriptor {channels} channels)\n")
    print("| input | grid | correlation (counted) | + read-out (estimate) | share of VAE + UNet |")
    print("|---|---|---|---|---|")
    for (label, side), r in zip(ROWS[:1] + ROWS[2:], results[:1] + results[2:], strict=True):
        cells = (side // 8) ** 2
        grid = torch.zeros(1, side // 8, side // 8, channels)
        counted = count(correlation, torch.zeros(n_points, channels), grid)
        total = counted + correlation_flops(n_points, cells, channels) - 2 * cells * channels * n_points
        print(f"| {label} {side}² | {side // 8}² | {counted / 1e9:.2f} | {total / 1e9:.2f} | "
              f"{total / (r['vae'] + r['unet_64']):.2e} |")


if __name__ == "__main__":
    sys.exit(main())
