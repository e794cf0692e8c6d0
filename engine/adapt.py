"""Few-shot adaptation: the foreground prompt P_f (PPM 3.1.3) and the keypoint prompts (PPM 3.2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ppmtrack.engine.augment import AugmentConfig, flip_permutation, random_affine, warp_view
from ppmtrack.engine.crop_views import CropViewConfig, crop_views
from ppmtrack.engine.fara import fara_mask
from ppmtrack.engine.geometry import InputMapping, engine_input, input_to_grid
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.support import SupportSet

LOSSES = ("ce", "mse")
TOKENS = 77


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
        Adam steps and learning rate for the foreground prompt (trained on FARA masks of the support frames).
    steps, lr : int, float
        Adam steps and learning rate for the keypoint prompts.
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
    fg_steps: int = 20
    fg_lr: float = 1e-2
    steps: int = 150
    lr: float = 1e-1
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
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if isinstance(self.crop, dict):
            self.crop = CropViewConfig(**self.crop)

    def to_dict(self) -> dict:
        return asdict(self)


Progress = Callable[[str, int, int, float], None]


@dataclass
class SupportViews:
    """Letterboxed support frames and their augmented views, encoded once."""

    latents: torch.Tensor  # (V, 4, h, w) noisy latents
    keypoints: np.ndarray  # (V, K, 2) input-pixel coordinates, NaN = missing
    ignore: np.ndarray  # (V, K) pushed out of the view: neither target nor "missing"
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
    """Loss of layer-averaged maps (B, L, K, R, R) against keypoints (B, K, 2) in map cells (NaN = missing)."""
    res = maps.shape[-1]
    m = maps.mean(dim=1)
    target = gaussian_maps(xy_map, res, cfg.heatmap_sigma)
    visible = torch.isfinite(xy_map).all(dim=-1) & ~ignore
    missing = ~torch.isfinite(xy_map).all(dim=-1) & ~ignore & cfg.missing_as_empty
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
    kps = [box.to_input(kp) for (_, box), kp in zip(inputs, support.keypoints, strict=True)]
    masks = []
    cond = fg_init.reshape(1, 1, -1).expand(1, TOKENS, -1)
    for (x, _), image, kp in zip(inputs, frames, kps, strict=True):
        with torch.no_grad():
            feats = extractor.layer_maps(extractor.encode(x), cond, n_tokens=0, features=True)["features"]
        res = max(f.shape[1] for f in feats)
        grid = torch.cat([F.interpolate(F.normalize(f.float(), dim=-1).permute(0, 3, 1, 2), size=(res, res),
                                        mode="bilinear", align_corners=False) for f in feats], dim=1)
        rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
        masks.append(fara_mask(rgb, grid[0].permute(1, 2, 0).cpu().numpy(), kp, delta=cfg.fara_delta))
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
            pending.append(view)
            vkps.append(kp)
            vign.append(out)
            vmasks.append(mask)
            owner.append(i)
            original.append(v == 0)
            if len(pending) == 8:
                encode_pending()
    for i, (image, kp_frame) in enumerate(zip(support.images, support.keypoints, strict=True)):  # crop views
        for view, kp, mask, out in crop_views(image, kp_frame, masks[i], inputs[i][1], size, cfg.crop, rng, device):
            for store, value in ((pending, view), (vkps, kp), (vign, out), (vmasks, mask), (owner, i),
                                 (original, False)):
                store.append(value)
            if len(pending) == 8:
                encode_pending()
    if pending:
        encode_pending()
    return SupportViews(torch.cat(latents), np.stack(vkps), np.stack(vign), np.stack(vmasks), np.array(owner),
                        np.array(original))


class _Optimiser:
    """Adam on prompt embeddings, with a static loss scale when the model runs in float16."""

    def __init__(self, params: list[torch.Tensor], lr: float, dtype: torch.dtype):
        self.params = params
        self.opt = torch.optim.Adam(params, lr=lr)
        self.scale = 1024.0 if dtype == torch.float16 else 1.0

    def step(self, loss: torch.Tensor) -> bool:
        self.opt.zero_grad(set_to_none=True)
        (loss * self.scale).backward()
        grads = [p.grad for p in self.params]
        if not all(torch.isfinite(g).all() for g in grads):
            return False
        for g in grads:
            g /= self.scale
        self.opt.step()
        return True


def train_foreground_prompt(extractor: MapExtractor, views: SupportViews, init: torch.Tensor, cfg: AdaptConfig,
                            rng: np.random.Generator, progress: Progress | None = None) -> tuple[torch.Tensor, list]:
    """Optimise P_f so its layer-averaged map matches the FARA masks (MSE, eq. 7). Returns P_f and the losses."""
    device = extractor.model.device
    pf = torch.nn.Parameter(init.clone().float().to(device))
    opt = _Optimiser([pf], cfg.fg_lr, extractor.model.dtype)
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
        if progress:
            progress("foreground", step + 1, cfg.fg_steps, history[-1])
    return pf.detach(), history


def train_keypoint_prompts(extractor: MapExtractor, views: SupportViews, pf: torch.Tensor, n_keypoints: int,
                           cfg: AdaptConfig, rng: np.random.Generator, progress: Progress | None = None
                           ) -> tuple[torch.Tensor, list]:
    """Optimise the N keypoint prompts (tokens 0..N-1; the rest hold P_f) against the keypoint heatmaps."""
    if n_keypoints >= TOKENS:
        raise ValueError(f"at most {TOKENS - 1} keypoints fit in one {TOKENS}-token conditioning")
    device = extractor.model.device
    prompts = torch.nn.Parameter(pf.reshape(1, -1).repeat(n_keypoints, 1).float())
    rest = pf.reshape(1, -1).expand(TOKENS - n_keypoints, -1).to(device)
    opt = _Optimiser([prompts], cfg.lr, extractor.model.dtype)
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
    return prompts.detach(), history
