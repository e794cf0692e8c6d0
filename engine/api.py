"""The public engine: adapt prompts on a support set, save/load them, and predict keypoints on frames."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine.adapt import (
    AdaptConfig,
    Progress,
    build_views,
    cross_entropy_floor,
    train_foreground_prompt,
    train_keypoint_prompts,
)
from ppmtrack.engine.attention import cache_prompt_kv, select_layers
from ppmtrack.engine.engine_file import EngineFileError, read_engine_file, write_engine_file
from ppmtrack.engine.fgar import fuse_layers_fgar
from ppmtrack.engine.geometry import InputMapping, engine_input, grid_to_input
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.localize import soft_argmax_peak
from ppmtrack.engine.models import DEFAULT_MODEL, DiffusionModel, load_model, same_model
from ppmtrack.engine.support import SupportSet

TOKENS = 77


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("ppmtrack")
    except Exception:  # noqa: BLE001 (running from a source tree)
        return "0+unknown"


@dataclass
class Prediction:
    """Keypoints of a batch of frames, in original-frame pixels.

    keypoints (B, K, 2); confidence (B, K): peak of the refined map in [0, 1]; sharpness (B, K): peak over the
    map's mean; maps (B, K, R, R) refined maps and foreground (B, R, R), when asked for.
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    sharpness: np.ndarray
    maps: np.ndarray | None = None
    foreground: np.ndarray | None = None


@dataclass
class FgarConfig:
    """FGAR switches (for ablations) and the sub-pixel window."""

    reweight: bool = True
    refine: bool = True
    window: int = 5


