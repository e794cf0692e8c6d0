"""Inference optimisation switches for an `Engine`, each one independent and measured by `bench/`.

`SpeedConfig` lists them; `apply_speed(engine, config)` (also reached through `Engine(..., speed=...)` and
`Engine.load(..., speed=...)`) puts them in place. The precision (float16/bfloat16) is chosen when the model
is loaded (`load_model(dtype=...)`); attention always runs through PyTorch's fused
`scaled_dot_product_attention`.
See docs/performance.md for what each switch does and what it was measured to give.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ppmtrack.engine.attention import last_block_needed

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


def apply_speed(engine, config: SpeedConfig) -> None:
    """Put the optimisations of `config` in place on `engine` (in place; call once, on a fresh engine)."""
    ext = engine.extractor
    model = engine.model
    engine.speed = config
    engine.cache_kv = config.prompt_kv_cache
    if not config.prompt_kv_cache:
        ext.state.kv_cache.clear()
        engine._cached = False
    ext.stop_after = last_block_needed(engine.layers) if config.truncate else None

    if config.encoder != "vae":
        from ppmtrack.engine.encoders import TAESD_CONFIG, TAESD_HUB_ID, TINY_TAESD_CONFIG, load_tiny_encoder

        source = TAESD_HUB_ID if config.encoder == "taesd" else config.encoder
        full_size = model.unet.config.block_out_channels[0] >= 320
        ext.encoder = load_tiny_encoder(source, model.device, model.dtype,
                                        config=TAESD_CONFIG if full_size else TINY_TAESD_CONFIG)

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
        guard = CompileGuard(_compile_targets(engine), config.compile_mode, config.compile_backend)
        encode = ext.encoder if ext.encoder is not None else _VaeEncode(model)
        ext.encoder = guard.wrap(encode)
        maps = guard.wrap(maps)
    if config.cuda_graphs:
        if model.device.type != "cuda":
            warnings.warn("cuda_graphs needs a CUDA device; the engine runs without CUDA graphs",
                          stacklevel=2)
        else:
            maps = CudaGraphMaps(maps, ext.state)
    engine.map_runner = None if maps == engine.eager_maps else maps


class _ChannelsLast:
    """Hands the latents to the UNet in channels-last layout."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.fn(latents.contiguous(memory_format=torch.channels_last))

    def __getattr__(self, name):  # reset(), counters of a wrapped FeatureReuse
        return getattr(self.__dict__["fn"], name)


class _VaeEncode:
    """The VAE's encode as a plain callable (images → scaled latent means), so it can be guarded."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.vae.encode(images).latent_dist.mean * m.scaling_factor


def _compile_targets(engine) -> list[torch.nn.Module]:
    """The modules compiled one by one: every UNet block and the image encoder's network.

    Blocks rather than the whole UNet: the engine runs the UNet block by block (and may stop early), and the
    capture processors' side effects stay outside any one graph.
    """
    unet = engine.model.unet
    blocks = list(unet.down_blocks) + ([unet.mid_block] if unet.mid_block is not None else []) + \
        list(unet.up_blocks)
    enc = engine.extractor.encoder
    return blocks + [enc.encoder if enc is not None else engine.model.vae.encoder]


class CompileGuard:
    """Compiles modules in place with `torch.compile` and runs callables; on a failure it warns, restores the
    eager modules and reruns the call eagerly (a compile failure must never stop a tracking run).

    Parameters
    ----------
    modules : list of torch.nn.Module
        Compiled with `Module.compile`, so module names (and the capture processors' layer names) are kept.
    mode, backend
        Passed to `torch.compile`.
    """

    def __init__(self, modules: list[torch.nn.Module], mode: str | None = None, backend="inductor"):
        self.modules = modules
        self.failed: BaseException | None = None
        for m in modules:
            m.compile(mode=mode, backend=backend, dynamic=False)

    def wrap(self, fn: Callable) -> Callable:
        """`fn` run under the guard."""
        guard = self

        class Guarded:
            def __call__(self, *args):
                return guard.run(fn, *args)

            def __getattr__(self, name):
                return getattr(fn, name)

        return Guarded()

    def run(self, fn: Callable, *args):
        """Call `fn`; if the compiled modules fail, fall back to eager once and call it again."""
        if self.failed is not None:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 (any compiler failure: missing compiler, unsupported op, ...)
            self.failed = exc
            self.restore_eager()
            first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {first_line}); running eagerly",
                          RuntimeWarning, stacklevel=2)
            return fn(*args)

    def restore_eager(self) -> None:
        """Undo `Module.compile` on every module."""
        for m in self.modules:
            m._compiled_call_impl = None  # what Module.compile sets; None restores the eager forward


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
