"""Adaptation that validates itself: held-out accuracy of the support set, and the choice of lr and step count.

With two or more support frames, each of a few held-out frames is left out in turn (leave-one-frame-out): the
keypoint prompts are trained on the other frames' views and the held-out frame is predicted exactly as
``Engine.predict`` predicts a video frame. With one support frame there is nothing to leave out; the prompts are
trained on all its views and predicted on fresh augmented views of it (rotated, scaled, shifted copies never
trained on) — a weaker estimate: same frame, same pose, same background.

The validation runs are shorter than the final training (`ValidationConfig.run_fraction` of its steps); every
learning rate of the model family's grid is tried, and the step-count candidates are checkpoints of the same run
(a run of ``s`` steps stands for a final run of ``s / run_fraction`` steps). The setting with the best held-out
PCK@0.1 (then PCK@0.2, then mean normalised error; the fewer steps and the lower rate on a tie) is chosen, and
the final prompts are trained on all frames with it, from the same random state as an adaptation without
validation (so ``--validate off --lr LR --steps STEPS`` with the chosen values gives the same engine).

Cost rule: validation costs at most `ValidationConfig.max_cost` × the keypoint training of one adaptation (views
and the foreground prompt are shared), so adaptation with validation costs at most ~3× one adaptation. With
``auto``, the number of held-out frames is the largest that fits the rule (≥ 2); when not even that fits
(too few ``--steps`` or too many learning rates), validation is skipped and the reason recorded.

The foreground prompt P_f is trained once on all support frames and shared by the folds: it marks the animal's
area, not keypoint positions, but the held-out estimate is slightly optimistic because of it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from ppmtrack.engine.adapt import (
    SD_MIN_CHANNELS,  # noqa: F401 (re-exported: the family rule lives in engine.adapt)
    AdaptConfig,
    Progress,
    SupportViews,
    model_family,
    to_image,
    train_keypoint_prompts,
)
from ppmtrack.engine.augment import random_affine, warp_view
from ppmtrack.engine.geometry import engine_input
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.support import SupportSet

PredictKeypoints = Callable[[torch.Tensor, torch.Tensor, AdaptConfig, np.ndarray], np.ndarray]
"""``(prompts, foreground prompt, config, images) -> (N, K, 2)`` keypoints, as ``Engine.predict`` gives them."""

MIN_BBOX_SIZE_PX = 32.0
PCK_THRESHOLDS = (0.1, 0.2)
# Learning-rate grids per model family. SD-sized: around the PPM paper's 5e-4 up to 1e-2. tiny (untrained, random
# weights, maps far from calibrated): larger steps are needed; 0.1 is the measured default (docs/method.md).
LEARNING_RATES = {"tiny": (0.03, 0.1, 0.3), "sd": (5e-4, 2e-3, 1e-2)}
# The PPM paper's own setting, tried beside the SD grid so that a first run with real weights shows whether the
# grid's choice beats it: Adam lr 5e-4, 20 steps per support frame, the sigmoid-map MSE loss.
PAPER_SETTING = {"lr": 5e-4, "steps_per_frame": 20, "loss": "mse"}
MAX_KEYPOINT_ADVICE = 3  # more poor keypoints than this are named in one line of advice
VALIDATION_SEED_STREAM = 7  # the validation's random state: seeded from AdaptConfig.seed, apart from training's


def bbox_sizes(keypoints: np.ndarray, min_bbox_size: float = MIN_BBOX_SIZE_PX) -> np.ndarray:
    """(F,) max(w, h) of each frame's labelled keypoints (F, K, 2), at least ``min_bbox_size`` — PCK's length."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a frame with no labelled keypoint
        span = np.nanmax(keypoints, axis=1) - np.nanmin(keypoints, axis=1)
    return np.maximum(np.nan_to_num(span.max(axis=1), nan=0.0), min_bbox_size)


