"""Loading the frozen diffusion model: a Hugging Face id, a local diffusers folder, or the untrained `tiny` preset.

Only what inference needs is loaded: the VAE (its encoder is used), the UNet and the noise schedule.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ppmtrack.engine.errors import PpmtrackError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY = "tiny"
TINY_SEED = 0
HUB_PROBE_TIMEOUT_S = 5.0
"""Seconds to wait for the Hugging Face hub to accept a connection before a model that is not cached is refused."""

# The tiny preset keeps SD 1.5's structure (4 resolution levels, cross-attention in the first three down
# blocks, the mid block and the last three up blocks, 2 layers per block, so 9 up-path cross-attention
# layers, 768-d conditioning, 4-channel latent at 1/8 resolution) with far fewer channels. Its weights are
# random: it is for tests and the offline demo, not for real tracking.
TINY_UNET_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=2,
    norm_num_groups=16,
)
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=256,
    # SD's scaling factor is 1/std of its latents; the random encoder's latents have std ~0.22 (measured on
    # the sample), so with SD's 0.18215 the t=10 noise would drown the image.
    scaling_factor=4.5,
)
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


class ModelLoadError(PpmtrackError, RuntimeError):
    """The diffusion model could not be loaded; the message says where it was looked for and what to do."""


@dataclass
class DiffusionModel:
    """The frozen parts of a latent diffusion model that PPM uses."""

    name: str
    vae: torch.nn.Module
    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float64, from the noise schedule
    device: torch.device
    dtype: torch.dtype
    revision: str | None = None

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """The training resolution: UNet sample size × VAE downsampling (512 for SD 1.5, 256 for tiny)."""
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def fingerprint(self) -> dict:
        """Architecture hash plus summary statistics of a few weights, robust to dtype and device.

        Used to refuse an engine file adapted on another model: two different checkpoints differ in these
        statistics far beyond fp16 rounding.
        """
        cfg = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        arch = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
        stats = []
        for module in (self.unet.conv_in, self.unet.conv_out, self.vae.encoder.conv_in):
            w = module.weight.detach().to("cpu", torch.float64)
            stats += [float(w.mean()), float(w.std()), float(w.abs().max())]
        for name, p in self.unet.named_parameters():
            if name.endswith("attn2.to_k.weight"):
                w = p.detach().to("cpu", torch.float64)
                stats += [float(w.mean()), float(w.std())]
        return {"architecture": arch, "weight_stats": stats}


def same_model(a: dict, b: dict) -> bool:
    """Whether two fingerprints describe the same weights (up to fp16/bf16 rounding)."""
    import numpy as np

    sa, sb = np.asarray(a.get("weight_stats", [])), np.asarray(b.get("weight_stats", []))
    return a.get("architecture") == b.get("architecture") and sa.shape == sb.shape and bool(
        np.allclose(sa, sb, rtol=2e-2, atol=2e-5))


def resolve_device(device: str | None = None) -> torch.device:
    """`cuda` when available unless told otherwise."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for, but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float16 on CUDA, float32 on the CPU, unless told otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return names[dtype]


