"""The foreground prompt P_f pre-trained on a base set (PPM 3.1.3, "with base categories").

A base set is one or more annotated image sets of *other* categories; their keypoints only serve to build FARA
pseudo masks, so names and counts may differ between sets. The result is a small reusable file that
`Engine.adapt(..., foreground=...)` starts from instead of fitting P_f on the support frames.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine.adapt import AdaptConfig, Progress, SupportViews, build_views, train_foreground_prompt
from ppmtrack.engine.attention import select_layers
from ppmtrack.engine.engine_file import EngineFileError, read_engine_file, write_engine_file
from ppmtrack.engine.errors import UsageError
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.models import DiffusionModel, load_model, same_model
from ppmtrack.engine.support import SupportSet

KIND = "ppmtrack-foreground"


def pretrain_foreground(base: list[SupportSet], model: str | DiffusionModel = "tiny",
                        config: AdaptConfig | None = None, device: str | None = None, dtype: str | None = None,
                        progress: Progress | None = None) -> tuple[torch.Tensor, dict]:
    """Fit P_f to the FARA masks of every frame of a base set. Returns P_f (c,) and a description.

    Uses `config`'s resolution, layers, timestep, noise seed, views per frame, `fg_steps`, `fg_lr`, batch size;
    `config` is not changed (the description holds a copy with the resolution filled in). Raises
    `engine.adapt.AdaptationDiverged` when the loss explodes.
    """
    if not base:
        raise UsageError("the base set is empty")
    cfg = config or AdaptConfig()
    dm = model if isinstance(model, DiffusionModel) else load_model(model, device=device, dtype=dtype)
    cfg = replace(cfg, resolution=cfg.resolution or dm.native_resolution)
    size = cfg.resolution
    extractor = MapExtractor(dm, select_layers(dm.unet, cfg.layers), cfg.timestep, cfg.noise_seed)
    rng = np.random.default_rng(cfg.seed)
    init = torch.randn(dm.cross_attention_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(dm.device)
    t0 = time.perf_counter()
    parts = [build_views(extractor, s, size, init, cfg, rng) for s in base]
    views = SupportViews(
        latents=torch.cat([p.latents for p in parts]),
        keypoints=np.zeros((sum(len(p.latents) for p in parts), 0, 2)),
        ignore=np.zeros((sum(len(p.latents) for p in parts), 0), bool),
        masks=np.concatenate([p.masks for p in parts]),
        frame_of_view=np.concatenate([p.frame_of_view for p in parts]),
        is_original=np.concatenate([p.is_original for p in parts]),
    )
    pf, history, skipped = train_foreground_prompt(extractor, views, init, cfg, rng, progress)
    info = {"base_sets": len(base), "frames": int(sum(len(s.images) for s in base)), "views": len(views.latents),
            "foreground_loss": [history[0], history[-1]] if history else [], "skipped_steps": skipped,
            "seconds": round(time.perf_counter() - t0, 2)}
    return pf, {"model": dm, "info": info, "config": cfg}


def save_foreground(path: str | Path, prompt: torch.Tensor, model: DiffusionModel, config: AdaptConfig,
                    info: dict) -> None:
    """Write a foreground-prompt file (safetensors + JSON metadata naming the model it was trained on)."""
    meta = {"model": {"name": model.name, "revision": model.revision, "fingerprint": model.fingerprint()},
            "resolution": config.resolution, "layers": config.layers, "timestep": config.timestep,
            "noise_seed": config.noise_seed, "info": info}
    write_engine_file(path, {"foreground_prompt": prompt.reshape(-1)}, meta, kind=KIND)


def load_foreground(path: str | Path, model: DiffusionModel, config: AdaptConfig | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """Read a foreground-prompt file; refuse one trained on other model weights or, when `config` is given,
    with another resolution, other cross-attention layers or another timestep than `config` uses."""
    tensors, meta = read_engine_file(path, kind=KIND)
    if not same_model(meta["model"]["fingerprint"], model.fingerprint()):
        raise EngineFileError(f"{path} was pre-trained on the model {meta['model']['name']!r}, but the model "
                              f"loaded now ({model.name!r}) has different weights")
    if config is not None:
        trained = {key: meta.get(key) for key in ("resolution", "layers", "timestep")}
        used = {"resolution": config.resolution or model.native_resolution, "layers": config.layers,
                "timestep": config.timestep}

        def resolved(key: str, value):
            return select_layers(model.unet, value) if key == "layers" else value

        differ = [key for key in trained if resolved(key, trained[key]) != resolved(key, used[key])]
        if differ:
            raise EngineFileError(
                f"{path} was pre-trained with other settings than this adaptation uses: "
                + "; ".join(f"{key} {trained[key]} there, {used[key]} here" for key in differ)
                + ". Adapt with " + ", ".join(f"{key} {trained[key]}" for key in differ)
                + ", or pre-train the foreground prompt again with these settings")
    return tensors["foreground_prompt"].float().to(model.device), meta

