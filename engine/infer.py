"""PEI map extraction: image → VAE latent → noise at t → one UNet forward → every token's map at every layer."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ppmtrack.engine.attention import CaptureState, capture_installed, install_capture, last_block_needed
from ppmtrack.engine.models import DiffusionModel
from ppmtrack.engine.unet_blocks import Position, UNetRun, finish_unet, run_blocks, start_unet


def stack_layer_maps(per_layer: dict, layers: list[str], size: int | None = None) -> torch.Tensor:
    """Captured per-layer maps as one tensor: layer name → (B, n, h*w) becomes (B, L, n, R, R).

    Square maps of every layer in `layers` (in that order) are upsampled bilinearly to R×R, R = `size` or the
    finest captured resolution. Used by map extraction, feature reuse and the ONNX graph alike (the sides are
    Python ints, so a traced graph keeps them as constants).
    """
    grids = []
    for k in layers:
        m = per_layer[k]
        side = math.isqrt(int(m.shape[-1]))
        grids.append(m.reshape(m.shape[0], m.shape[1], side, side))
    res = size or max(g.shape[-1] for g in grids)
    grids = [g if g.shape[-1] == res else F.interpolate(g, size=(res, res), mode="bilinear", align_corners=False)
             for g in grids]
    return torch.stack(grids, dim=1)


class MapExtractor:
    """Captures per-layer cross-attention maps of the first `n_tokens` prompt tokens for a batch of images.

    Parameters
    ----------
    model : DiffusionModel
    layers : list of str
        Cross-attention layers to capture (see `engine.attention.select_layers`).
    timestep : int
        Diffusion timestep of the noise added to the latent (paper: 10).
    noise_seed : int
        Seed of the fixed noise; one noise tensor is shared by every frame, so a frame's maps do not depend on
        its position in a batch.
    truncate : bool
        Stop the UNet after the block holding the last captured layer.
    encoder : callable, optional
        Replaces the VAE encoder: (B, 3, S, S) images in [-1, 1] → latents already multiplied by the scaling
        factor (B, 4, S/8, S/8), e.g. `engine.encoders.TinyEncoder`; default: the model's VAE.
    """

    def __init__(self, model: DiffusionModel, layers: list[str], timestep: int = 10, noise_seed: int = 0,
                 truncate: bool = True, encoder=None):
        self.model = model
        self.encoder = encoder
        self.layers = list(layers)
        self.timestep = int(timestep)
        self.noise_seed = int(noise_seed)
        self.state: CaptureState = install_capture(model.unet, self.layers)
        self.stop_after = last_block_needed(self.layers) if truncate else None
        self.blocks: list[Callable] | None = None  # see `use_blocks`
        self._noise: dict[tuple, torch.Tensor] = {}
        self._timesteps: dict[torch.device, torch.Tensor] = {}
        a = model.alphas_cumprod[self.timestep]
        self._sqrt_a, self._sqrt_1ma = float(a.sqrt()), float((1 - a).sqrt())

    def noise(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The run's fixed noise for a (C, h, w) latent, generated on the CPU so every machine gets the same."""
        if shape not in self._noise:
            g = torch.Generator().manual_seed(self.noise_seed)
            self._noise[shape] = torch.randn((1, *shape), generator=g).to(self.model.device, self.model.dtype)
        return self._noise[shape]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1] → noisy latents z_t (B, 4, S/8, S/8)."""
        m = self.model
        images = images.to(m.device, m.dtype)
        if self.encoder is not None:
            z = self.encoder(images)
        else:
            z = m.vae.encode(images).latent_dist.mean * m.scaling_factor
        return self._sqrt_a * z + self._sqrt_1ma * self.noise(tuple(z.shape[1:]))

    def use_encoder(self, encoder: Callable | None) -> None:
        """Encode images with `encoder` from now on (see the class parameters); None: the model's VAE."""
        self.encoder = encoder

    def use_blocks(self, blocks: Sequence[Callable] | None) -> None:
        """Run the UNet blocks through these callables from now on (one per block, in the order of
        `engine.unet_blocks.block_positions`, e.g. `torch.compile`d blocks); None: the UNet's own modules."""
        self.blocks = None if blocks is None else list(blocks)

    @contextmanager
    def capturing(self, n_tokens: int, logits: bool = False, features: bool = False) -> Iterator[CaptureState]:
        """Record maps of the first `n_tokens` tokens (and logits / query features) of the UNet runs made inside.

        Puts this extractor's capture processors back on the UNet if another extractor replaced them, and
        leaves the state empty afterwards.
        """
        st = self.state
        if not capture_installed(self.model.unet, self.layers, st):
            install_capture(self.model.unet, self.layers, st)  # several extractors may share one model
        st.clear()
        st.n_tokens, st.record_logits, st.record_features = n_tokens, logits, features
        try:
            yield st
        finally:
            st.clear()
            st.n_tokens, st.record_logits, st.record_features = 0, False, False

    def batch_conditioning(self, conditioning: torch.Tensor, batch: int) -> torch.Tensor:
        """A (1, T, c) or (B, T, c) conditioning in the model's dtype, expanded to `batch`."""
        cond = conditioning.to(self.model.dtype)
        return cond.expand(batch, -1, -1) if cond.shape[0] == 1 and batch > 1 else cond

    def start(self, latents: torch.Tensor) -> UNetRun:
        """The UNet run of noisy latents before its first block (time embedding at this extractor's timestep)."""
        return start_unet(self.model.unet, latents, self.timestep_on(latents.device))

    def run(self, run: UNetRun, conditioning: torch.Tensor, start: Position | None = None,
            stop: Position | None = None) -> UNetRun:
        """`engine.unet_blocks.run_blocks` through this extractor's blocks (compiled ones, if given)."""
        return run_blocks(self.model.unet, run, conditioning, start, stop, self.blocks)

    def layer_maps(self, latents: torch.Tensor, conditioning: torch.Tensor, n_tokens: int,
                   logits: bool = False, features: bool = False) -> dict:
        """Run the UNet on noisy latents and return the captured maps.

        Returns a dict with ``maps`` (B, L, n_tokens, R, R) sigmoid maps upsampled to the finest captured
        resolution R, and, if asked, ``logits`` of the same shape and ``features`` (list of (B, h, w, C)).
        """
        cond = self.batch_conditioning(conditioning, latents.shape[0])
        with self.capturing(n_tokens, logits, features) as st:
            run = self.run(self.start(latents), cond, stop=self.stop_after)
            if self.stop_after is None:
                finish_unet(self.model.unet, run)
            out = {"maps": stack_layer_maps(st.maps, self.layers) if n_tokens else None}
            if logits:
                out["logits"] = stack_layer_maps(st.logits, self.layers)
            if features:
                out["features"] = [self._grid(st.features[k]) for k in self.layers]
        return out

    def timestep_on(self, device: torch.device) -> torch.Tensor:
        """The timestep as a tensor on `device`, made once (no host-to-device copy per forward, so the forward
        can be captured in a CUDA graph)."""
        if device not in self._timesteps:
            self._timesteps[device] = torch.tensor(self.timestep, device=device)
        return self._timesteps[device]

    @staticmethod
    def _grid(x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        side = int(round(s**0.5))
        return x.reshape(b, side, side, c)
