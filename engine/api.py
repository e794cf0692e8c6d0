"""The public engine: adapt prompts on a support set, save/load them, and predict keypoints on frames."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine.adapt import (
    AdaptConfig,
    Progress,
    build_views,
    cross_entropy_floor,
    loss_floor,
    train_foreground_prompt,
    train_keypoint_prompts,
)
from ppmtrack.engine.attention import TOKENS, cache_prompt_kv, select_layers
from ppmtrack.engine.engine_file import EngineFileError, file_sha256, load_engine_file, write_engine_file
from ppmtrack.engine.errors import UsageError
from ppmtrack.engine.fgar import FgarConfig
from ppmtrack.engine.geometry import InputMapping, crop, engine_input, grid_to_input, letterbox, to_uint8_batch
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.localize import read_out
from ppmtrack.engine.models import DEFAULT_MODEL, DiffusionModel, load_model, same_model
from ppmtrack.engine.prediction import Prediction
from ppmtrack.engine.speed import MapRunner, SpeedConfig, build_map_runner, speed_encoder
from ppmtrack.engine.support import SupportSet
from ppmtrack.engine.validate import validate_adaptation


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("ppmtrack")
    except Exception:  # noqa: BLE001 (running from a source tree)
        return "0+unknown"


class Engine:
    """An adapted PPM engine: a frozen diffusion model plus one learned prompt per keypoint."""

    def __init__(self, model: DiffusionModel, names: list[str], keypoint_prompts: torch.Tensor,
                 foreground_prompt: torch.Tensor, config: AdaptConfig, skeleton=(), flip_pairs=(),
                 fgar: FgarConfig | None = None, info: dict | None = None, truncate: bool = True,
                 speed: SpeedConfig | None = None):
        self.model = model
        self.names = list(names)
        self.skeleton = [tuple(e) for e in skeleton]
        self.flip_pairs = [tuple(e) for e in flip_pairs]
        self.config = config
        self.fgar = fgar or FgarConfig()
        self.info = dict(info or {})
        self.path: Path | None = None  # the engine file it was loaded from or last saved to
        self.sha256: str | None = None  # SHA-256 of that file's bytes, from the one read (or write) of it
        self.resolution = config.resolution or model.native_resolution
        self.layers = select_layers(model.unet, config.layers)
        self.speed = speed or SpeedConfig(truncate=truncate)  # `speed` given: its own `truncate` counts
        self.extractor = MapExtractor(model, self.layers, config.timestep, config.noise_seed,
                                      truncate=self.speed.truncate,
                                      encoder=speed_encoder(model, self.speed))
        self.keypoint_prompts = keypoint_prompts
        self.foreground_prompt = foreground_prompt
        # (K, C) correspondence descriptors of the keypoints (engine.correspond_engine; track --detector)
        self.keypoint_descriptors: torch.Tensor | None = None
        self._kv_conditioning: torch.Tensor | None = None  # the conditioning the cached prompt K/V belong to
        self.map_runner: MapRunner | None = None
        self.set_map_runner(build_map_runner(self, self.speed))

    @property
    def keypoint_prompts(self) -> torch.Tensor:
        """(K, c) learned keypoint prompts (assigning new ones is picked up by the next `predict`)."""
        return self._keypoint_prompts

    @keypoint_prompts.setter
    def keypoint_prompts(self, value: torch.Tensor) -> None:
        self._keypoint_prompts = value.detach().float().to(self.model.device)

    @property
    def foreground_prompt(self) -> torch.Tensor:
        """(c,) foreground prompt P_f (assigning a new one is picked up by the next `predict`)."""
        return self._foreground_prompt

    @foreground_prompt.setter
    def foreground_prompt(self, value: torch.Tensor) -> None:
        self._foreground_prompt = value.detach().float().reshape(-1).to(self.model.device)

    def set_map_runner(self, runner: MapRunner | None) -> None:
        """Compute maps with `runner` (latents → (B, L, K+1, R, R), like `eager_maps`) from now on; None: the
        plain forward. `engine.speed.build_map_runner` makes the compiled, CUDA-graph and feature-reuse ones."""
        self.map_runner = runner

    def reset_stream(self) -> None:
        """Forget what the map runner carries from frame to frame (feature reuse's key frame).

        Call it before frames that do not follow the previous ones: a new video or stream, a gap, a seek.
        """
        reset = getattr(self.map_runner, "reset", None)
        if reset is not None:
            reset()

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def adapt(cls, support: SupportSet, model: str | DiffusionModel = DEFAULT_MODEL,
              config: AdaptConfig | None = None,
              device: str | None = None, dtype: str | None = None, progress: Progress | None = None,
              foreground: str | Path | torch.Tensor | None = None, validation="auto", init: str = "foreground",
              species: str | None = None) -> Engine:
        """Adapt keypoint prompts to a support set (FARA → foreground prompt → keypoint prompts).

        `foreground`: a foreground prompt pre-trained on a base set (a file from
        `engine.foreground.save_foreground`, or the tensor); default: fit P_f on the support frames (base-free).
        `config` is not changed: the engine keeps a copy with the resolution filled in. Raises
        `engine.adapt.AdaptationDiverged` when the loss explodes (learning rate too high).
        `validation`: an `engine.validate.ValidationConfig` (or ``"auto"``, the default, as ``ppmtrack adapt``
        does; ``"off"`` or None: no validation) to estimate held-out accuracy and choose the keypoint
        learning rate and step count before the final training (``info["validation"]``). A rate that neither
        `config` nor validation sets is the model family's (`engine.adapt.DEFAULT_LR`: 5e-4 for Stable
        Diffusion, 0.1 for tiny); ``info["defaults"]`` says which applied and why.
        `init`: where the keypoint prompts start (`engine.text_prompts`): "foreground" (P_f, the PPM paper's
        start), "names" ("the {keypoint} of a {species}" through the model's CLIP text encoder), or "auto" (with
        validation: both are validated and the lower held-out error wins; without: foreground). The choice and
        why are stored in ``info["prompt_init"]``.
        """
        from ppmtrack.engine.adapt import DEFAULT_LR, DEFAULT_LR_WHY, model_family
        from ppmtrack.engine.validate import ValidationConfig

        if validation is None or isinstance(validation, str):
            validation = ValidationConfig(mode=validation or "off")
        from ppmtrack.engine.text_prompts import check_init

        init_mode = check_init(init)  # (`init` below is P_f's random start)
        cfg = config or AdaptConfig()
        dm = model if isinstance(model, DiffusionModel) else load_model(model, device=device, dtype=dtype)
        size = cfg.resolution or dm.native_resolution
        if size % 64:
            raise UsageError(f"resolution must be a multiple of 64, got {size}")
        cfg = replace(cfg, resolution=size)
        if foreground is not None and not isinstance(foreground, torch.Tensor):
            from ppmtrack.engine.foreground import load_foreground

            given_pf, _ = load_foreground(foreground, dm, cfg)  # checked before the (slow) views are built
        layers = select_layers(dm.unet, cfg.layers)
        extractor = MapExtractor(dm, layers, cfg.timestep, cfg.noise_seed)
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        init = torch.randn(dm.cross_attention_dim, generator=gen).to(dm.device)
        t0 = time.perf_counter()
        views = build_views(extractor, support, size, init, cfg, rng)
        fg_skipped = 0
        if foreground is None:
            pf, fg_hist, fg_skipped = train_foreground_prompt(extractor, views, init, cfg, rng, progress)
            fg_source = "support frames (base-free)"
        elif isinstance(foreground, torch.Tensor):
            pf, fg_hist, fg_source = foreground.float().reshape(-1).to(dm.device), [], "given tensor"
        else:
            pf, fg_hist, fg_source = given_pf, [], f"base set ({Path(foreground).name})"
        validated = None
        predict = partial(predict_keypoints, dm, support.names)
        validating = validation is not None and validation.mode != "off"
        start, init_record = None, {"requested": init_mode, "chosen": "foreground"}
        if init_mode in ("names", "auto") and (init_mode == "names" or validating):
            from ppmtrack.engine.text_prompts import name_prompts

            start, text_record = name_prompts(dm, list(support.names), species, scale_to=pf)
            init_record.update(text_record, chosen="names")
        if init_mode == "auto" and not validating:
            init_record["why"] = "no validation to compare the starts: the foreground start (PPM's)"
        if validating:
            validated = validate_adaptation(extractor, views, pf, support, cfg, validation, progress, init=start,
                                            predict=predict)
            if init_mode == "auto" and "error_px" in validated:
                by_foreground = validate_adaptation(extractor, views, pf, support, cfg, validation, progress,
                                                    predict=predict)
                init_record["held_out_error_px"] = {"names": validated["error_px"],
                                                    "foreground": by_foreground.get("error_px")}
                if not by_foreground.get("error_px", np.inf) > validated["error_px"]:
                    validated, start, init_record["chosen"] = by_foreground, None, "foreground"
                init_record["why"] = "lower held-out error in validation"
            elif init_mode == "auto":
                validated = validate_adaptation(extractor, views, pf, support, cfg, validation, progress,
                                                    predict=predict)
                start, init_record["chosen"] = None, "foreground"
                init_record["why"] = "validation skipped: the foreground start (PPM's)"
            if "chosen" in validated:
                cfg = replace(cfg, **validated["chosen"])
        family = model_family(dm)
        if cfg.lr is not None:
            defaults = {"family": family, "lr": cfg.lr, "lr_from": "validation" if validated and "chosen" in
                        validated else "given"}
        else:
            why = ("validation was off" if validated is None else f"validation was skipped: {validated['skipped']}")
            cfg = replace(cfg, lr=DEFAULT_LR[family])
            defaults = {"family": family, "lr": cfg.lr, "lr_from": "family default",
                        "why": f"{why}; {DEFAULT_LR_WHY[family]}"}
        prompts, kp_hist, kp_skipped = train_keypoint_prompts(extractor, views, pf, len(support.names), cfg, rng,
                                                              progress, init=start)
        seconds = time.perf_counter() - t0
        info = {
            "adaptation": {
                "seconds": round(seconds, 2),
                "support_frames": len(support.images),
                # (height, width) of each support frame: validation errors are in these pixels
                "support_image_sizes": [list(np.asarray(image).shape[:2]) for image in support.images],
                "foreground_prompt": fg_source,
                "views": int(len(views.latents)),
                "foreground_loss": [fg_hist[0], fg_hist[-1]] if fg_hist else [],
                "foreground_steps": len(fg_hist),
                "foreground_loss_floor": loss_floor(fg_hist),  # lowest 5-step mean: where the plateau rule stopped
                # first step, and the mean of the last 10 (single steps are noisy: random batches)
                "keypoint_loss": [kp_hist[0], float(np.mean(kp_hist[-10:]))] if kp_hist else [],
                "keypoint_loss_floor": (cross_entropy_floor(size // 8, cfg.heatmap_sigma)
                                        if cfg.loss == "ce" else 0.0),
                "device": str(dm.device),
                "dtype": str(dm.dtype).replace("torch.", ""),
                # steps skipped because float16 gradients overflowed (the loss scale then halves)
                "skipped_steps": {"foreground": fg_skipped, "keypoints": kp_skipped},
            },
            "loss_history": {"foreground": fg_hist, "keypoints": kp_hist},
        }
        if support.display:
            info["display"] = dict(support.display)
        if validated is not None:
            info["validation"] = validated
        info["prompt_init"] = init_record
        info["defaults"] = defaults
        info["crop"] = cfg.crop.to_dict()  # the crops it was adapted on; tracking crops with its margin and zoom
        eng = cls(dm, support.names, prompts, pf, cfg, support.skeleton, support.flip_pairs, info=info)
        from ppmtrack.engine.correspond_engine import describe_support

        eng.keypoint_descriptors = describe_support(eng, support)
        return eng

    @classmethod
    def load(cls, path: str | Path, model: str | DiffusionModel | None = None, device: str | None = None,
             dtype: str | None = None, truncate: bool = True, speed=None) -> Engine:
        """Load an engine file. The model defaults to the one it was adapted on; another model is refused.

        The model is loaded at the revision stored in the file (the hub commit it was adapted on) unless `model`
        names another model. `speed` (an `engine.speed.SpeedConfig`) switches on inference optimisations; see
        docs/performance.md. A damaged file (checksum mismatch) or one holding non-finite prompts raises
        `EngineFileError`.
        """
        content = load_engine_file(path)  # the one read of the file: its tensors, metadata and hash
        tensors, meta = content.tensors, content.meta
        stored = meta["model"]
        if isinstance(model, DiffusionModel):
            dm = model
        else:
            revision = stored.get("revision") if model in (None, stored["name"]) else None
            dm = load_model(model or stored["name"], device=device, dtype=dtype, revision=revision)
        if not same_model(stored["fingerprint"], dm.fingerprint()):
            adapted_on = (f"{path} was adapted on the model {stored['name']!r}"
                          f"{' (revision ' + stored['revision'] + ')' if stored.get('revision') else ''}")
            if dm.name == stored["name"]:  # the same name, other weights: naming it again cannot help
                raise EngineFileError(
                    f"{adapted_on}, but the weights loaded now under that name differ from the ones it was adapted "
                    "on (the model folder or hub revision was replaced, the tiny test model of another ppmtrack "
                    "version, or an edited file); adapt the engine again on this model"
                )
            raise EngineFileError(
                f"{adapted_on}, but the model loaded now ({dm.name!r}) has different weights; load it with "
                f"--model {stored['name']} or adapt again on this model"
            )
        try:
            cfg = AdaptConfig(**meta["adapt_config"])
            fgar = FgarConfig(**meta.get("fgar", {}))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise EngineFileError(f"{path}: the engine file's settings are not what this ppmtrack writes ({e}; was "
                                  "it edited by hand, or written by another version?); adapt again") from None
        engine = cls(dm, meta["keypoints"], tensors["keypoint_prompts"], tensors["foreground_prompt"], cfg,
                     meta.get("skeleton", []), meta.get("flip_pairs", []), fgar,
                     info=meta.get("info", {}), truncate=truncate, speed=speed)
        engine.keypoint_descriptors = tensors.get("keypoint_descriptors")  # None in files from before it
        engine.path = Path(path)
        engine.sha256 = content.sha256
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
        tensors = {"keypoint_prompts": self.keypoint_prompts, "foreground_prompt": self.foreground_prompt}
        if self.keypoint_descriptors is not None:
            tensors["keypoint_descriptors"] = self.keypoint_descriptors
        write_engine_file(path, tensors, meta)
        self.path = Path(path)
        self.sha256 = file_sha256(path)

    # ---- inference ----------------------------------------------------------------------------------------
    def conditioning(self) -> torch.Tensor:
        """(1, 77, c): keypoint prompts in tokens 0..K-1, the foreground prompt in every other token."""
        k = len(self.names)
        rest = self.foreground_prompt.reshape(1, -1).expand(TOKENS - k, -1)
        return torch.cat([self.keypoint_prompts, rest], dim=0)[None]

    def cache_prompt(self) -> None:
        """Project the prompt conditioning to every cross-attention layer's keys and values, once per
        conditioning: when the prompts change (reassigned or edited in place), they are projected again."""
        if not self.speed.prompt_kv_cache:
            return
        cond = self.conditioning()
        if self._kv_conditioning is not None and torch.equal(self._kv_conditioning, cond):
            return
        cache_prompt_kv(self.model.unet, self.extractor.state, None, cond.to(self.model.dtype))
        self._kv_conditioning = cond.clone()

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
        self.cache_prompt()
        x, box = self.prepare(frames, boxes, crop_size)
        z = self.extractor.encode(x)
        maps = (self.map_runner or self.eager_maps)(z)
        return self.read_out(maps, box, return_maps, return_foreground, x.shape[-1])

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
        self._kv_conditioning = None
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
        return self.read_out(maps, box, False)

    @torch.no_grad()
    def predict_animals(self, frames, max_animals: int, exact: bool = True, appearance: bool = True,
                        threshold: float = 0.5, crops: bool = False) -> list:
        """Every animal of each frame from one UNet forward for the batch (see :mod:`engine.multi`).

        `max_animals`: most animals per frame; `exact`: that many are in view (merged regions are split);
        `appearance`: add each animal's mean diffusion features (needs the plain forward, not `map_runner`);
        `threshold`: foreground threshold relative to the frame's maximum; `crops`: read each animal's
        keypoints from its own crop (a square around its region, `engine.multi.region_boxes`, cut by
        `engine.geometry.crop`) in a second forward that takes all crops of the batch at once, instead of
        from the whole-frame maps. Regions and appearance always come from the whole frame.
        Returns one :class:`engine.multi.Animals` per frame, keypoints in original-frame pixels.
        """
        from ppmtrack.engine.correspond import descriptor_grid
        from ppmtrack.engine.multi import Animals, find_animals, region_appearance, region_boxes

        self.cache_prompt()
        images = to_uint8_batch(frames, self.model.device)
        x, box = letterbox(images, self.resolution)
        z = self.extractor.encode(x)
        if appearance:
            out = self.extractor.layer_maps(z, self.conditioning(), n_tokens=len(self.names) + 1, features=True)
            maps = out["maps"]
            res = maps.shape[-1]
            features = descriptor_grid(out["features"], res)  # (B, R, R, C), unit per cell (engine.correspond)
        else:
            maps = (self.map_runner or self.eager_maps)(z)
        fused, fg = self._fused_maps(maps)
        fused, fg = fused.float().cpu().numpy(), fg.float().cpu().numpy()
        stride = self.resolution / maps.shape[-1]
        found, boxes, owners = [], [], []
        for i in range(len(fused)):
            regions = find_animals(fused[i], fg[i], max_animals, exact=exact, threshold=threshold,
                                   window=self.fgar.window)
            xy = box.to_frame(grid_to_input(regions.keypoints, stride)) if len(regions) else regions.keypoints
            found.append(Animals(xy, regions.confidence,
                                 region_appearance(features[i], regions.masks) if appearance else None,
                                 regions.foreground_mass))
            if crops and len(regions):
                boxes.append(region_boxes(regions.masks, stride, box))
                owners += [i] * len(regions)
        if owners:
            x, crop_box = crop(images[owners], np.concatenate(boxes), self.resolution)
            read = self.read_out((self.map_runner or self.eager_maps)(self.extractor.encode(x)), crop_box)
            first = 0
            for animals in found:
                n = len(animals)
                animals.keypoints = read.keypoints[first:first + n]
                animals.confidence = read.confidence[first:first + n]
                first += n
        return found

    def predict_boxes(self, frames, boxes: list, margin: float = 0.25, min_side: float = 32.0) -> list:
        """Every animal of each frame from given boxes: each box's crop through one forward for the batch.

        `boxes`: one ``(D_i, 4)`` array ``(x0, y0, x1, y1)`` in frame pixel edges per frame (an external
        detector's, or another tool's instances; ``pipelines.boxes``). Each box is made square with `margin`
        (a fraction of its longer side on every side, at least `min_side` px; `engine.geometry.square_box`),
        cut by `engine.geometry.crop` as in ``predict_animals(crops=True)``, and its keypoints read from the
        crop's maps. The appearance vector is the unit mean of the L2-normalised diffusion features of the
        crop's cells inside the box. Returns one :class:`engine.multi.Animals` per frame, in box order
        (``foreground_mass``: the mean foreground map inside the box).
        """
        from ppmtrack.engine.geometry import square_box
        from ppmtrack.engine.multi import Animals, region_appearance

        self.cache_prompt()
        images = to_uint8_batch(frames, self.model.device)
        if len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} box lists for {len(images)} frames")
        k = len(self.names)
        squares, owners, given = [], [], []
        for i, frame_boxes in enumerate(boxes):
            for x0, y0, x1, y1 in np.asarray(frame_boxes, dtype=np.float64).reshape(-1, 4):
                squares.append(square_box(x0, y0, x1, y1, margin=margin, min_side=min_side))
                given.append((x0, y0, x1, y1))
                owners.append(i)
        empty = Animals(np.zeros((0, k, 2)), np.zeros((0, k)), np.zeros((0, 0)), np.zeros(0))
        if not owners:
            return [empty for _ in boxes]
        x, crop_box = crop(images[owners], np.stack(squares), self.resolution)
        out = self.extractor.layer_maps(self.extractor.encode(x), self.conditioning(), n_tokens=k + 1,
                                        features=True)
        maps = out["maps"]
        res = maps.shape[-1]
        read = self.read_out(maps, crop_box, return_foreground=True)
        from ppmtrack.engine.correspond import descriptor_grid

        features = descriptor_grid(out["features"], res)  # (N, R, R, C), unit per cell (engine.correspond)
        # each crop's cells whose centres lie inside its given box
        centres = grid_to_input(np.arange(res, dtype=np.float64), self.resolution / res)
        corners = crop_box.to_input(np.array(given).reshape(-1, 2, 2))  # (N, 2 corners, xy)
        inside_x = (centres[None] >= corners[:, :1, 0]) & (centres[None] <= corners[:, 1:, 0])  # (N, R)
        inside_y = (centres[None] >= corners[:, :1, 1]) & (centres[None] <= corners[:, 1:, 1])
        masks = inside_y[:, :, None] & inside_x[:, None, :]
        masks[~masks.any(axis=(1, 2))] = True  # a box smaller than a cell: the whole crop
        found = []
        owners = np.array(owners)
        for i in range(len(boxes)):
            rows = np.flatnonzero(owners == i)
            if not len(rows):
                found.append(empty)
                continue
            appearance = np.concatenate([region_appearance(features[r], masks[r:r + 1]) for r in rows])
            mass = np.array([float(read.foreground[r][masks[r]].mean()) for r in rows])
            found.append(Animals(read.keypoints[rows], read.confidence[rows], appearance, mass))
        return found

    def _fused_maps(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FGAR-fused keypoint maps (B, K, R, R) and the layer-averaged foreground map M_f (B, R, R)."""
        out = read_out(maps, len(self.names), self.fgar, self.resolution)
        return out.maps, out.foreground

    def read_out(self, maps: torch.Tensor, box: InputMapping, return_maps: bool = False,
                 return_foreground: bool = False, input_size: int | None = None) -> Prediction:
        """(B, L, K+1, R, R) maps → keypoints in frame pixels (`engine.localize.read_out`, then `box`).

        `input_size`: the side of the engine input the maps were computed on (crops may be smaller than the
        engine's resolution); `return_foreground`: the foreground map M_f without the keypoint maps."""
        out = read_out(maps, len(self.names), self.fgar, input_size or self.resolution)
        return Prediction(
            keypoints=box.to_frame(out.keypoints.cpu().numpy().astype(np.float64)),
            confidence=out.confidence.cpu().numpy().astype(np.float64),
            sharpness=out.sharpness.cpu().numpy().astype(np.float64),
            maps=out.maps.float().cpu().numpy() if return_maps else None,
            foreground=out.foreground.float().cpu().numpy() if return_maps or return_foreground else None,
        )


def predict_keypoints(model: DiffusionModel, names, prompts: torch.Tensor, pf: torch.Tensor,
                      cfg: AdaptConfig, images: np.ndarray) -> np.ndarray:
    """(N, K, 2) keypoints of ``images`` predicted exactly as tracking predicts them (FGAR, sub-pixel peak), by an
    engine built from these prompts; what adaptation's validation scores held-out frames with."""
    return Engine(model, names, prompts, pf, cfg).predict(images).keypoints
