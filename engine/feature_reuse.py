"""Temporal feature reuse across adjacent frames, in the spirit of DeepCache (Ma et al., 2023).

Adjacent video frames differ little, and so do the UNet's deep (low-resolution) features. Every `every`-th
frame (a *key* frame) runs the whole UNet; the frames in between run only the shallow branch: `conv_in`, the
first down block(s) whose skip connections feed the last up block(s), and those up blocks, on top of the key
frame's deep features (the input of up block `branch`). Maps of captured layers inside the shallow branch are
fresh; maps of the deeper captured layers are the key frame's. Off by default: it trades keypoint accuracy for
speed, and both are measured by `bench/bench_inference.py --reuse` on the sample video (docs/performance.md).
"""

from __future__ import annotations

import torch

from ppmtrack.engine.infer import stack_layer_maps


class FeatureReuse:
    """A map runner (`engine.speed.MapRunner`) that recomputes the deep UNet features only every `every` frames.

    Frames are counted across calls, in the order given (batches of a video in order); `reset` starts over
    (`Engine.reset_stream`: a new video, a gap in a stream). The first frame after a reset is always a key frame.

    Parameters
    ----------
    engine : engine.Engine
    every : int
        Key-frame period k ≥ 2 (k = 1 would be the plain forward).
    branch : int, optional
        Index of the first up block recomputed on the frames in between; default: the last up block
        (DeepCache's shallowest branch, the cheapest).
    """

    def __init__(self, engine, every: int, branch: int | None = None):
        if every < 2:
            raise ValueError(f"feature reuse needs a key-frame period of at least 2 frames, got {every}")
        self.engine = engine
        self.every = int(every)
        unet = engine.model.unet
        n_up = len(unet.up_blocks)
        self.branch = n_up - 1 if branch is None else int(branch)
        if not 1 <= self.branch < n_up:
            raise ValueError(f"branch must be an up-block index in 1..{n_up - 1}, got {self.branch}")
        stop = engine.extractor.stop_after
        if stop is not None and (stop[0] != "up_blocks" or stop[1] < self.branch):
            raise ValueError(f"feature reuse recomputes up blocks {self.branch}.. but the captured layers "
                             f"end in {stop[0]}[{stop[1]}]; capture up-block layers (layers='up')")
        self.stop = n_up - 1 if stop is None else stop[1]
        # skip connections consumed by up blocks branch.. are the first `need` residuals of the down path
        self.need = sum(len(unet.up_blocks[i].resnets) for i in range(self.branch, n_up))
        have, self.n_down = 1, 0
        while have < self.need:
            block = unet.down_blocks[self.n_down]
            have += len(block.resnets) + (len(block.downsamplers) if block.downsamplers is not None else 0)
            self.n_down += 1
        shallow = [f"down_blocks.{i}." for i in range(self.n_down)] + \
                  [f"up_blocks.{i}." for i in range(self.branch, n_up)]
        self.fresh = [i for i, n in enumerate(engine.layers) if n.startswith(tuple(shallow))]
        self.stale = [i for i in range(len(engine.layers)) if i not in self.fresh]
        if not self.fresh:
            raise ValueError(f"no captured layer lies in the recomputed branch (up blocks {self.branch}..); "
                             "choose a smaller branch")
        self.frames_seen = 0
        self.deep: torch.Tensor | None = None  # (1, C, h, w) input of up_blocks[branch] of the last key frame
        self.stale_maps: torch.Tensor | None = None  # (1, L_stale, n, R, R) maps of the last key frame
        self.key_frames = 0

    def reset(self) -> None:
        """Forget the cached key frame and restart the frame count."""
        self.frames_seen = 0
        self.deep = None
        self.stale_maps = None

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        b = latents.shape[0]
        index = self.frames_seen + torch.arange(b)
        key = (index % self.every) == 0
        if self.deep is None:
            key[0] = True
        self.frames_seen += b
        key_idx = torch.nonzero(key).flatten().tolist()
        out: list[torch.Tensor | None] = [None] * b
        deep_of: list[torch.Tensor | None] = [None] * b
        stale_of: list[torch.Tensor | None] = [None] * b
        if key_idx:
            maps, deep = self._full(latents[key_idx])
            self.key_frames += len(key_idx)
            for j, i in enumerate(key_idx):
                out[i] = maps[j:j + 1]
        last_deep, last_stale = self.deep, self.stale_maps
        for i in range(b):
            if key[i]:
                j = key_idx.index(i)
                last_deep, last_stale = deep[j:j + 1], maps[j:j + 1, self.stale]
            else:
                deep_of[i], stale_of[i] = last_deep, last_stale
        self.deep, self.stale_maps = last_deep, last_stale
        rest = [i for i in range(b) if not key[i]]
        if rest:
            maps = self._shallow(latents[rest], torch.cat([deep_of[i] for i in rest]),
                                 torch.cat([stale_of[i] for i in rest]))
            for j, i in enumerate(rest):
                out[i] = maps[j:j + 1]
        return torch.cat(out)

    def _full(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole forward of key frames; returns their maps and the input of up_blocks[branch]."""
        eng, ext = self.engine, self.engine.extractor
        cond = ext.batch_conditioning(eng.conditioning(), latents.shape[0])
        with ext.capturing(len(eng.names) + 1) as st:
            run = ext.run(ext.start(latents), cond, stop=("up_blocks", self.branch - 1))
            deep = run.hidden
            ext.run(run, cond, start=("up_blocks", self.branch), stop=("up_blocks", self.stop))
            maps = stack_layer_maps(st.maps, ext.layers)
        return maps, deep

    def _shallow(self, latents: torch.Tensor, deep: torch.Tensor, stale_maps: torch.Tensor) -> torch.Tensor:
        """Shallow branch on top of cached deep features; fresh and cached maps merged in layer order."""
        eng, ext = self.engine, self.engine.extractor
        cond = ext.batch_conditioning(eng.conditioning(), latents.shape[0])
        with ext.capturing(len(eng.names) + 1) as st:
            run = ext.start(latents)
            if self.n_down:
                run = ext.run(run, cond, stop=("down_blocks", self.n_down - 1))
            run = run.keep_residuals(self.need).with_hidden(deep)
            ext.run(run, cond, start=("up_blocks", self.branch), stop=("up_blocks", self.stop))
            fresh = stack_layer_maps(st.maps, [ext.layers[i] for i in self.fresh], size=stale_maps.shape[-1])
        maps = torch.empty((latents.shape[0], len(ext.layers), *stale_maps.shape[2:]), dtype=stale_maps.dtype,
                           device=stale_maps.device)
        maps[:, self.fresh] = fresh
        maps[:, self.stale] = stale_maps
        return maps
