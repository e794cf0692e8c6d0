"""Inference optimisation switches for an `Engine`, each one independent and measured by `bench/`.

`SpeedConfig` lists them; `Engine(..., speed=...)` and `Engine.load(..., speed=...)` put them in place: the
engine asks `speed_encoder` for its image encoder and `build_map_runner` for its map runner (a `MapRunner`
handed to `Engine.set_map_runner`); nothing here sets an engine's attributes. The precision (float16/bfloat16)
is chosen when the model is loaded (`load_model(dtype=...)`); attention always runs through PyTorch's fused
`scaled_dot_product_attention`.
See docs/performance.md for what each switch does and what it was measured to give.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch

from ppmtrack.engine.unet_blocks import unet_blocks

logger = logging.getLogger("ppmtrack")

ENCODERS = ("vae", "taesd", "untrained")


@dataclass
class SpeedConfig:
    """Which inference optimisations an engine uses. The defaults are the engine's plain behaviour.

    Parameters
    ----------
    prompt_kv_cache : bool
        Project the constant prompt to each captured layer's keys and values once per engine, not per forward.
    truncate : bool
        Stop the UNet after the block holding the last captured layer.
    channels_last : bool
        Convolution weights and activations in NHWC layout (faster convolutions with tensor cores).
    compile : bool
        `torch.compile` the UNet blocks and the image encoder. Compilation happens at the first call of each
        batch shape; if it fails, the engine warns once and runs eagerly.
    compile_mode : str, optional
        `torch.compile` mode, e.g. ``max-autotune-no-cudagraphs`` (None: the default mode).
    compile_backend : str or callable
        `torch.compile` backend (``inductor``; ``eager`` checks graph capture only).
    cuda_graphs : bool
        Record the UNet forward of each batch shape as a CUDA graph and replay it (CUDA only; without CUDA it
        is skipped with a warning). Not combinable with feature reuse, whose work differs between frames.
    encoder : str
        Image encoder: ``vae`` (the model's VAE), ``taesd`` (`AutoencoderTiny` from ``madebyollin/taesd``),
        ``untrained`` (a TAESD-shaped encoder with random weights, for tests and benchmarks), or a folder or
        hub id of an `AutoencoderTiny`.
    reuse_every : int
        Temporal feature reuse: recompute the deep UNet features every k frames (1: off). See
        `engine.feature_reuse`.
    reuse_branch : int, optional
        First up block recomputed on the frames in between (default: the last one).
    """

    prompt_kv_cache: bool = True
    truncate: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str | Callable = "inductor"
    cuda_graphs: bool = False
    encoder: str = "vae"
    reuse_every: int = 1
    reuse_branch: int | None = None

    def __post_init__(self):
        if self.reuse_every < 1:
            raise ValueError(f"reuse_every must be at least 1, got {self.reuse_every}")
        if self.cuda_graphs and self.reuse_every > 1:
            raise ValueError("CUDA graphs replay one fixed forward; they cannot be combined with feature "
                             "reuse")

    def changes(self) -> dict:
        """The switches that differ from the defaults (for tables and run summaries)."""
        base = SpeedConfig()
        return {k: v for k, v in asdict(self).items() if v != getattr(base, k)}


@runtime_checkable
class MapRunner(Protocol):
    """What computes an engine's maps in place of `Engine.eager_maps`: noisy latents (B, 4, h, w) → maps
    (B, L, K+1, R, R). `reset` forgets whatever it carries from one call to the next (`Engine.reset_stream`)."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


def speed_encoder(model, config: SpeedConfig):
    """The image encoder `config` asks for (None: the model's VAE), ready for `engine.infer.MapExtractor`."""
    if config.encoder == "vae":
        return None
    from ppmtrack.engine.encoders import TAESD_CONFIG, TAESD_HUB_ID, TINY_TAESD_CONFIG, load_tiny_encoder

    source = TAESD_HUB_ID if config.encoder == "taesd" else config.encoder
    full_size = model.unet.config.block_out_channels[0] >= 320
    return load_tiny_encoder(source, model.device, model.dtype, config=TAESD_CONFIG if full_size else TINY_TAESD_CONFIG)


def build_map_runner(engine, config: SpeedConfig) -> MapRunner | None:
    """The map runner of `config`'s switches for `engine` (None: the plain `Engine.eager_maps` does).

    Called once by `Engine.__init__`, after its extractor exists. Channels-last converts the model's modules in
    place; compilation hands `torch.compile`d UNet blocks and image encoder to the extractor
    (`MapExtractor.use_blocks`, `MapExtractor.use_encoder`), with the eager ones restored if compiling fails.
    """
    ext = engine.extractor
    model = engine.model
    if config.channels_last:
        for module in (model.unet, model.vae, ext.encoder):
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)

    maps: Callable[[torch.Tensor], torch.Tensor] = engine.eager_maps
    if config.reuse_every > 1:
        from ppmtrack.engine.feature_reuse import FeatureReuse

        maps = FeatureReuse(engine, config.reuse_every, config.reuse_branch)
    if config.channels_last:
        maps = _ChannelsLast(maps)
    if config.compile:
        guard = CompileGuard(config.compile_mode, config.compile_backend)
        eager_encoder = ext.encoder
        encode = eager_encoder if eager_encoder is not None else _VaeEncode(model)
        ext.use_blocks([guard.compile(block) for block in unet_blocks(model.unet)])
        ext.use_encoder(guard.wrap(guard.compile(encode), eager=encode))
        guard.on_failure(lambda: (ext.use_blocks(None), ext.use_encoder(eager_encoder)))
        maps = guard.wrap(maps)
    if config.cuda_graphs:
        if model.device.type != "cuda":
            warnings.warn("cuda_graphs needs a CUDA device; the engine runs without CUDA graphs",
                          stacklevel=3)
        else:
            maps = CudaGraphMaps(maps, ext.state)
    return None if maps == engine.eager_maps else maps


