"""A cheaper image encoder than SD's VAE: diffusers' `AutoencoderTiny` (TAESD), encoder half only.

TAESD's encoder maps an image to (approximately) the latent of SD's VAE already multiplied by SD's scaling
factor, at ~1/20 of the VAE encoder's cost. `TinyEncoder` wraps it with the contract of
`MapExtractor(encoder=...)`: (B, 3, S, S) images in [-1, 1] → scaled latents (B, 4, S/8, S/8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.engine.models import _offline, hub_cached, hub_unreachable  # the one reading of HF_HUB_OFFLINE

TAESD_HUB_ID = "madebyollin/taesd"
UNTRAINED = "untrained"
UNTRAINED_SEED = 0

# An untrained TAESD-shaped encoder for tests and CPU benchmarks (like the `tiny` preset: random weights,
# fixed seed). Full TAESD has 64 channels per level; the sd15 benchmark builds that size (`taesd_config`).
TINY_TAESD_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    encoder_block_out_channels=(16, 16, 16, 16),
    decoder_block_out_channels=(16, 16, 16, 16),
    num_encoder_blocks=(1, 1, 1, 1),
    num_decoder_blocks=(1, 1, 1, 1),
    latent_channels=4,
)
TAESD_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    encoder_block_out_channels=(64, 64, 64, 64),
    decoder_block_out_channels=(64, 64, 64, 64),
    num_encoder_blocks=(1, 3, 3, 3),
    num_decoder_blocks=(3, 3, 3, 1),
    latent_channels=4,
)


class EncoderLoadError(PpmtrackError, RuntimeError):
    """The tiny autoencoder could not be loaded; the message says where it was looked for and what to do."""


class TinyEncoder(torch.nn.Module):
    """The encoder of an `AutoencoderTiny`, returning latents in the UNet's (scaled) space.

    Parameters
    ----------
    autoencoder : diffusers.AutoencoderTiny
        Only its encoder is kept.
    scale : float
        Multiplies the encoder output. 1.0 for trained TAESD (its latents are already scaled); an untrained
        encoder gets 1/std of its latents so the fixed t=10 noise has the size it has for SD.
    name : str
        Where it came from (hub id, folder or ``untrained``), for reports.
    """

    def __init__(self, autoencoder, scale: float = 1.0, name: str = TAESD_HUB_ID):
        super().__init__()
        self.encoder = autoencoder.encoder
        self.scale = float(scale)
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # diffusers' EncoderTiny maps [-1, 1] to TAESD's [0, 1] input itself
        return self.encoder(images) * self.scale


def build_untrained_autoencoder(config: dict | None = None, seed: int = UNTRAINED_SEED):
    """An `AutoencoderTiny` with random weights from `config` (default `TINY_TAESD_CONFIG`), fixed seed."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**(config or TINY_TAESD_CONFIG))


def load_tiny_encoder(source: str = TAESD_HUB_ID, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, config: dict | None = None,
                      calibration: torch.Tensor | None = None) -> TinyEncoder:
    """Load TAESD's encoder from a folder or the hub, or build an untrained one.

    Parameters
    ----------
    source : str
        A Hugging Face id (default ``madebyollin/taesd``), a local folder saved by
        `AutoencoderTiny.save_pretrained`, or ``untrained`` (random weights from `config`, seed 0).
    device, dtype
        Where and how it runs (the engine's model device and dtype).
    config : dict, optional
        Architecture of the untrained encoder (`TINY_TAESD_CONFIG` by default, `TAESD_CONFIG` for full size).
    calibration : torch.Tensor, optional
        Images in [-1, 1] used to set the untrained encoder's scale to 1/std of its latents; without them the
        scale is measured on a fixed random image batch.
    """
    if source == UNTRAINED:
        ae = build_untrained_autoencoder(config)
        ae.requires_grad_(False).eval()
        with torch.no_grad():
            if calibration is None:
                g = torch.Generator().manual_seed(UNTRAINED_SEED)
                calibration = torch.rand((2, 3, 64, 64), generator=g) * 2 - 1
            std = float(ae.encoder(calibration.float()).std())
        enc = TinyEncoder(ae, scale=1.0 / max(std, 1e-6), name=UNTRAINED)
    else:
        enc = TinyEncoder(_load_pretrained(source), scale=1.0, name=source)
    enc.requires_grad_(False).eval()
    return enc.to(device=device, dtype=dtype)