def _alphas_cumprod(config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod.to(torch.float64)


def build_tiny(seed: int = TINY_SEED):
    """Build the untrained tiny UNet and VAE from their configs with a fixed seed (CPU, float32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
    return vae, unet


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def load_model(model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None,
               revision: str | None = None) -> DiffusionModel:
    """Load the VAE, UNet and noise schedule of a diffusers Stable Diffusion model.

    Parameters
    ----------
    model : str
        A Hugging Face model id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local diffusers folder
        (with ``unet/``, ``vae/`` and ``scheduler/`` subfolders), or ``tiny`` for the untrained test model.
    device, dtype : str, optional
        Defaults: CUDA with float16 when available, else CPU with float32.
    revision : str, optional
        Hub revision (branch, tag or commit).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if model == TINY:
        vae, unet = build_tiny()
        sched = SD_SCHEDULER_CONFIG
        rev = f"seed{TINY_SEED}"
    else:
        vae, unet, sched, rev = _load_pretrained(model, revision)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its dtype-cast notice is not for our users
    for m in (vae, unet):
        m.requires_grad_(False)
        m.eval()
        m.to(device=dev, dtype=dt)
    return DiffusionModel(name=model, vae=vae, unet=unet, alphas_cumprod=_alphas_cumprod(sched), device=dev,
                          dtype=dt, revision=rev)


def hub_cached(model: str, revision: str | None = None, filename: str = "unet/config.json") -> bool:
    """Whether the Hugging Face cache holds ``model`` (at ``revision``; default its ``main``), so that it can be
    loaded without contacting the hub (``filename``: a file every copy of that kind of model has)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(model, filename, revision=revision)
    except (ValueError, OSError):  # not a valid repo id
        return False
    return isinstance(found, str)


def hub_unreachable(what: str) -> str | None:
    """Why the hub cannot be asked for ``what`` (a model not in the cache), or None: ``HF_HUB_OFFLINE`` is set, or
    a connection to the hub fails within :data:`HUB_PROBE_TIMEOUT_S` — told at once, not after the hub client's
    retries. Behind a proxy nothing is probed (the hub client knows the way)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if _offline():
        return (f"{what} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and HF_HUB_OFFLINE is set, so "
                "the hub was not contacted")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return (f"{what} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and {host} cannot be reached "
                f"({e.strerror or e})")
    return None


def _check_hub_reachable(model: str, revision: str | None) -> None:
    """Fail fast, before the hub client's retries, when the model is not cached and the hub cannot be reached."""
    reason = hub_unreachable("it")
    if reason:
        at = f" at revision {revision}" if revision else ""
        raise ModelLoadError(
            f"cannot load the diffusion model {model!r}{at}: {reason}. Download it once on a machine with network "
            f"access (e.g. `huggingface-cli download {model}`) and pass its folder with --model PATH, or copy that "
            "machine's Hugging Face cache here; --model tiny is the untrained offline test model")


def _load_pretrained(model: str, revision: str | None):
    local = Path(model).expanduser()
    is_local = local.is_dir()
    if not is_local and (model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1)):
        raise ModelLoadError(f"model folder {model!r} does not exist")
    source = str(local) if is_local else model
    kwargs = {} if is_local else {"revision": revision}
    if not is_local:
        if hub_cached(model, revision):  # everything is on disk: no network call, no retries
            kwargs["local_files_only"] = True
        else:
            _check_hub_reachable(model, revision)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        try:
            sched = DDPMScheduler.load_config(source, subfolder="scheduler", **kwargs)
        except (OSError, ValueError):
            sched = SD_SCHEDULER_CONFIG  # SD 1.x schedule, for folders saved without a scheduler
    except (OSError, ValueError) as e:
        if is_local:
            where = f"the folder {local.resolve()}"
        else:
            from huggingface_hub import constants

            where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
            if _offline():
                where += " (HF_HUB_OFFLINE is set, so the hub was not contacted)"
            else:
                where += " and on the hub (no network, or the id is wrong)"
        raise ModelLoadError(
            f"cannot load the diffusion model {model!r}: looked in {where}. Download it once on a machine with "
            f"network access (e.g. `huggingface-cli download {model}`) and pass its folder with --model PATH, "
            f"or use --model tiny for the untrained offline test model. ({type(e).__name__}: {str(e)[:300]})"
        ) from e
    commit = dict(unet.config).get("_commit_hash")
    return vae, unet, dict(sched), commit or revision


def save_model(model: DiffusionModel, folder: str | Path) -> None:
    """Save the VAE, UNet and schedule as a diffusers folder that `load_model(folder)` reads."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    DDPMScheduler(**SD_SCHEDULER_CONFIG).save_config(folder / "scheduler")
