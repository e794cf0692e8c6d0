"""The command-line preamble the benchmark scripts share: model, device, precision, size and thread options."""

from __future__ import annotations

import argparse

import torch


def model_arguments(parser: argparse.ArgumentParser, engine: bool = True) -> argparse.ArgumentParser:
    """Add ``--arch``, ``--device``, ``--dtype``, ``--resolution``, ``--keypoints``, ``--threads`` (and
    ``--engine`` unless `engine` is False) to `parser`."""
    parser.add_argument("--arch", default="tiny", help="tiny | sd15 (random weights) | a model id or folder")
    if engine:
        parser.add_argument("--engine", help="an engine file to use instead of random prompts (its model: --arch)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: fp16 on CUDA)")
    parser.add_argument("--resolution", type=int, default=None, help="engine input side (default: model's native)")
    parser.add_argument("--keypoints", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def use_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (torch's CPU threads), if given."""
    if args.threads:
        torch.set_num_threads(args.threads)


def describe_model(args: argparse.Namespace, model) -> str:
    """``model ARCH, device D, dtype T``: the start of each script's settings line."""
    return f"model {args.arch}, device {model.device}, dtype {str(model.dtype).replace('torch.', '')}"
