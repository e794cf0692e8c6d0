"""Keypoint discovery without labels on the frozen model (StableKeypoints: seeds/unsupervised-keypoints-paper.txt).

N candidate token embeddings are optimised together so that their cross-attention maps, normalised with a
softmax across the tokens (eq. 2; PPM's per-token sigmoid would let two tokens settle on one spot), become
single Gaussians at their own peaks (localisation, eq. 6–8) that follow the image under small affine warps
(equivariance, eq. 5). The losses of an image count only its k most localised tokens (eq. 9). Afterwards each
training image's k most localised tokens are thinned to K by farthest-point sampling and the K tokens chosen
most often are kept (eq. 10); their maps are read with test-time averaging over augmented views (eq. 11).

The UNet runs through `engine.infer.MapExtractor` (attention capture and PEI forward), the views come from
`engine.augment` and coordinates go through `engine.geometry`. Deviations from the paper: docs/method.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ppmtrack.engine.adapt import _Optimiser, gaussian_maps, to_image, to_tensor
from ppmtrack.engine.attention import TOKENS, select_layers
from ppmtrack.engine.augment import AugmentConfig, random_affine, warp_view
from ppmtrack.engine.errors import PpmtrackError, UsageError
from ppmtrack.engine.geometry import InputMapping, engine_input, grid_to_input
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.localize import soft_argmax_peak
from ppmtrack.engine.models import DiffusionModel

Progress = Callable[[str, int, int, float], None]


class DiscoveryError(PpmtrackError, ValueError):
    """Discovery cannot run with these settings or frames; the message says why."""


def paper_augment() -> AugmentConfig:
    """The paper's equivariance warps: rotation within ±15°, shift within ±0.25 of the side, scale 0.9–1.1
    (the paper: 1.0–1.2; `random_affine` draws scales symmetrically, see docs/method.md)."""
    return AugmentConfig(rotate_deg=15.0, scale=0.1, translate=0.25, flip=False)


@dataclass
class DiscoverConfig:
    """Settings of keypoint discovery.

    Parameters
    ----------
    resolution : int, optional
        Side of the square input; default: the model's native size.
    layers, timestep, noise_seed
        As in `engine.adapt.AdaptConfig` (the discovered tokens are read by an engine with these).
    candidates : int
        N, candidate tokens optimised together (the whole conditioning sequence).
    top_k : int
        k, the most localised tokens of each image that the losses and the selection count (paper: 25).
    steps, lr, batch_size
        Adam steps, learning rate and images per step.
    equivariance_weight : float
        λ_equiv (paper: 10).
    sigma : float
        Standard deviation of the target Gaussians, in cells of the finest captured map.
    views_per_frame : int
        Augmented views prepared (and encoded once) per frame for the equivariance loss.
    tta_views : int
        Views averaged when reading the discovered points (the frame itself and tta_views − 1 warps; paper: 10).
    augment : AugmentConfig
        The warps of the equivariance loss and of test-time averaging.
    seed : int
        Seed of the token initialisation, the warps and the batch order.
    """

    resolution: int | None = None
    layers: str = "up"
    timestep: int = 10
    noise_seed: int = 0
    candidates: int = 64
    top_k: int = 25
    steps: int = 300
    lr: float = 5e-3
    batch_size: int = 4
    equivariance_weight: float = 10.0
    sigma: float = 1.0
    views_per_frame: int = 8
    tta_views: int = 10
    augment: AugmentConfig = field(default_factory=paper_augment)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        for name in ("candidates", "top_k", "steps", "batch_size", "views_per_frame", "tta_views"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "steps" else 1):
                raise DiscoveryError(f"discovery setting {name} must be a whole number of at least "
                                     f"{0 if name == 'steps' else 1}, got {value!r}")
        if self.top_k > self.candidates:
            raise DiscoveryError(f"--top-k {self.top_k} cannot exceed --candidates {self.candidates}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise DiscoveryError(f"the learning rate must be a finite number above 0, got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_keypoints(n_keypoints: int, cfg: DiscoverConfig) -> None:
    """Refuse a K that discovery cannot give (before any model is loaded)."""
    if n_keypoints < 1:
        raise DiscoveryError(f"--keypoints must be at least 1, got {n_keypoints}")
    if n_keypoints > cfg.top_k:
        raise DiscoveryError(f"--keypoints {n_keypoints} is more than the {cfg.top_k} most localised candidates "
                             f"kept per frame (--top-k {cfg.top_k} of --candidates {cfg.candidates}); ask for "
                             f"fewer keypoints or raise --top-k and --candidates")
    if n_keypoints >= TOKENS:
        raise DiscoveryError(f"at most {TOKENS - 1} keypoints fit in one engine's {TOKENS}-token conditioning")


# ---- maps -------------------------------------------------------------------------------------------------

def token_maps(extractor: MapExtractor, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, R, R) maps of the N tokens: softmax across the tokens of each layer's head-averaged scores, then
    averaged over the layers (eq. 2–3). The conditioning is the N tokens themselves."""
    out = extractor.layer_maps(latents, tokens[None], n_tokens=tokens.shape[0], logits=True)
    return torch.softmax(out["logits"], dim=2).mean(dim=1)