def _load_pretrained(source: str):
    local = Path(source).expanduser()
    kwargs = {}
    if not local.is_dir() and not source.startswith((".", "/", "~")):
        if hub_cached(source, filename="config.json"):
            kwargs["local_files_only"] = True  # no network call, no retries
        else:
            reason = hub_unreachable("it")
            if reason:
                raise EncoderLoadError(
                    f"cannot load the tiny autoencoder {source!r}: {reason}. Download it once on a machine with "
                    f"network access (`huggingface-cli download {TAESD_HUB_ID} --local-dir taesd`) and pass the "
                    "folder, or keep the full VAE (encoder 'vae')")
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(str(local) if local.is_dir() else source, **kwargs)
    except (OSError, ValueError) as e:
        if local.is_dir() or source.startswith((".", "/", "~")):
            where = f"the folder {local.resolve()}"
        else:
            from huggingface_hub import constants

            where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
            where += " (HF_HUB_OFFLINE is set, so the hub was not contacted)" if _offline() else \
                " and on the hub (no network, or the id is wrong)"
        raise EncoderLoadError(
            f"cannot load the tiny autoencoder {source!r}: looked in {where}. Download it once on a machine "
            f"with network access (`huggingface-cli download {TAESD_HUB_ID} --local-dir taesd`) and pass the "
            f"folder, or keep the full VAE (encoder 'vae'). ({type(e).__name__}: {str(e)[:300]})"
        ) from e


def encoder_effect(engine, frames: np.ndarray, encoder: TinyEncoder, batch_size: int = 8) -> dict:
    """How much swapping the VAE for `encoder` changes an engine's maps and keypoints on the same frames.

    Returns a dict with ``map_correlation`` (median over frames and keypoints of the Pearson correlation
    between the refined maps), ``keypoint_shift_px`` (median and 90th percentile of the keypoint displacement,
    frame pixels) and ``latent_correlation`` (Pearson correlation of the two encoders' latents).
    The engine's own encoder setting is restored afterwards.
    """
    saved = engine.extractor.encoder
    runs = {}
    latents = {}
    try:
        for label, enc in (("vae", None), ("tiny", encoder)):
            engine.extractor.use_encoder(enc)
            preds, zs = [], []
            for s in range(0, len(frames), batch_size):
                preds.append(engine.predict(frames[s:s + batch_size], return_maps=True))
                x, _ = engine.prepare(frames[s:s + batch_size])
                zs.append(engine.extractor.encode(x).float().cpu())
            runs[label] = preds
            latents[label] = torch.cat(zs)
    finally:
        engine.extractor.use_encoder(saved)
    maps_a = np.concatenate([p.maps for p in runs["vae"]])
    maps_b = np.concatenate([p.maps for p in runs["tiny"]])
    kp_a = np.concatenate([p.keypoints for p in runs["vae"]])
    kp_b = np.concatenate([p.keypoints for p in runs["tiny"]])
    shift = np.linalg.norm(kp_a - kp_b, axis=-1)
    return {
        "map_correlation": float(np.median(_pearson(maps_a, maps_b))),
        "keypoint_shift_px": {"median": float(np.median(shift)), "p90": float(np.percentile(shift, 90))},
        "latent_correlation": float(np.corrcoef(latents["vae"].numpy().ravel(),
                                                latents["tiny"].numpy().ravel())[0, 1]),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation over the last two (spatial) axes."""
    a = a.reshape(*a.shape[:-2], -1)
    b = b.reshape(a.shape)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1)).clip(min=1e-12)