@dataclass
class ValidationConfig:
    """What `validate_adaptation` tries and how much it may cost.

    Parameters
    ----------
    mode : str
        ``auto``: validate when it fits the cost rule (else skip, saying why); ``off``: no validation.
    learning_rates : tuple of float, optional
        Keypoint-prompt learning rates to try; default: the model family's grid (`LEARNING_RATES`). One value
        (the user fixed ``--lr``) still estimates the held-out accuracy.
    step_fractions : tuple of float
        Candidate final step counts as fractions of ``AdaptConfig.steps``; ``(1.0,)`` when the user fixed
        ``--steps``.
    run_fraction : float
        Length of a validation run relative to the final training.
    max_cost : float
        Validation may cost this many times the keypoint training of one adaptation.
    held_out_views : int
        Augmented views predicted when there is only one support frame.
    min_run_steps : int
        Shortest validation run worth making; below it validation is skipped.
    paper_setting : bool
        For a Stable-Diffusion-sized model, also try the PPM paper's own setting (`PAPER_SETTING`: lr 5e-4,
        20 steps per support frame, MSE loss) beside the grid; off when the user fixed the rate, steps or loss.
    """

    mode: str = "auto"
    learning_rates: tuple[float, ...] | None = None
    step_fractions: tuple[float, ...] = (0.5, 1.0)
    run_fraction: float = 0.2
    max_cost: float = 2.0
    held_out_views: int = 4
    min_run_steps: int = 4
    paper_setting: bool = True

    def __post_init__(self):
        if self.mode not in ("auto", "off"):
            raise ValueError(f"validation mode must be auto or off, got {self.mode!r}")


@dataclass
class ValidationPlan:
    """The runs `validate_adaptation` makes: held-out frames × learning rates, each `run_steps` long."""

    held_out: list[int]  # support frame indices (one frame: [0], predicted on augmented views)
    learning_rates: tuple[float, ...]
    run_steps: int
    checkpoints: dict[int, int]  # validation step → the final step count it stands for
    paper_run_steps: int = 0  # length of the run standing for the paper's setting (0: not tried)
    paper_steps: int = 0  # the final step count it stands for (20 per support frame)

    @property
    def total_steps(self) -> int:
        return len(self.held_out) * (len(self.learning_rates) * self.run_steps + self.paper_run_steps)


def plan_validation(n_frames: int, cfg: AdaptConfig, vcfg: ValidationConfig, family: str
                    ) -> tuple[ValidationPlan | None, str]:
    """The validation runs that fit the cost rule, or None and the reason none fit."""
    rates = tuple(vcfg.learning_rates or LEARNING_RATES[family])
    run_steps = int(round(cfg.steps * vcfg.run_fraction))
    if run_steps < vcfg.min_run_steps:
        return None, (f"{cfg.steps} keypoint steps leave validation runs of {run_steps} steps "
                      f"(fewer than {vcfg.min_run_steps})")
    paper_steps = paper_run_steps = 0
    if family == "sd" and vcfg.paper_setting and vcfg.learning_rates is None:
        paper_steps = PAPER_SETTING["steps_per_frame"] * n_frames
        paper_run_steps = max(vcfg.min_run_steps, int(round(paper_steps * vcfg.run_fraction)))
    affordable = int(vcfg.max_cost * cfg.steps // (run_steps * len(rates) + paper_run_steps))
    wanted = 1 if n_frames == 1 else 2
    if affordable < wanted:
        return None, (f"{len(rates)} learning rates × {wanted} held-out frame(s) cost more than "
                      f"{vcfg.max_cost:g}× one adaptation's keypoint training")
    n_folds = 1 if n_frames == 1 else min(n_frames, affordable)
    held_out = sorted({int(round(i)) for i in np.linspace(0, n_frames - 1, n_folds)})
    checkpoints = {}
    for f in sorted(vcfg.step_fractions):
        checkpoints[max(1, int(round(run_steps * f)))] = max(1, int(round(cfg.steps * f)))
    return ValidationPlan(held_out, rates, run_steps, checkpoints, paper_run_steps, paper_steps), ""


def views_without_frame(views: SupportViews, frame: int) -> SupportViews:
    """The support views of every frame but `frame` (the training set of one leave-one-frame-out fold)."""
    keep = views.frame_of_view != frame
    idx = torch.from_numpy(np.flatnonzero(keep)).to(views.latents.device)
    return SupportViews(views.latents[idx], views.keypoints[keep], views.ignore[keep], views.masks[keep],
                        views.frame_of_view[keep], views.is_original[keep])


@dataclass
class HeldOut:
    """Images to predict, their true keypoints (in the images' pixels) and the factor image px → frame px."""

    images: np.ndarray  # (N, H, W, 3) uint8
    keypoints: np.ndarray  # (N, K, 2), NaN = not scored
    to_frame_px: np.ndarray  # (N,) multiply an error in image pixels by this to get support-frame pixels


def held_out_frame(support: SupportSet, frame: int) -> HeldOut:
    """One support frame as it is: predicted like a video frame."""
    return HeldOut(support.images[frame][None], support.keypoints[frame][None].copy(), np.ones(1))


def held_out_views(support: SupportSet, size: int, cfg: AdaptConfig, n_views: int, rng: np.random.Generator,
                   device: torch.device) -> HeldOut:
    """`n_views` fresh random affine views of the (only) support frame, in the engine's square input."""
    x, box = engine_input(support.images[0], size, device)
    image = to_image(x[0])
    kp = box.to_input(support.keypoints[0])
    perm = np.arange(len(support.names))
    images, kps, factors = [], [], []
    for _ in range(n_views):
        matrix, _ = random_affine(rng, size, cfg.augment, allow_flip=False)
        view, vkp, _, _ = warp_view(image, kp, None, matrix, False, perm)
        images.append(np.clip(np.round(view), 0, 255).astype(np.uint8))
        kps.append(vkp)
        view_scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2])))) * float(np.mean(box.scale))
        factors.append(1.0 / view_scale)
    return HeldOut(np.stack(images), np.stack(kps), np.array(factors))


