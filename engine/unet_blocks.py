"""The one UNet block runner: a diffusers `UNet2DConditionModel` run block by block, from any block to any block.

Map extraction (`engine.infer`), temporal feature reuse (`engine.feature_reuse`), the ONNX graph
(`engine.onnx_export`) and the FLOP count (`bench/flops.py`) all run the UNet through `run_blocks`, so they
cannot drift apart. A block is named by its position: ``("down_blocks", i)``, ``("mid_block", 0)`` or
``("up_blocks", i)``. `UNetRun` carries what the next block needs: the hidden state, the skip connections not
yet consumed by the up path, and the time embedding; a run can stop after any block and go on later, also from
a hidden state computed elsewhere (feature reuse starts the up path from cached deep features).

Mirrors `UNet2DConditionModel.forward` for SD-style UNets (no class/added embeddings, no adapters); the maps
captured by the attention processors are identical to those of a full forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

Position = tuple[str, int]


@dataclass(frozen=True)
class UNetRun:
    """The state of a UNet forward between two blocks.

    Attributes
    ----------
    hidden : torch.Tensor
        Output of the last block run (after `start_unet`: the output of ``conv_in``).
    residuals : tuple of torch.Tensor
        Skip connections produced by the down path and not yet consumed by the up path.
    emb : torch.Tensor
        The time embedding every block takes.
    """

    hidden: torch.Tensor
    residuals: tuple[torch.Tensor, ...]
    emb: torch.Tensor

    def with_hidden(self, hidden: torch.Tensor) -> UNetRun:
        """The same run continuing from another hidden state (e.g. cached deep features)."""
        return replace(self, hidden=hidden)

    def keep_residuals(self, n: int) -> UNetRun:
        """The same run with only the first `n` skip connections (those the later up blocks consume)."""
        return replace(self, residuals=self.residuals[:n])


def block_positions(unet) -> list[Position]:
    """Every block of the UNet in forward order: down blocks, the mid block (if any), up blocks."""
    return ([("down_blocks", i) for i in range(len(unet.down_blocks))]
            + ([("mid_block", 0)] if unet.mid_block is not None else [])
            + [("up_blocks", i) for i in range(len(unet.up_blocks))])


def unet_blocks(unet) -> list[torch.nn.Module]:
    """The block modules, in the order of `block_positions`."""
    return [unet.mid_block if kind == "mid_block" else getattr(unet, kind)[i] for kind, i in block_positions(unet)]


def start_unet(unet, sample: torch.Tensor, timestep: torch.Tensor) -> UNetRun:
    """Time embedding and ``conv_in``: the run before the first block."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    h = unet.conv_in(sample)
    return UNetRun(hidden=h, residuals=(h,), emb=emb)


def run_blocks(unet, run: UNetRun, conditioning: torch.Tensor, start: Position | None = None,
               stop: Position | None = None, blocks: Sequence[Callable] | None = None) -> UNetRun:
    """Run the blocks from `start` through `stop` (both included) and return the state after `stop`.

    Parameters
    ----------
    unet : UNet2DConditionModel
    run : UNetRun
        The state before `start` (from `start_unet`, or from an earlier `run_blocks`).
    conditioning : torch.Tensor
        (B, T, c) encoder hidden states for the blocks with cross-attention.
    start, stop : position, optional
        First and last block to run; default: the first block, the last block.
    blocks : sequence of callables, optional
        What to call for each block, in the order of `block_positions` (e.g. `torch.compile`d blocks);
        default: the UNet's own modules.
    """
    positions = block_positions(unet)
    for p in (start, stop):
        if p is not None and p not in positions:
            raise ValueError(f"no UNet block {p}; this UNet has {positions}")
    first = 0 if start is None else positions.index(start)
    last = len(positions) - 1 if stop is None else positions.index(stop)
    modules = unet_blocks(unet)
    call = modules if blocks is None else blocks
    h, residuals, emb = run.hidden, run.residuals, run.emb
    for j in range(first, last + 1):
        kind = positions[j][0]
        block = call[j]
        cross = ({"encoder_hidden_states": conditioning} if getattr(modules[j], "has_cross_attention", False)
                 else {})
        if kind == "down_blocks":
            h, res = block(hidden_states=h, temb=emb, **cross)
            residuals += res
        elif kind == "mid_block":
            h = block(h, emb, **cross)
        else:
            n = len(modules[j].resnets)
            res, residuals = residuals[-n:], residuals[:-n]
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res,
                      upsample_size=residuals[-1].shape[2:] if residuals else None, **cross)
    return UNetRun(hidden=h, residuals=residuals, emb=emb)


def finish_unet(unet, run: UNetRun) -> torch.Tensor:
    """The output head after the last up block: the UNet's prediction."""
    h = run.hidden
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def unet_forward_until(unet, sample: torch.Tensor, timestep: torch.Tensor, conditioning: torch.Tensor,
                       stop_after: Position | None = None, blocks: Sequence[Callable] | None = None
                       ) -> torch.Tensor:
    """The UNet forward, stopping after block `stop_after` (its output returned) or run whole (the prediction)."""
    run = run_blocks(unet, start_unet(unet, sample, timestep), conditioning, stop=stop_after, blocks=blocks)
    return run.hidden if stop_after is not None else finish_unet(unet, run)