class Engine:
    """An adapted PPM engine: a frozen diffusion model plus one learned prompt per keypoint."""

    def __init__(self, model: DiffusionModel, names: list[str], keypoint_prompts: torch.Tensor,
                 foreground_prompt: torch.Tensor, config: AdaptConfig, skeleton=(), flip_pairs=(),
                 fgar: FgarConfig | None = None, info: dict | None = None, truncate: bool = True,
                 speed=None):
        self.model = model
        self.names = list(names)
        self.skeleton = [tuple(e) for e in skeleton]
        self.flip_pairs = [tuple(e) for e in flip_pairs]
        self.config = config
        self.fgar = fgar or FgarConfig()
        self.info = dict(info or {})
        self.path: Path | None = None  # the engine file it was loaded from or last saved to
        self.resolution = config.resolution or native_resolution(model)
        self.layers = select_layers(model.unet, config.layers)
        self.extractor = MapExtractor(model, self.layers, config.timestep, config.noise_seed, truncate=truncate)
        self.keypoint_prompts = keypoint_prompts.detach().float().to(model.device)
        self.foreground_prompt = foreground_prompt.detach().float().reshape(-1).to(model.device)
        self._cached = False
        self.cache_kv = True  # project the constant prompt to keys/values once (engine.speed may turn it off)
        self.map_runner = None  # engine.speed may replace `eager_maps` (compiled, CUDA graph, feature reuse)
        if speed is not None:
            from ppmtrack.engine.speed import apply_speed

            apply_speed(self, speed)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def adapt(cls, support: SupportSet, model: str | DiffusionModel = DEFAULT_MODEL,
              config: AdaptConfig | None = None,
              device: str | None = None, dtype: str | None = None, progress: Progress | None = None,
              foreground: str | Path | torch.Tensor | None = None) -> Engine:
        """Adapt keypoint prompts to a support set (FARA → foreground prompt → keypoint prompts).

        `foreground`: a foreground prompt pre-trained on a base set (a file from
        `engine.foreground.save_foreground`, or the tensor); default: fit P_f on the support frames (base-free).
        """
        cfg = config or AdaptConfig()
        dm = model if isinstance(model, DiffusionModel) else load_model(model, device=device, dtype=dtype)
        size = cfg.resolution or native_resolution(dm)
        if size % 64:
            raise ValueError(f"resolution must be a multiple of 64, got {size}")
        cfg.resolution = size
        layers = select_layers(dm.unet, cfg.layers)
        extractor = MapExtractor(dm, layers, cfg.timestep, cfg.noise_seed)
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        init = torch.randn(dm.cross_attention_dim, generator=gen).to(dm.device)
        t0 = time.perf_counter()
        views = build_views(extractor, support, size, init, cfg, rng)
        if foreground is None:
            pf, fg_hist = train_foreground_prompt(extractor, views, init, cfg, rng, progress)
            fg_source = "support frames (base-free)"
        elif isinstance(foreground, torch.Tensor):
            pf, fg_hist, fg_source = foreground.float().reshape(-1).to(dm.device), [], "given tensor"
        else:
            from ppmtrack.engine.foreground import load_foreground

            pf, _ = load_foreground(foreground, dm)
            fg_hist, fg_source = [], f"base set ({Path(foreground).name})"
        prompts, kp_hist = train_keypoint_prompts(extractor, views, pf, len(support.names), cfg, rng, progress)
        seconds = time.perf_counter() - t0
        info = {
            "adaptation": {
                "seconds": round(seconds, 2),
                "support_frames": len(support.images),
                "foreground_prompt": fg_source,
                "views": int(len(views.latents)),
                "foreground_loss": [fg_hist[0], fg_hist[-1]] if fg_hist else [],
                # first step, and the mean of the last 10 (single steps are noisy: random batches)
                "keypoint_loss": [kp_hist[0], float(np.mean(kp_hist[-10:]))] if kp_hist else [],
                "keypoint_loss_floor": (cross_entropy_floor(size // 8, cfg.heatmap_sigma)
                                        if cfg.loss == "ce" else 0.0),
                "device": str(dm.device),
                "dtype": str(dm.dtype).replace("torch.", ""),
            },
            "loss_history": {"foreground": fg_hist, "keypoints": kp_hist},
        }
        if support.display:
            info["display"] = dict(support.display)
        info["crop"] = cfg.crop.to_dict()  # the crops it was adapted on; tracking crops with its margin and zoom
        eng = cls(dm, support.names, prompts, pf, cfg, support.skeleton, support.flip_pairs, info=info)
        return eng

    @classmethod
    def load(cls, path: str | Path, model: str | DiffusionModel | None = None, device: str | None = None,
             dtype: str | None = None, truncate: bool = True, speed=None) -> Engine:
        """Load an engine file. The model defaults to the one it was adapted on; another model is refused.

        `speed` (an `engine.speed.SpeedConfig`) switches on inference optimisations; see docs/performance.md.
        """
        tensors, meta = read_engine_file(path)
        stored = meta["model"]
        dm = model if isinstance(model, DiffusionModel) else load_model(model or stored["name"], device=device,
                                                                       dtype=dtype, revision=None)
        if not same_model(stored["fingerprint"], dm.fingerprint()):
            raise EngineFileError(
                f"{path} was adapted on the model {stored['name']!r}"
                f"{' (revision ' + stored['revision'] + ')' if stored.get('revision') else ''}, but the model "
                f"loaded now ({dm.name!r}) has different weights; load it with --model {stored['name']} "
                f"or adapt again on this model"
            )
        cfg = AdaptConfig(**meta["adapt_config"])
        engine = cls(dm, meta["keypoints"], tensors["keypoint_prompts"], tensors["foreground_prompt"], cfg,
                     meta.get("skeleton", []), meta.get("flip_pairs", []), FgarConfig(**meta.get("fgar", {})),
                     info=meta.get("info", {}), truncate=truncate, speed=speed)
        engine.path = Path(path)
        return engine

    def save(self, path: str | Path) -> None:
        """Write the engine file (safetensors + JSON metadata)."""
        from dataclasses import asdict

        meta = {
            "ppmtrack_version": package_version(),
            "name": Path(path).stem,
            "keypoints": self.names,
            "skeleton": [list(e) for e in self.skeleton],
            "flip_pairs": [list(e) for e in self.flip_pairs],
            "model": {"name": self.model.name, "revision": self.model.revision,
                      "fingerprint": self.model.fingerprint()},
            "resolution": self.resolution,
            "layers": self.layers,
            "timestep": self.config.timestep,
            "adapt_config": self.config.to_dict(),
            "fgar": asdict(self.fgar),
            "info": {k: v for k, v in self.info.items() if k != "loss_history"},
        }
        write_engine_file(path, {"keypoint_prompts": self.keypoint_prompts,
                                 "foreground_prompt": self.foreground_prompt}, meta)
        self.path = Path(path)

    # ---- inference ----------------------------------------------------------------------------------------
    def conditioning(self) -> torch.Tensor:
        """(1, 77, c): keypoint prompts in tokens 0..K-1, the foreground prompt in every other token."""
        k = len(self.names)
        rest = self.foreground_prompt.reshape(1, -1).expand(TOKENS - k, -1)
        return torch.cat([self.keypoint_prompts, rest], dim=0)[None]

    def _ensure_cache(self):
        if not self._cached and self.cache_kv:
            cache_prompt_kv(self.model.unet, self.extractor.state, None, self.conditioning().to(self.model.dtype))
            self._cached = True

    @torch.no_grad()
    def predict(self, frames, return_maps: bool = False, boxes=None, crop_size: int | None = None,
                return_foreground: bool = False) -> Prediction:
        """Keypoints, confidences (and maps) for a batch of same-size RGB uint8 frames, in one UNet forward.

        `frames`: (B, H, W, 3) array or tensor, or a list of (H, W, 3) arrays of equal size.
        `boxes`: (B, 4) square boxes ``(x0, y0, x1, y1)`` in frame pixels: the engine sees these crops
        (`engine.geometry.crop`) instead of the letterboxed frames, at ``crop_size`` (a multiple of 64; default:
        the engine's resolution); keypoints still come back in frame pixels. `return_foreground`: the
        foreground map M_f only (cheaper than `return_maps`).
        """
        self._ensure_cache()
        x, box = self.prepare(frames, boxes, crop_size)
        z = self.extractor.encode(x)
        maps = (self.map_runner or self.eager_maps)(z)
        return self._read_out(maps, box, return_maps, return_foreground, x.shape[-1])

    def prepare(self, frames, boxes=None, crop_size: int | None = None) -> tuple[torch.Tensor, InputMapping]:
        """Frames (as `predict` takes them) → the letterboxed (or, with ``boxes``, cropped) input batch on the
        model's device, and its mapping.

        Support frames are prepared by the same function during adaptation (`engine.geometry.engine_input`).
        """
        size = crop_size or self.resolution
        if size % 64:
            raise ValueError(f"the crop size must be a multiple of 64, got {size}")
        return engine_input(frames, size, self.model.device, boxes)

    def eager_maps(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, L, K+1, R, R) maps of the keypoint tokens and the foreground token: one plain UNet forward."""
        return self.extractor.layer_maps(latents, self.conditioning(), n_tokens=len(self.names) + 1)["maps"]

    @torch.no_grad()
    def predict_per_keypoint(self, frames) -> Prediction:
        """Reference without PEI: one forward per keypoint, that keypoint's prompt in token 0 and P_f elsewhere."""
        self._cached = False
        self.extractor.state.kv_cache.clear()
        x, box = self.prepare(frames)
        z = self.extractor.encode(x)
        pf = self.foreground_prompt.reshape(1, -1)
        per_kp = []
        for j in range(len(self.names)):
            cond = torch.cat([self.keypoint_prompts[j:j + 1], pf.expand(TOKENS - 1, -1)])[None]
            m = self.extractor.layer_maps(z, cond, n_tokens=2)["maps"]
            per_kp.append(m[:, :, 0])
        maps = torch.stack(per_kp + [m[:, :, 1]], dim=2)
        return self._read_out(maps, box, False)

    def _read_out(self, maps: torch.Tensor, box: InputMapping, return_maps: bool, return_foreground: bool = False,
                  input_size: int | None = None) -> Prediction:
        k = len(self.names)
        fg = maps[:, :, k].mean(dim=1)  # (B, R, R): layer-averaged foreground map M_f
        kp_maps = maps[:, :, :k].transpose(1, 2)  # (B, K, L, R, R)
        fused = fuse_layers_fgar(kp_maps, fg[:, None, None], self.fgar.reweight, self.fgar.refine)
        xy_map, peak = soft_argmax_peak(fused, self.fgar.window)
        stride = (input_size or self.resolution) / maps.shape[-1]
        xy = box.to_frame(grid_to_input(xy_map, stride).cpu().numpy().astype(np.float64))
        sharp = (peak / fused.mean(dim=(-2, -1)).clamp(min=1e-8)).cpu().numpy()
        return Prediction(
            keypoints=xy,
            confidence=peak.clamp(0, 1).cpu().numpy().astype(np.float64),
            sharpness=sharp.astype(np.float64),
            maps=fused.float().cpu().numpy() if return_maps else None,
            foreground=fg.float().cpu().numpy() if return_maps or return_foreground else None,
        )


def native_resolution(model: DiffusionModel) -> int:
    """The model's training resolution: UNet sample size × VAE downsampling (512 for SD 1.5, 256 for tiny)."""
    return int(model.unet.config.sample_size) * model.vae_scale