def score(errors_px: np.ndarray, normalised: np.ndarray) -> dict:
    """PCK@0.1/0.2, mean pixel error and mean normalised error of (N, K) errors in support-frame pixels and the
    same errors divided by their frame's PCK length (NaN: not labelled)."""
    scored = np.isfinite(errors_px)
    out = {f"pck@{a:g}": float((normalised[scored] <= a).mean()) if scored.any() else None
           for a in PCK_THRESHOLDS}
    out["error_px"] = float(errors_px[scored].mean()) if scored.any() else None
    out["normalised_error"] = float(normalised[scored].mean()) if scored.any() else None
    return out


def _column_means(values: np.ndarray) -> list:
    """Per-keypoint mean of (N, K) values over the finite ones (None for a keypoint never scored)."""
    out = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        out.append(float(finite.mean()) if len(finite) else None)
    return out


def _rank(entry: dict) -> tuple:
    return (entry["pck@0.1"] or 0.0, entry["pck@0.2"] or 0.0, -(entry["normalised_error"] or np.inf))


def advice(names: list[str], per_keypoint_px: list, per_keypoint_normalised: list, overall: dict, n_frames: int,
           family: str) -> list[str]:
    """What to do about poor held-out accuracy: per keypoint beyond PCK@0.2's radius on average, and overall."""
    lines = []
    more = max(2, n_frames // 2)
    poor = [(name, px) for name, px, norm in zip(names, per_keypoint_px, per_keypoint_normalised, strict=True)
            if norm is not None and norm > max(PCK_THRESHOLDS)]
    if len(poor) <= MAX_KEYPOINT_ADVICE:
        lines += [f"{name}: held-out error {px:.0f} px — label {more} more frames where {name} is visible"
                  for name, px in poor]
    else:  # most keypoints are poor: one line, worst first, not a screenful
        worst = ", ".join(f"{name} {px:.0f} px" for name, px in sorted(poor, key=lambda p: -p[1]))
        lines.append(f"{len(poor)} of {len(names)} keypoints have held-out errors beyond the PCK@0.2 radius "
                     f"({worst}) — label {more} more frames where they are visible")
    pck = overall.get("pck@0.2")
    if pck is not None and pck < 0.5:
        text = (f"held-out PCK@0.2 is {pck:.2f}: label more support frames that span the animal's poses, "
                "positions and lighting")
        if family == "tiny":
            text += " (the tiny model is untrained: low accuracy is expected; use Stable Diffusion weights)"
        lines.append(text)
    if n_frames == 1:
        lines.append("one support frame: the estimate comes from augmented views of that frame only (weaker); "
                     "label 2 or more frames for leave-one-frame-out validation")
    return lines


def validate_adaptation(extractor: MapExtractor, views: SupportViews, pf: torch.Tensor, support: SupportSet,
                        cfg: AdaptConfig, vcfg: ValidationConfig, progress: Progress | None = None,
                        init: torch.Tensor | None = None, *, predict: PredictKeypoints) -> dict:
    """Estimate held-out accuracy and choose the learning rate and step count (``record["chosen"]``; `cfg` is
    not changed: the caller trains with ``dataclasses.replace(cfg, **record["chosen"])``).

    `predict(prompts, pf, cfg, images)` gives the (N, K, 2) keypoints of ``images`` predicted exactly as tracking
    predicts them (``Engine.adapt`` hands :func:`engine.api.predict_keypoints` bound to its model and names).

    `views` and `pf` are those of the final adaptation (shared, not rebuilt). Returns the record stored as
    ``info["validation"]`` in the engine file; ``{"skipped": reason}`` when validation does not fit the cost
    rule. `init`: the keypoint prompts' start (`train_keypoint_prompts`), default P_f.
    """
    model = extractor.model
    family = model_family(model)
    n_frames = len(support.images)
    plan, reason = plan_validation(n_frames, cfg, vcfg, family)
    if plan is None:
        return {"skipped": reason, "family": family}
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, VALIDATION_SEED_STREAM])
    single = n_frames == 1
    errors = {(lr, c): [] for lr in plan.learning_rates for c in plan.checkpoints}  # frame-px errors (N, K)
    normalised = {key: [] for key in errors}
    done = 0

    def report(stage: str, step: int, total: int, loss: float) -> None:
        nonlocal done
        done += 1
        if progress:
            progress("validation", done, plan.total_steps, loss)

    for frame in plan.held_out:
        if single:
            train_views = views
            target = held_out_views(support, cfg.resolution, cfg, vcfg.held_out_views, rng, model.device)
        else:
            train_views = views_without_frame(views, frame)
            target = held_out_frame(support, frame)
        sizes = bbox_sizes(target.keypoints, MIN_BBOX_SIZE_PX / target.to_frame_px.mean())
        runs = [(lr, replace(cfg, lr=lr, steps=plan.run_steps), plan.checkpoints) for lr in plan.learning_rates]
        if plan.paper_run_steps:
            runs.append(("paper", replace(cfg, lr=PAPER_SETTING["lr"], loss=PAPER_SETTING["loss"],
                                          steps=plan.paper_run_steps), {plan.paper_run_steps: plan.paper_steps}))
        for key, run_cfg, checkpoints in runs:

            def evaluate(step: int, prompts: torch.Tensor, key=key, run_cfg=run_cfg, checkpoints=checkpoints,
                         target=target, sizes=sizes):
                if step not in checkpoints:
                    return
                predicted = predict(prompts, pf, run_cfg, target.images)
                err = np.linalg.norm(predicted - target.keypoints, axis=2)  # NaN where not labelled
                errors.setdefault((key, step), []).append(err * target.to_frame_px[:, None])
                normalised.setdefault((key, step), []).append(err / sizes[:, None])

            train_keypoint_prompts(extractor, train_views, pf, len(support.names), run_cfg, rng, report,
                                   on_step=evaluate, init=init)
    grid = []
    for (key, step), errs in errors.items():
        err_px = np.concatenate(errs)
        norm = np.concatenate(normalised[(key, step)])
        if key == "paper":
            entry = {"lr": PAPER_SETTING["lr"], "steps": plan.paper_steps, "run_steps": step,
                     "loss": PAPER_SETTING["loss"], "paper": True}
        else:
            entry = {"lr": key, "steps": plan.checkpoints[step], "run_steps": step}
        entry.update(score(err_px, norm))
        grid.append(entry)
    best = max(grid, key=_rank)  # the first best: the paper's setting (last) wins only when strictly better
    chosen_key = ("paper" if best.get("paper") else best["lr"], best["run_steps"])
    err_px = np.concatenate(errors[chosen_key])
    norm = np.concatenate(normalised[chosen_key])
    per_kp_px = _column_means(err_px)
    per_kp_norm = _column_means(norm)
    overall = {k: best[k] for k in ("pck@0.1", "pck@0.2", "error_px")}
    return {
        "mode": "held-out augmented views" if single else "leave-one-frame-out",
        "weaker": single,
        "family": family,
        "held_out": ([f"{vcfg.held_out_views} augmented views of {support.labels[0]}"] if single
                     else [support.labels[i] for i in plan.held_out]),
        "support_frames": n_frames,
        "run_steps": plan.run_steps,
        "run_fraction": vcfg.run_fraction,
        "grid": grid,
        "chosen": {"lr": float(best["lr"]), "steps": int(best["steps"]),
                   **({"loss": best["loss"]} if best.get("paper") else {})},
        "pck@0.1": overall["pck@0.1"],
        "pck@0.2": overall["pck@0.2"],
        "error_px": overall["error_px"],
        "keypoints_scored": int(np.isfinite(err_px).sum()),
        "error_px_per_keypoint": dict(zip(support.names, per_kp_px, strict=True)),
        "advice": advice(support.names, per_kp_px, per_kp_norm, overall, n_frames, family),
        "seconds": round(time.perf_counter() - t0, 2),
    }