def warp_back(maps: torch.Tensor, matrices: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T⁻¹(M(T(X))): maps of warped views (B, N, R, R) resampled into the original image's frame.

    ``matrices`` (B, 2, 3) map original input pixels to view pixels (`engine.augment.random_affine`). Returns
    the resampled maps and a (B, 1, R, R) mask of the cells whose source lies inside the view.
    """
    b, _, r, _ = maps.shape
    stride = size / r
    cells = torch.arange(r, dtype=torch.float64)
    x = grid_to_input(cells, stride)
    gy, gx = torch.meshgrid(x, x, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # (R, R, 3) original input pixels
    m = torch.from_numpy(np.asarray(matrices, dtype=np.float64))  # (B, 2, 3)
    src = torch.einsum("bij,hwj->bhwi", m, pts)  # view pixels
    valid = ((src >= -0.5) & (src <= size - 0.5)).all(dim=-1)
    grid = ((src + 0.5) / size * 2 - 1).to(maps.dtype).to(maps.device)  # align_corners=False convention
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, valid[:, None].to(maps.dtype).to(maps.device)


def peak_gaussians(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """G_n: a Gaussian with peak 1 at each map's maximum (eq. 7–8), no gradient."""
    r = maps.shape[-1]
    flat = maps.detach().flatten(-2).argmax(dim=-1)
    xy = torch.stack([flat % r, flat // r], dim=-1).float()
    return gaussian_maps(xy, r, sigma)


def localisation_kl(maps: torch.Tensor, gaussians: torch.Tensor) -> torch.Tensor:
    """KL(G_n ‖ M_n) with both normalised over the image (eq. 9): small for a map that is one sharp blob."""
    p = gaussians.flatten(-2)
    p = p / p.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    q = maps.flatten(-2)
    q = q / q.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    return (p * (torch.log(p.clamp(min=1e-12)) - torch.log(q.clamp(min=1e-12)))).sum(dim=-1)


# ---- frames and views --------------------------------------------------------------------------------------

@dataclass
class DiscoveryViews:
    """The frames letterboxed and encoded, and a pool of warped views of each (encoded once)."""

    inputs: list[np.ndarray]  # (S, S, 3) float 0–255 letterboxed frames
    mappings: list[InputMapping]  # frame → input
    latents: torch.Tensor  # (F, 4, h, w)
    view_latents: torch.Tensor  # (F·V, 4, h, w)
    view_matrices: np.ndarray  # (F·V, 2, 3) original input → view pixels
    view_owner: np.ndarray  # (F·V,) frame index


def encode_batches(extractor: MapExtractor, images: list[torch.Tensor], batch: int = 8) -> torch.Tensor:
    """Encode (1, 3, S, S) inputs in batches of `batch` into noisy latents."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(extractor.encode(torch.cat(images[i:i + batch])))
    return torch.cat(out)


def build_discovery_views(extractor: MapExtractor, frames: list[np.ndarray], size: int, cfg: DiscoverConfig,
                          rng: np.random.Generator) -> DiscoveryViews:
    device = extractor.model.device
    placed = [engine_input(frame, size, device) for frame in frames]
    inputs = [to_image(x[0]) for x, _ in placed]
    latents = encode_batches(extractor, [x for x, _ in placed])
    views, mats, owner = [], [], []
    empty = np.zeros((0, 2))
    for i, image in enumerate(inputs):
        for _ in range(cfg.views_per_frame):
            m, _ = random_affine(rng, size, cfg.augment, allow_flip=False)
            warped, _, _, _ = warp_view(image, empty, None, m, False, np.arange(0))
            views.append(to_tensor(warped[None]))
            mats.append(m)
            owner.append(i)
    return DiscoveryViews(inputs, [m for _, m in placed], latents, encode_batches(extractor, views),
                          np.stack(mats), np.array(owner))


# ---- optimisation ------------------------------------------------------------------------------------------

def discovery_losses(extractor: MapExtractor, tokens: torch.Tensor, latents: torch.Tensor,
                     view_latents: torch.Tensor, matrices: np.ndarray, size: int, cfg: DiscoverConfig
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Localisation and equivariance losses of a batch of images and one warped view of each, over each image's
    `top_k` most localised tokens."""
    m0 = token_maps(extractor, latents, tokens)
    m1 = token_maps(extractor, view_latents, tokens)
    back, valid = warp_back(m1, matrices, size)
    g0 = peak_gaussians(m0, cfg.sigma)
    g1 = peak_gaussians(m1, cfg.sigma)
    kl = localisation_kl(m0.detach(), g0)  # (B, N)
    top = torch.topk(-kl, cfg.top_k, dim=1).indices  # (B, k)
    chosen = torch.zeros_like(kl, dtype=torch.bool).scatter_(1, top, True).float()
    per_token_loc = 0.5 * (((m0 - g0) ** 2).mean(dim=(-2, -1)) + ((m1 - g1) ** 2).mean(dim=(-2, -1)))
    loc = (per_token_loc * chosen).sum() / chosen.sum()
    sq = ((back - m0) ** 2 * valid).sum(dim=(-2, -1)) / valid.sum(dim=(-2, -1)).clamp(min=1)
    equiv = (sq * chosen).sum() / chosen.sum()
    return loc, equiv


def initial_tokens(n: int, dim: int, seed: int) -> torch.Tensor:
    """N random token embeddings (standard normal, fixed seed): the starting point and the random control."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def optimise_tokens(extractor: MapExtractor, views: DiscoveryViews, cfg: DiscoverConfig, size: int,
                    rng: np.random.Generator, progress: Progress | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Optimise the N candidates; returns the initial tokens, the optimised ones and the loss history."""
    device = extractor.model.device
    init = initial_tokens(cfg.candidates, extractor.model.cross_attention_dim, cfg.seed).to(device)
    tokens = torch.nn.Parameter(init.clone())
    opt = _Optimiser([tokens], cfg.lr, extractor.model.dtype, "discovery", "--lr", DiscoverConfig.lr, cfg.steps)
    history = {"total": [], "localisation": [], "equivariance": []}
    n_views = len(views.view_latents)
    for step in range(cfg.steps):
        idx = rng.choice(n_views, size=min(cfg.batch_size, n_views), replace=False)
        owner = views.view_owner[idx]
        loc, equiv = discovery_losses(extractor, tokens, views.latents[owner], views.view_latents[idx],
                                      views.view_matrices[idx], size, cfg)
        loss = loc + cfg.equivariance_weight * equiv
        opt.step(loss)
        for name, value in (("total", loss), ("localisation", loc), ("equivariance", equiv)):
            history[name].append(float(value.detach()))
        if progress:
            progress("tokens", step + 1, cfg.steps, history["total"][-1])
    return init, tokens.detach(), history


# ---- selection and read-out ----------------------------------------------------------------------------------

def farthest_points(points: np.ndarray, k: int) -> list[int]:
    """Indices of `k` points chosen by farthest-point sampling, starting from the first (eq. 10)."""
    chosen = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < min(k, len(points)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


@torch.no_grad()
def select_tokens(extractor: MapExtractor, latents: torch.Tensor, tokens: torch.Tensor, n_keypoints: int,
                  cfg: DiscoverConfig, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """K tokens: per image the `top_k` most localised, thinned by farthest-point sampling to K; the K chosen
    in most images are kept (ties: the more localised on average). Returns the token indices (most often chosen
    first) and how often each was chosen (a fraction of the images)."""
    counts = np.zeros(tokens.shape[0])
    kl_sum = np.zeros(tokens.shape[0])
    for i in range(0, len(latents), batch):
        maps = token_maps(extractor, latents[i:i + batch], tokens)
        r = maps.shape[-1]
        kl = localisation_kl(maps, peak_gaussians(maps, cfg.sigma)).cpu().numpy()
        kl_sum += kl.sum(axis=0)
        flat = maps.flatten(-2).argmax(dim=-1).cpu().numpy()
        xy = np.stack([flat % r, flat // r], axis=-1).astype(np.float64)
        for b in range(len(kl)):
            top = np.argsort(kl[b], kind="stable")[: cfg.top_k]
            picked = top[farthest_points(xy[b, top], n_keypoints)]
            counts[picked] += 1
    order = np.lexsort((kl_sum, -counts))[:n_keypoints]
    return order, counts[order] / len(latents)


@torch.no_grad()
def averaged_maps(extractor: MapExtractor, image: np.ndarray, tokens: torch.Tensor, size: int, n_views: int,
                  augment: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """(N, R, R) maps of one letterboxed input (S, S, 3, 0–255) averaged over the input and n_views − 1 warps of
    it, each warped back (eq. 11); a cell counts only the views that cover it."""
    mats = [np.array([[1.0, 0, 0], [0, 1.0, 0]])]
    mats += [random_affine(rng, size, augment, allow_flip=False)[0] for _ in range(n_views - 1)]
    empty = np.zeros((0, 2))
    views = [to_tensor(warp_view(image, empty, None, m, False, np.arange(0))[0][None]) for m in mats]
    total, weight = None, None
    for i in range(0, len(views), 4):
        lat = extractor.encode(torch.cat(views[i:i + 4]))
        back, valid = warp_back(token_maps(extractor, lat, tokens), np.stack(mats[i:i + 4]), size)
        s, w = (back * valid).sum(dim=0), valid.sum(dim=0)
        total, weight = (s, w) if total is None else (total + s, weight + w)
    return total / weight.clamp(min=1)


@torch.no_grad()
def locate(extractor: MapExtractor, views: DiscoveryViews, tokens: torch.Tensor, chosen: np.ndarray, size: int,
           cfg: DiscoverConfig, seed: int = 0, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frame-pixel positions (F, K, 2) and peak values (F, K) of the chosen tokens, with test-time averaging.

    The softmax runs across all N candidates, as during optimisation; the chosen tokens' maps are read out."""
    rng = np.random.default_rng(seed)
    points, peaks = [], []
    for i, image in enumerate(views.inputs):
        maps = averaged_maps(extractor, image, tokens, size, cfg.tta_views, cfg.augment, rng)[chosen]
        xy, peak = soft_argmax_peak(maps, window=3)
        xy_in = grid_to_input(xy.cpu().numpy().astype(np.float64), size / maps.shape[-1])
        points.append(views.mappings[i].to_frame(xy_in))
        peaks.append(peak.cpu().numpy())
        if progress:
            progress("points", i + 1, len(views.inputs), float(peak.mean()))
    return np.stack(points), np.stack(peaks)


# ---- the whole run -------------------------------------------------------------------------------------------

@dataclass
class Discovery:
    """What discovery found.

    tokens: (N, c) optimised candidates; initial: (N, c) their random start; chosen: (K,) indices of the kept
    tokens; frequency: (K,) fraction of frames whose farthest-point set held each; keypoints (F, K, 2) frame
    pixels with test-time averaging; peaks (F, K) their map values; history: losses per step; info: settings
    and timings.
    """

    tokens: torch.Tensor
    initial: torch.Tensor
    chosen: np.ndarray
    frequency: np.ndarray
    keypoints: np.ndarray
    peaks: np.ndarray
    history: dict
    info: dict
    config: DiscoverConfig
    layers: list[str]


def discover(model: DiffusionModel, frames: list[np.ndarray], n_keypoints: int, config: DiscoverConfig | None = None,
             progress: Progress | None = None, optimise: bool = True) -> Discovery:
    """Discover `n_keypoints` consistent keypoints on RGB uint8 `frames` of one kind of animal.

    ``optimise=False`` keeps the random initial tokens (the control of docs/discover.md), with the same
    selection and read-out.
    """
    cfg = config or DiscoverConfig()
    check_keypoints(n_keypoints, cfg)
    if not frames:
        raise DiscoveryError("no frames to discover keypoints on")
    size = cfg.resolution or model.native_resolution
    if size % 64:
        raise UsageError(f"resolution must be a multiple of 64, got {size}")
    layers = select_layers(model.unet, cfg.layers)
    extractor = MapExtractor(model, layers, cfg.timestep, cfg.noise_seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    views = build_discovery_views(extractor, frames, size, cfg, rng)
    t1 = time.perf_counter()
    if optimise and cfg.steps:
        init, tokens, history = optimise_tokens(extractor, views, cfg, size, rng, progress)
    else:
        init = initial_tokens(cfg.candidates, model.cross_attention_dim, cfg.seed).to(model.device)
        tokens, history = init.clone(), {"total": [], "localisation": [], "equivariance": []}
    t2 = time.perf_counter()
    chosen, freq = select_tokens(extractor, views.latents, tokens, n_keypoints, cfg)
    keypoints, peaks = locate(extractor, views, tokens, chosen, size, cfg, seed=cfg.seed + 1, progress=progress)
    t3 = time.perf_counter()
    info = {
        "frames": len(frames), "resolution": size, "optimised": bool(optimise and cfg.steps),
        "seconds": {"views": round(t1 - t0, 2), "optimise": round(t2 - t1, 2), "select_and_locate": round(t3 - t2, 2)},
        "loss": ({k: [v[0], float(np.mean(v[-10:]))] for k, v in history.items()} if history["total"] else {}),
        "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
    }
    return Discovery(tokens.cpu(), init.cpu(), chosen, freq, keypoints, peaks, history, info, cfg, layers)


def discovered_engine(model: DiffusionModel, found: Discovery, frames: list[np.ndarray], names: list[str],
                      fg_steps: int = 60, progress: Progress | None = None):
    """An engine whose keypoint prompts are the discovered tokens; its foreground prompt is fitted, as in
    base-free adaptation, on FARA masks built from the discovered points of the frames."""
    from ppmtrack.engine.adapt import AdaptConfig, build_views, train_foreground_prompt
    from ppmtrack.engine.api import Engine
    from ppmtrack.engine.crop_views import CropViewConfig
    from ppmtrack.engine.support import SupportSet

    cfg = found.config
    size = found.info["resolution"]
    acfg = AdaptConfig(resolution=size, layers=cfg.layers, timestep=cfg.timestep, noise_seed=cfg.noise_seed,
                       fg_steps=fg_steps, views_per_frame=2, crop=CropViewConfig(views_per_frame=0), seed=cfg.seed)
    support = SupportSet(names=list(names), images=list(frames), keypoints=found.keypoints)
    extractor = MapExtractor(model, found.layers, cfg.timestep, cfg.noise_seed)
    rng = np.random.default_rng(cfg.seed)
    init = torch.randn(model.cross_attention_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(model.device)
    views = build_views(extractor, support, size, init, acfg, rng)
    pf, fg_hist, _ = train_foreground_prompt(extractor, views, init, acfg, rng, progress)
    info = {"discovery": dict(found.info, config=cfg.to_dict(), chosen_tokens=[int(i) for i in found.chosen],
                              frequency=[round(float(f), 3) for f in found.frequency]),
            "adaptation": {"foreground_prompt": "discovered points (base-free)", "foreground_steps": len(fg_hist),
                           "foreground_loss": [fg_hist[0], fg_hist[-1]] if fg_hist else [],
                           "support_frames": len(frames), "device": str(model.device)}}
    prompts = found.tokens[torch.as_tensor(found.chosen)].to(model.device)
    return Engine(model, list(names), prompts, pf, acfg, info=info)


# ---- measurement -----------------------------------------------------------------------------------------------

@torch.no_grad()
def equivariance_error(model: DiffusionModel, found: Discovery, frames: list[np.ndarray], n_warps: int = 2,
                       seed: int = 1234) -> float:
    """Mean distance (as a fraction of the input side) between T(peak on X) and the peak on T(X) of the chosen
    tokens, under fresh warps (a seed other than training's), without test-time averaging; points that T
    pushes out of the view are left out."""
    cfg = found.config
    size = found.info["resolution"]
    extractor = MapExtractor(model, found.layers, cfg.timestep, cfg.noise_seed)
    rng = np.random.default_rng(seed)
    tokens = found.tokens.to(model.device)
    errors = []
    for frame in frames:
        x, _ = engine_input(frame, size, model.device)
        image = to_image(x[0])
        mats = [random_affine(rng, size, cfg.augment, allow_flip=False)[0] for _ in range(n_warps)]
        empty = np.zeros((0, 2))
        views = [x] + [to_tensor(warp_view(image, empty, None, m, False, np.arange(0))[0][None]) for m in mats]
        maps = token_maps(extractor, extractor.encode(torch.cat(views)), tokens)[:, found.chosen]
        r = maps.shape[-1]
        xy, _ = soft_argmax_peak(maps, window=3)
        pts = grid_to_input(xy.cpu().numpy().astype(np.float64), size / r)
        for j, m in enumerate(mats):
            moved = pts[0] @ m[:, :2].T + m[:, 2]
            inside = ((moved >= 0) & (moved <= size - 1)).all(axis=1)
            errors.extend(np.linalg.norm(moved[inside] - pts[j + 1][inside], axis=1) / size)
    return float(np.mean(errors)) if errors else math.nan


def regression_error(found_points: np.ndarray, truth: np.ndarray, norm: np.ndarray, fit: np.ndarray) -> float:
    """The paper's protocol: a linear map without bias from the discovered points (F, K, 2) to the true ones
    (F, J, 2), least squares on the frames `fit` (bool (F,)), mean error on the others divided by `norm` (F,)
    (e.g. the animal's bounding-box diagonal, as PCK normalises)."""
    x = found_points.reshape(len(found_points), -1)
    y = truth.reshape(len(truth), -1)
    w, *_ = np.linalg.lstsq(x[fit], y[fit], rcond=None)
    pred = (x[~fit] @ w).reshape(-1, truth.shape[1], 2)
    err = np.linalg.norm(pred - truth[~fit], axis=-1)
    return float(np.nanmean(err / norm[~fit, None]))
