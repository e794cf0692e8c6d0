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
import torch.nn.functional as F

from ppmtrack.engine.attention import capture_installed, install_capture


class FeatureReuse:
    """Drop-in for `Engine.eager_maps` that recomputes the deep UNet features only every `every` frames.

    Frames are counted across calls, in the order given (batches of a video in order); `reset` starts over
    (a new video). The first frame after a reset is always a key frame.

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
        seen = []
        hook = self.engine.model.unet.up_blocks[self.branch - 1].register_forward_hook(
            lambda module, args, output: seen.append(output))
        try:
            maps = self.engine.eager_maps(latents)
        finally:
            hook.remove()
        return maps, seen[0]

    def _shallow(self, latents: torch.Tensor, deep: torch.Tensor, stale_maps: torch.Tensor) -> torch.Tensor:
        """Shallow branch on top of cached deep features; fresh and cached maps merged in layer order."""
        eng = self.engine
        ext = eng.extractor
        unet = eng.model.unet
        st = ext.state
        if not capture_installed(unet, ext.layers, st):
            install_capture(unet, ext.layers, st)
        st.clear()
        st.n_tokens = len(eng.names) + 1
        cond = eng.conditioning().to(eng.model.dtype).expand(latents.shape[0], -1, -1)
        try:
            t = ext._timestep_on(latents.device)
            emb = unet.time_embedding(unet.get_time_embed(sample=latents, timestep=t))
            if unet.time_embed_act is not None:
                emb = unet.time_embed_act(emb)
            h = unet.conv_in(latents)
            residuals = (h,)
            for block in unet.down_blocks[:self.n_down]:
                h, res = block(hidden_states=h, temb=emb, **_cross(block, cond))
                residuals += res
            residuals = residuals[:self.need]
            h = deep
            for block in unet.up_blocks[self.branch:self.stop + 1]:
                res = residuals[-len(block.resnets):]
                residuals = residuals[: -len(block.resnets)]
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res,
                          upsample_size=residuals[-1].shape[2:] if residuals else None, **_cross(block, cond))
            res_side = stale_maps.shape[-1]
            fresh = []
            for i in self.fresh:
                m = st.maps[ext.layers[i]]
                side = int(round(m.shape[-1] ** 0.5))
                g = m.reshape(m.shape[0], m.shape[1], side, side)
                if side != res_side:
                    g = F.interpolate(g, size=(res_side, res_side), mode="bilinear", align_corners=False)
                fresh.append(g)
        finally:
            st.clear()
            st.n_tokens = 0
        maps = torch.empty((latents.shape[0], len(ext.layers), *stale_maps.shape[2:]), dtype=stale_maps.dtype,
                           device=stale_maps.device)
        maps[:, self.fresh] = torch.stack(fresh, dim=1)
        maps[:, self.stale] = stale_maps
        return maps


def _cross(block, conditioning: torch.Tensor) -> dict:
    """The conditioning keyword for blocks with cross-attention, nothing for the others."""
    return {"encoder_hidden_states": conditioning} if getattr(block, "has_cross_attention", False) else {}