class _ChannelsLast:
    """Hands the latents to the UNet in channels-last layout."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.fn(latents.contiguous(memory_format=torch.channels_last))

    def __getattr__(self, name):  # reset(), counters of a wrapped FeatureReuse
        return getattr(self.__dict__["fn"], name)


class _VaeEncode(torch.nn.Module):
    """The VAE's encode as a module (images → scaled latent means), so it can be compiled and guarded."""

    def __init__(self, model):
        super().__init__()
        self.vae = model.vae
        self.scaling_factor = model.scaling_factor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean * self.scaling_factor


class CompileGuard:
    """Compiles callables with `torch.compile` and runs them; on a failure it warns, restores the eager ones and
    reruns the call eagerly (a compile failure must never stop a tracking run).

    Parameters
    ----------
    mode, backend
        Passed to `torch.compile`.
    """

    def __init__(self, mode: str | None = None, backend="inductor"):
        self.mode = mode
        self.backend = backend
        self.failed: BaseException | None = None
        self._restore: list[Callable[[], object]] = []

    def compile(self, fn: Callable) -> Callable:
        """`torch.compile(fn)` with this guard's settings (compilation itself happens at the first call).

        UNet blocks are compiled one by one rather than the whole UNet: the engine runs the UNet block by block
        (and may stop early), and the capture processors' side effects stay outside any one graph.
        """
        return torch.compile(fn, mode=self.mode, backend=self.backend, dynamic=False)

    def on_failure(self, restore: Callable[[], object]) -> None:
        """Call `restore` (put the eager callables back) when compiled code fails."""
        self._restore.append(restore)

    def wrap(self, fn: Callable, eager: Callable | None = None) -> Callable:
        """`fn` run under the guard; after a failure `eager` (default: `fn` itself) is called instead."""
        guard = self

        class Guarded:
            def __call__(self, *args):
                return guard.run(fn, *args, eager=eager)

            def __getattr__(self, name):  # reset(), counters of a wrapped FeatureReuse
                return getattr(fn, name)

        return Guarded()

    def run(self, fn: Callable, *args, eager: Callable | None = None):
        """Call `fn`; if compiled code fails, fall back to eager once and call it (or `eager`) again."""
        fallback = eager or fn
        if self.failed is not None:
            return fallback(*args)
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 (any compiler failure: missing compiler, unsupported op, ...)
            self.failed = exc
            for restore in self._restore:
                restore()
            first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {first_line}); running eagerly",
                          RuntimeWarning, stacklevel=2)
            return fallback(*args)


class CudaGraphMaps:
    """Replays a CUDA graph of the map forward for each batch shape seen (recorded at its first call).

    The prompt's cached keys and values must not change between recording and replay; `engine.predict`
    keeps them for the engine's life (`predict_per_keypoint` replaces them, so the graphs are re-recorded).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], state, warmup: int = 2):
        self.fn = fn
        self.state = state  # the extractor's CaptureState, whose kv_cache the graphs read
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        key = (tuple(latents.shape), latents.dtype, latents.device, self._kv_token())
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._record(latents)
        static_in, static_out, graph, _ = entry
        static_in.copy_(latents)
        graph.replay()
        return static_out.clone()

    def _kv_token(self) -> tuple:
        return tuple(id(k) for k, _ in self.state.kv_cache.values())

    def _record(self, latents: torch.Tensor) -> tuple:
        static_in = latents.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        logger.debug("recorded a CUDA graph for latents %s", tuple(latents.shape))
        return static_in, static_out, graph, dict(self.state.kv_cache)  # keeps the recorded K/V alive
