"""Few-shot adaptation: the foreground prompt P_f (PPM 3.1.3) and the keypoint prompts (PPM 3.2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ppmtrack.engine.augment import AugmentConfig, flip_permutation, random_affine, warp_view
from ppmtrack.engine.crop_views import CropViewConfig, crop_views
from ppmtrack.engine.errors import PpmtrackError, UsageError
from ppmtrack.engine.fara import fara_mask
from ppmtrack.engine.geometry import InputMapping, engine_input, input_to_grid
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.support import SupportSet

LOSSES = ("ce", "mse")

SD_MIN_CHANNELS = 256  # a UNet whose widest block has at least this many channels is SD-sized (SD 1.5: 1280)
# The keypoint learning rate when validation does not choose one, per model family (`model_family`). SD-sized: the
# PPM paper's 5e-4 (Adam on the prompt embeddings; the paper trains 20 steps per support frame with the MSE loss,
# a candidate of the validation grid, engine.validate). tiny (untrained, random weights, maps far from calibrated):
# 0.1, measured on the bundled sample (docs/method.md) — 200x too large for Stable Diffusion's embeddings.
DEFAULT_LR = {"tiny": 0.1, "sd": 5e-4}
DEFAULT_LR_WHY = {
    "tiny": "the tiny model's default (measured on the bundled sample, docs/method.md)",
    "sd": "the PPM paper's rate for Stable Diffusion (a Stable-Diffusion-sized model)",
}


def model_family(model) -> str:
    """``sd`` for a Stable-Diffusion-sized UNet (widest block ≥ `SD_MIN_CHANNELS` channels), else ``tiny``.

    Classified by the UNet's config, not its name, so a local copy or fine-tune of SD 1.5 counts as ``sd``.
    """
    channels = max(int(c) for c in model.unet.config.block_out_channels)
    return "sd" if channels >= SD_MIN_CHANNELS else "tiny"


def default_lr(model) -> float:
    """The keypoint learning rate an adaptation without validation uses on ``model`` (`DEFAULT_LR`)."""
    return DEFAULT_LR[model_family(model)]
from ppmtrack.engine.attention import TOKENS  # noqa: E402 (defined once, with the capture)

# A loss above this multiple of the first step's loss means the optimisation diverged (docs/method.md): a working
# run stays below its starting loss, and noise between random batches is far smaller than 10x.
EXPLODE_FACTOR = 10.0
# Prompts whose norm grows beyond this multiple of their starting norm have left any sensible embedding range
# (Adam moves each element by about the learning rate per step, so the default settings stay below ~15x); the
# foreground loss, bounded by 1, cannot show this divergence itself.
PROMPT_GROWTH_LIMIT = 1000.0
# float16 loss scaling: the starting scale, good steps in a row before it doubles, and how many steps in a row
# may be skipped (non-finite gradients; the scale halves each time) before the run is declared diverged.
LOSS_SCALE = 1024.0
LOSS_SCALE_MAX = 2.0**16
LOSS_SCALE_GROWTH_STEPS = 50
MAX_SKIPPED_IN_A_ROW = 10


class AdaptConfigError(PpmtrackError, ValueError):
    """An adaptation setting is out of range."""


class AdaptationDiverged(PpmtrackError, RuntimeError):
    """The prompt optimisation diverged (non-finite or exploding loss); the message says which setting to lower."""


@dataclass
class AdaptConfig:
    """Settings of few-shot adaptation; defaults were chosen by measurement on the bundled sample (docs/method.md).

    Parameters
    ----------
    resolution : int, optional
        Side of the square engine input; default: the model's native size (512 for SD 1.5, 256 for tiny).
    layers : str
        Cross-attention layers whose maps are used: ``up`` (the paper's L = 9), ``down``, ``mid``, ``all``, or
        comma-separated names/indices.
    timestep, noise_seed : int
        Diffusion timestep of the input noise (paper: 10) and the seed of that fixed noise.
    fg_steps, fg_lr : int, float
        At most this many Adam steps, and the learning rate, for the foreground prompt (trained on FARA masks of
        the support frames); it stops earlier when its loss reaches a plateau (`fg_patience`).
    fg_patience : int
        Stop the foreground prompt when the mean loss of the last `PLATEAU_WINDOW` steps has not fallen by 1 %
        below its best for this many steps (`loss_plateaued`); 0 = always run `fg_steps` steps.
    steps, lr : int, float
        Adam steps and learning rate for the keypoint prompts. ``lr=None`` (the default): chosen by validation
        when it runs, else the model family's rate (`DEFAULT_LR`: 5e-4 for Stable Diffusion, 0.1 for tiny).
    loss : str
        ``ce``: spatial-softmax cross-entropy to the keypoint plus the sigmoid-map MSE (keeps confidences
        calibrated); ``mse``: the paper's sigmoid-map MSE to a Gaussian heatmap.
    batch_size : int
        Views per optimisation step.
    views_per_frame : int
        Augmented views prepared per support frame (the first is the frame itself); 1 disables augmentation.
    heatmap_sigma : float
        Standard deviation of the target Gaussian, in cells of the finest map.
    missing_as_empty : bool
        Train keypoints marked missing in a support frame towards an empty map there.
    fara_delta : float
        FARA's Gaussian distance scale, as a fraction of the image size (paper: 0.1).
    crop : CropViewConfig
        Views cropped around the labelled animal, as tracking with ``--crop auto`` shows it
        (`engine.crop_views`); ``crop.views_per_frame`` of them per support frame, beside the letterboxed views.
    seed : int
        Seed of the prompt initialisation, the augmentation and the batch order.
    """

    resolution: int | None = None
    layers: str = "up"
    timestep: int = 10
    noise_seed: int = 0
    fg_steps: int = 100
    fg_patience: int = 10
    fg_lr: float = 1e-2
    steps: int = 150
    lr: float | None = None
    loss: str = "ce"
    mse_weight: float = 1.0
    batch_size: int = 4
    views_per_frame: int = 16
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    heatmap_sigma: float = 1.0
    missing_as_empty: bool = True
    fara_delta: float = 0.1
    crop: CropViewConfig = field(default_factory=CropViewConfig)
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise AdaptConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name, option in (("lr", "--lr"), ("fg_lr", "--fg-lr")):
            value = getattr(self, name)
            if value is None and name == "lr":
                continue  # the model family's default, filled in by Engine.adapt
            try:
                valid = math.isfinite(float(value)) and float(value) > 0
            except (TypeError, ValueError):
                valid = False
            if not valid:
                raise AdaptConfigError(f"the learning rate {name} ({option}) must be a finite number above 0, "
                                       f"got {value!r}")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if isinstance(self.crop, dict):
            self.crop = CropViewConfig(**self.crop)

    def to_dict(self) -> dict:
        return asdict(self)


Progress = Callable[[str, int, int, float], None]
PLATEAU_WINDOW = 5  # steps averaged before comparing losses (single steps are noisy: random batches)
PLATEAU_IMPROVEMENT = 0.01  # a relative fall of the windowed loss smaller than this is no improvement


def windowed_losses(history: list[float], window: int = PLATEAU_WINDOW) -> np.ndarray:
    """Mean loss of every `window` consecutive steps (empty when fewer steps were run)."""
    if len(history) < window:
        return np.zeros(0)
    return np.convolve(np.asarray(history, dtype=np.float64), np.ones(window) / window, mode="valid")


def loss_plateaued(history: list[float], patience: int, window: int = PLATEAU_WINDOW,
                   min_improvement: float = PLATEAU_IMPROVEMENT) -> bool:
    """True when the windowed loss of the last `patience` steps never fell below (1 − `min_improvement`) × the
    best windowed loss before them; False while fewer than `window` + `patience` steps were run, or patience 0."""
    means = windowed_losses(history, window)
    if patience <= 0 or len(means) <= patience:
        return False
    return bool(means[-patience:].min() > means[:-patience].min() * (1.0 - min_improvement))


def loss_floor(history: list[float], window: int = PLATEAU_WINDOW) -> float | None:
    """The lowest windowed loss of a run (None for a run shorter than the window)."""
    means = windowed_losses(history, window)
    return float(means.min()) if len(means) else None


@dataclass
class SupportViews:
    """Letterboxed support frames and their augmented views, encoded once."""

    latents: torch.Tensor  # (V, 4, h, w) noisy latents
    keypoints: np.ndarray  # (V, N, K, 2) input-pixel coordinates of the N instances of each view, NaN = missing
    ignore: np.ndarray  # (V, K) pushed out of the view (any instance): neither target nor "missing"
    masks: np.ndarray  # (V, S, S) FARA foreground masks
    frame_of_view: np.ndarray  # (V,) support frame index
    is_original: np.ndarray  # (V,) bool: the support frame itself, not an augmented view

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Indices of one optimisation batch: up to half of it original frames, the rest augmented views.

        Keeping originals in every batch makes the support frames themselves fit closely while the augmented
        views keep the prompts from memorising pixel positions.
        """
        originals = np.flatnonzero(self.is_original)
        augmented = np.flatnonzero(~self.is_original)
        batch_size = min(batch_size, len(self.latents))
        if len(augmented) == 0:
            return rng.choice(originals, size=batch_size, replace=False)
        n_orig = min(len(originals), max(1, batch_size // 2))
        n_aug = min(len(augmented), batch_size - n_orig)
        return np.concatenate([rng.choice(originals, size=n_orig, replace=False),
                               rng.choice(augmented, size=n_aug, replace=False)])


def support_inputs(support: SupportSet, size: int, device: torch.device
                   ) -> list[tuple[torch.Tensor, InputMapping]]:
    """Each support frame as the engine sees it while tracking: `engine_input` (letterbox), frame by frame."""
    return [engine_input(image, size, device) for image in support.images]


def to_image(x: torch.Tensor) -> np.ndarray:
    """(3, S, S) engine input in [-1, 1] → (S, S, 3) float32 on the 0–255 scale, for OpenCV."""
    return ((x.float().permute(1, 2, 0) + 1.0) * 127.5).cpu().numpy()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) float images on the 0–255 scale → (B, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def gaussian_maps(xy_map: torch.Tensor, res: int, sigma: float) -> torch.Tensor:
    """(..., 2) map-cell coordinates → (..., res, res) Gaussians with peak 1; NaN coordinates → zeros."""
    g = torch.arange(res, dtype=torch.float32, device=xy_map.device)
    x = xy_map[..., 0, None, None]
    y = xy_map[..., 1, None, None]
    out = torch.exp(-((g[None, :] - x) ** 2 + (g[:, None] - y) ** 2) / (2 * sigma**2))
    return torch.nan_to_num(out, nan=0.0)


def cross_entropy_floor(res: int, sigma: float) -> float:
    """The smallest possible `ce` loss: the entropy of the normalised target Gaussian (its CE with itself)."""
    p = gaussian_maps(torch.tensor([[res / 2.0, res / 2.0]]), res, sigma).flatten()
    p = p / p.sum()
    return float(-(p * torch.log(p.clamp(min=1e-30))).sum())


def keypoint_loss(maps: torch.Tensor, logits: torch.Tensor | None, xy_map: torch.Tensor, ignore: torch.Tensor,
                  cfg: AdaptConfig) -> torch.Tensor:
    """Loss of layer-averaged maps (B, L, K, R, R) against keypoints in map cells (NaN = missing).

    ``xy_map``: (B, K, 2), or (B, N, K, 2) for N animals per view: the target of a keypoint then peaks on
    every animal that shows it (the maximum of their Gaussians), and it is missing only where no animal has it.
    """
    res = maps.shape[-1]
    m = maps.mean(dim=1)
    if xy_map.dim() == 3:
        xy_map = xy_map[:, None]
    target = gaussian_maps(xy_map, res, cfg.heatmap_sigma).amax(dim=1)
    labelled = torch.isfinite(xy_map).all(dim=-1).any(dim=1)
    visible = labelled & ~ignore
    missing = ~labelled & ~ignore & cfg.missing_as_empty
    counted = (visible | missing).float()
    mse = ((m - target) ** 2).mean(dim=(-2, -1))
    mse = (mse * counted).sum() / counted.sum().clamp(min=1)
    if cfg.loss == "mse":
        return mse
    logp = torch.log_softmax(logits.mean(dim=1).flatten(-2), dim=-1)
    p = target.flatten(-2)
    p = p / p.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    ce = -(p * logp).sum(dim=-1)
    ce = (ce * visible.float()).sum() / visible.float().sum().clamp(min=1)
    return ce + cfg.mse_weight * mse


def build_views(extractor: MapExtractor, support: SupportSet, size: int, fg_init: torch.Tensor, cfg: AdaptConfig,
                rng: np.random.Generator) -> SupportViews:
    """Letterbox the support frames, compute their FARA masks, make augmented views and encode them.

    The first view of each frame is exactly the tensor `Engine.predict` makes of that frame.
    """
    device = extractor.model.device
    inputs = support_inputs(support, size, device)
    frames = [to_image(x[0]) for x, _ in inputs]
    kps = [box.to_input(kp) for (_, box), kp in zip(inputs, support.instances(), strict=True)]
    masks = []
    cond = fg_init.reshape(1, 1, -1).expand(1, TOKENS, -1)
    for (x, _), image, kp in zip(inputs, frames, kps, strict=True):
        with torch.no_grad():
            feats = extractor.layer_maps(extractor.encode(x), cond, n_tokens=0, features=True)["features"]
        res = max(f.shape[1] for f in feats)
        grid = torch.cat([F.interpolate(F.normalize(f.float(), dim=-1).permute(0, 3, 1, 2), size=(res, res),
                                        mode="bilinear", align_corners=False) for f in feats], dim=1)
        rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
        masks.append(fara_mask(rgb, grid[0].permute(1, 2, 0).cpu().numpy(), kp.reshape(-1, 2), delta=cfg.fara_delta))
    perm = flip_permutation(support.names, support.flip_pairs)
    allow_flip = bool(support.flip_pairs)
    vkps, vign, vmasks, owner, original, latents, pending = [], [], [], [], [], [], []

    def encode_pending():
        with torch.no_grad():
            latents.append(extractor.encode(torch.cat(pending).to(device)))
        pending.clear()

    n_views = max(1, cfg.views_per_frame)
    for i in range(len(frames)):
        for v in range(n_views):
            if v == 0:
                view, kp, mask, out = inputs[i][0], kps[i], masks[i], np.zeros(len(support.names), bool)
            else:
                mat, flip = random_affine(rng, size, cfg.augment, allow_flip)
                image, kp, mask, out = warp_view(frames[i], kps[i], masks[i], mat, flip, perm)
                view = to_tensor(image[None])
                out = out.any(axis=0)
            pending.append(view)
            vkps.append(kp)
            vign.append(out)
            vmasks.append(mask)
            owner.append(i)
            original.append(v == 0)
            if len(pending) == 8:
                encode_pending()
    k = len(support.names)
    for i, (image, kp_frame) in enumerate(zip(support.images, support.instances(), strict=True)):  # crop views
        # every animal's keypoints go into the crop (a crop around all labelled animals of the frame)
        for view, kp, mask, out in crop_views(image, kp_frame.reshape(-1, 2), masks[i], inputs[i][1], size,
                                              cfg.crop, rng, device):
            for store, value in ((pending, view), (vkps, kp.reshape(-1, k, 2)), (vign, out.reshape(-1, k).any(axis=0)),
                                 (vmasks, mask), (owner, i), (original, False)):
                store.append(value)
            if len(pending) == 8:
                encode_pending()
    if pending:
        encode_pending()
    return SupportViews(torch.cat(latents), np.stack(vkps), np.stack(vign), np.stack(vmasks), np.array(owner),
                        np.array(original))


class _Optimiser:
    """Adam on float32 prompt embeddings (the master weights), with divergence checks and, when the model runs in
    float16, a dynamic loss scale.

    A float16 backward may overflow: that step is skipped (counted in `skipped`) and the scale halved; after
    `LOSS_SCALE_GROWTH_STEPS` good steps in a row it doubles again. Before each step the loss is checked: not
    finite, or above `EXPLODE_FACTOR` times the first step's loss, and after it the prompts (not finite, or
    grown beyond `PROMPT_GROWTH_LIMIT` times their starting norm); each raises `AdaptationDiverged` naming the
    learning rate and the option that sets it (`stage`, `option`, `default` word the advice). More than
    `MAX_SKIPPED_IN_A_ROW` skipped steps in a row also count as divergence.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, dtype: torch.dtype, stage: str = "keypoint",
                 option: str = "--lr", default: float = 0.1, total: int = 0):
        self.params = params
        self.lr, self.stage, self.option, self.default, self.total = lr, stage, option, default, total
        self.dynamic = dtype == torch.float16
        self.scale = LOSS_SCALE if self.dynamic else 1.0
        self.skipped = 0
        self.first: float | None = None
        self.start_norm = max(self._norm(), 1.0)
        self._steps = self._skipped_in_a_row = self._good_in_a_row = 0
        self.opt = torch.optim.Adam(params, lr=lr)
        beta1 = self.opt.param_groups[0]["betas"][0]
        if not lr / (1 - beta1) < torch.finfo(torch.float32).max:
            raise self._diverged("the Adam step size (learning rate / (1 - beta1)) does not fit in float32")

    def _norm(self) -> float:
        return float(torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in self.params])))

    def _diverged(self, what: str) -> AdaptationDiverged:
        suggestion = min(self.default, self.lr / 10)
        family = (f" (this model family's default is {self.default:g})" if self.option == "--lr"
                  and suggestion != self.default else "")
        return AdaptationDiverged(
            f"adaptation diverged: {what}; the {self.stage} prompt learning rate {self.lr:g} is too high, try "
            f"{self.option} {suggestion:g} or lower{family} (nothing was saved)")

    def step(self, loss: torch.Tensor) -> bool:
        """One Adam step on `loss`; False when it was skipped (non-finite gradients)."""
        value = float(loss.detach())
        self._steps += 1
        if self.first is None:
            if not math.isfinite(value):
                raise AdaptationDiverged(
                    f"the {self.stage} loss is {value} at the first step, before any update: the model's "
                    f"{'float16 ' if self.dynamic else ''}forward pass overflows"
                    f"{'; try --dtype float32 or bfloat16' if self.dynamic else ''} (nothing was saved)")
            self.first = value
        at = f"at step {self._steps}{' of ' + str(self.total) if self.total else ''}"
        if not math.isfinite(value):
            raise self._diverged(f"the {self.stage} loss became {value} {at}")
        if self.first > 0 and value > EXPLODE_FACTOR * self.first:
            raise self._diverged(f"the {self.stage} loss rose from {self.first:.3g} to {value:.3g} {at}")
        self.opt.zero_grad(set_to_none=True)
        (loss * self.scale).backward()
        grads = [p.grad for p in self.params]
        if not all(g is not None and bool(torch.isfinite(g).all()) for g in grads):
            self.skipped += 1
            self._skipped_in_a_row += 1
            self._good_in_a_row = 0
            if self._skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
                raise self._diverged(f"the gradients were not finite for {self._skipped_in_a_row} steps in a row")
            if self.dynamic:
                self.scale /= 2
            return False
        for g in grads:
            g /= self.scale
        self.opt.step()
        self._skipped_in_a_row = 0
        self._good_in_a_row += 1
        if self.dynamic and self._good_in_a_row % LOSS_SCALE_GROWTH_STEPS == 0:
            self.scale = min(self.scale * 2, LOSS_SCALE_MAX)
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise self._diverged(f"the prompts became non-finite {at}")
        norm = self._norm()
        if norm > PROMPT_GROWTH_LIMIT * self.start_norm:
            raise self._diverged(f"the {self.stage} prompt grew to {norm / self.start_norm:.3g} times its "
                                 f"starting size {at}")
        return True


def train_foreground_prompt(extractor: MapExtractor, views: SupportViews, init: torch.Tensor, cfg: AdaptConfig,
                            rng: np.random.Generator, progress: Progress | None = None
                            ) -> tuple[torch.Tensor, list, int]:
    """Optimise P_f so its layer-averaged map matches the FARA masks (MSE, eq. 7) until the loss reaches a plateau
    (`loss_plateaued` with ``cfg.fg_patience``) or ``cfg.fg_steps`` steps.

    Returns P_f, the losses (one per step run) and the number of skipped steps; when it stops early, the last
    progress call's total is the number of steps run. Raises `AdaptationDiverged` if the loss explodes.
    """
    device = extractor.model.device
    pf = torch.nn.Parameter(init.clone().float().to(device))
    opt = _Optimiser([pf], cfg.fg_lr, extractor.model.dtype, "foreground", "--fg-lr", AdaptConfig.fg_lr,
                     cfg.fg_steps)
    targets = None
    history = []
    for step in range(cfg.fg_steps):
        idx = views.sample_batch(rng, cfg.batch_size)
        cond = pf.reshape(1, 1, -1).expand(1, TOKENS, -1)
        maps = extractor.layer_maps(views.latents[idx], cond, n_tokens=1)["maps"]  # (B, L, 1, R, R)
        res = maps.shape[-1]
        if targets is None:
            targets = torch.from_numpy(np.stack([cv2.resize(m, (res, res), interpolation=cv2.INTER_AREA)
                                                 for m in views.masks])).float().to(device)
        loss = ((maps.mean(dim=1)[:, 0] - targets[idx]) ** 2).mean()
        opt.step(loss)
        history.append(float(loss.detach()))
        done = loss_plateaued(history, cfg.fg_patience)
        if progress:
            progress("foreground", step + 1, step + 1 if done else cfg.fg_steps, history[-1])
        if done:
            break
    return pf.detach(), history, opt.skipped


def train_keypoint_prompts(extractor: MapExtractor, views: SupportViews, pf: torch.Tensor, n_keypoints: int,
                           cfg: AdaptConfig, rng: np.random.Generator, progress: Progress | None = None,
                           on_step: Callable[[int, torch.Tensor], None] | None = None,
                           init: torch.Tensor | None = None) -> tuple[torch.Tensor, list, int]:
    """Optimise the N keypoint prompts (tokens 0..N-1; the rest hold P_f) against the keypoint heatmaps.

    Returns the prompts, the losses and the number of skipped steps; raises `AdaptationDiverged` if the loss
    explodes. `on_step(steps_done, prompts)` is called after every step (validation evaluates intermediate
    prompts). `init`: (N, c) starting prompts (e.g. from the keypoints' names, `engine.text_prompts`); default: P_f
    for every keypoint.
    """
    if n_keypoints >= TOKENS:
        raise UsageError(f"at most {TOKENS - 1} keypoints fit in one {TOKENS}-token conditioning")
    device = extractor.model.device
    start = pf.reshape(1, -1).repeat(n_keypoints, 1) if init is None else init.reshape(n_keypoints, -1)
    prompts = torch.nn.Parameter(start.float().to(device).clone())
    rest = pf.reshape(1, -1).expand(TOKENS - n_keypoints, -1).to(device)
    family_lr = default_lr(extractor.model)
    opt = _Optimiser([prompts], family_lr if cfg.lr is None else cfg.lr, extractor.model.dtype, "keypoint", "--lr",
                     family_lr, cfg.steps)
    history = []
    stride = None
    for step in range(cfg.steps):
        idx = views.sample_batch(rng, cfg.batch_size)
        cond = torch.cat([prompts, rest], dim=0)[None]
        out = extractor.layer_maps(views.latents[idx], cond, n_tokens=n_keypoints, logits=cfg.loss == "ce")
        if stride is None:
            stride = views.masks.shape[-1] / out["maps"].shape[-1]
        xy = torch.from_numpy(input_to_grid(views.keypoints[idx], stride)).float().to(device)
        ignore = torch.from_numpy(views.ignore[idx]).to(device)
        loss = keypoint_loss(out["maps"], out.get("logits"), xy, ignore, cfg)
        opt.step(loss)
        history.append(float(loss.detach()))
        if progress:
            progress("keypoints", step + 1, cfg.steps, history[-1])
        if on_step:
            on_step(step + 1, prompts.detach())
    return prompts.detach(), history, opt.skipped
