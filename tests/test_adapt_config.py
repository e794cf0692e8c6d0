"""Adaptation settings and the optimisation's safety nets: learning rates validated, the caller's AdaptConfig
left alone, divergence stopped with advice (no engine written), float16 loss scaling that adapts and counts
skipped steps, and augmented masks that follow the image's mirrored borders.

Adaptation here runs at 64x64 on one or two support frames with a few steps, so each test takes seconds.
"""

import copy

import numpy as np
import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.engine.adapt import AdaptationDiverged, AdaptConfigError, _Optimiser
from ppmtrack.engine.augment import warp_view
from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.engine.models import DiffusionModel
from ppmtrack.pipelines.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # steady on a small, shared CPU (see conftest)

SUPPORT = "samples/support.json"
QUICK = dict(resolution=64, steps=4, fg_steps=2, views_per_frame=1, batch_size=2)


@pytest.fixture
def small_support(sample_support):
    return type(sample_support)(sample_support.names, sample_support.images[:2], sample_support.keypoints[:2])


@pytest.mark.parametrize("option", ["lr", "fg_lr"])
@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf"), "fast"])
def test_learning_rate_must_be_finite_and_positive(option, value):
    with pytest.raises(AdaptConfigError, match=f"learning rate {option}") as err:
        AdaptConfig(**{option: value})
    assert isinstance(err.value, PpmtrackError) and isinstance(err.value, ValueError)


def test_cli_rejects_a_bad_learning_rate_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "x.engine"
    assert main(["adapt", SUPPORT, "--model", "tiny", "--lr", "nan", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning rate lr (--lr) must be a finite number above 0, got nan" in err[0]
    assert not out.exists()


def test_adapt_does_not_change_the_callers_config(tiny_model, small_support, monkeypatch):
    monkeypatch.setattr(DiffusionModel, "native_resolution", property(lambda self: 64))
    config = AdaptConfig(**{**QUICK, "resolution": None})
    before = copy.deepcopy(config)
    engine = Engine.adapt(small_support, tiny_model, config)
    assert config == before and config.resolution is None
    assert engine.config.resolution == 64 and engine.resolution == 64


def test_pretrain_foreground_does_not_change_the_callers_config(tiny_model, small_support, monkeypatch):
    from ppmtrack.engine.foreground import pretrain_foreground

    monkeypatch.setattr(DiffusionModel, "native_resolution", property(lambda self: 64))
    config = AdaptConfig(**{**QUICK, "resolution": None})
    before = copy.deepcopy(config)
    _, result = pretrain_foreground([small_support], tiny_model, config)
    assert config == before and result["config"].resolution == 64


def test_keypoint_learning_rate_far_too_high_stops_with_advice(tiny_model, small_support):
    with pytest.raises(AdaptationDiverged) as err:
        Engine.adapt(small_support, tiny_model, AdaptConfig(**{**QUICK, "lr": 1e6}))
    message = str(err.value)
    assert "keypoint" in message and "learning rate 1e+06 is too high" in message
    assert "try --lr 0.1 or lower" in message and isinstance(err.value, PpmtrackError)  # the tiny family's rate


def test_diverging_foreground_prompt_stops_with_advice(tiny_model, small_support):
    # the foreground loss is an MSE of maps in [0, 1] and cannot explode: the prompt's growth shows it instead
    with pytest.raises(AdaptationDiverged, match=r"foreground prompt grew .* try --fg-lr 0\.01 or lower"):
        Engine.adapt(small_support, tiny_model, AdaptConfig(**{**QUICK, "fg_lr": 1e6}))


def test_default_learning_rates_do_not_trip_the_divergence_checks(tiny_model, small_support):
    engine = Engine.adapt(small_support, tiny_model, AdaptConfig(**{**QUICK, "steps": 12}))
    assert engine.info["adaptation"]["skipped_steps"] == {"foreground": 0, "keypoints": 0}


@pytest.mark.parametrize("lr", ["1e6", "1e38"])
def test_cli_diverging_adaptation_is_one_line_exit_2_and_no_engine(lr, tmp_path, capsys):
    out = tmp_path / "diverged.engine"
    status = main(["adapt", SUPPORT, "--model", "tiny", "--resolution", "64", "--steps", "4", "--fg-steps", "1",
                   "--no-augment", "--lr", lr, "-o", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("ppmtrack: error:")]
    assert len(lines) == 1 and "adaptation diverged" in lines[0] and "try --lr" in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_non_finite_loss_is_divergence():
    p = torch.nn.Parameter(torch.ones(3))
    opt = _Optimiser([p], 0.1, torch.float32, total=5)
    assert opt.step((p**2).sum())
    with pytest.raises(AdaptationDiverged, match="keypoint loss became nan at step 2 of 5"):
        opt.step((p * float("nan")).sum())


def test_loss_rising_tenfold_above_its_first_value_is_divergence():
    p = torch.nn.Parameter(torch.ones(3))
    opt = _Optimiser([p], 0.01, torch.float32, total=9)
    assert opt.step((p**2).sum())  # 3.0: the reference
    assert opt.step((p**2).sum() * 9)  # noisy but below 10x: trains on
    with pytest.raises(AdaptationDiverged, match=r"keypoint loss rose from 3 to 3[0-9.]+ at step 3 of 9.*--lr 0\.001"):
        opt.step((p**2).sum() * 11)


def test_non_finite_first_loss_in_float16_blames_the_precision_not_the_learning_rate():
    p = torch.nn.Parameter(torch.ones(3))
    opt = _Optimiser([p], 0.1, torch.float16)
    with pytest.raises(AdaptationDiverged, match="float16 forward pass overflows; try --dtype float32"):
        opt.step((p * float("inf")).sum())


def test_float16_loss_scale_backs_off_counts_skipped_steps_and_grows_again():
    """d(loss)/dp is 300 per element, computed in float16: at the starting scale 1024, 300 x 1024 overflows
    float16 (max 65504); the scale must fall to 128 (3 skipped steps) and the prompt then train."""
    p = torch.nn.Parameter(torch.zeros(4))
    opt = _Optimiser([p], 0.01, torch.float16, total=60)

    def loss():
        return (p.to(torch.float16) * 300 + 100).float().sum()

    results = [opt.step(loss()) for _ in range(4)]
    assert results == [False, False, False, True]
    assert opt.skipped == 3 and opt.scale == 128
    assert torch.allclose(p.grad, torch.full((4,), 300.0))  # unscaled before Adam saw it
    assert torch.all(p.detach() < 0)  # the step was taken on the float32 master weights
    for _ in range(49):  # 50 good steps in a row: the scale doubles to 256, which overflows once more
        assert opt.step(loss())
    assert opt.scale == 256
    assert not opt.step(loss()) and opt.skipped == 4 and opt.scale == 128


def test_gradients_that_never_become_finite_are_divergence():
    p = torch.nn.Parameter(torch.ones(2))
    opt = _Optimiser([p], 0.1, torch.float32)

    def loss():  # a finite loss whose gradient is infinite at p = 1
        return (p - 1).abs().sqrt().sum() + 1

    with pytest.raises(AdaptationDiverged, match="gradients were not finite for 11 steps in a row"):
        for _ in range(20):
            opt.step(loss())
    assert opt.skipped == 11


def test_float16_adaptation_reports_skipped_steps(small_support):
    from ppmtrack.engine.models import load_model

    model = load_model("tiny", device="cpu", dtype="float16")
    engine = Engine.adapt(small_support, model, AdaptConfig(**QUICK))
    info = engine.info["adaptation"]
    assert info["dtype"] == "float16"
    assert set(info["skipped_steps"]) == {"foreground", "keypoints"}
    assert all(isinstance(n, int) and 0 <= n <= 4 for n in info["skipped_steps"].values())
    assert torch.isfinite(engine.keypoint_prompts).all()


def test_augmented_mask_follows_the_mirrored_image_at_the_border():
    """A white 'animal' touching the left border, shifted right: the image mirrors it back in at the border, and
    the mask must mark those mirrored pixels as foreground too."""
    size = 64
    mask = np.zeros((size, size), np.float32)
    mask[20:44, 0:12] = 1.0
    image = np.repeat((mask * 255)[..., None], 3, axis=2).astype(np.float32)
    shift = np.array([[1.0, 0.0, 16.0], [0.0, 1.0, 0.0]])
    keypoints = np.array([[5.0, 30.0]])
    view, kp, wmask, outside = warp_view(image, keypoints, mask, shift, False, np.arange(1))
    white = view[..., 0] > 127
    assert white[20:44, :16].any()  # the mirrored copy exists
    assert np.array_equal(white, wmask > 0.5)
    assert np.allclose(kp, [[21.0, 30.0]]) and not outside.any()


def test_learning_rate_without_validation_is_the_model_familys():
    """No SD weights here: the family rule is checked on the UNet config that decides it."""
    from types import SimpleNamespace

    from ppmtrack.engine.adapt import DEFAULT_LR, default_lr
    from ppmtrack.engine.validate import LEARNING_RATES, PAPER_SETTING, ValidationConfig, plan_validation

    sd15 = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=(320, 640, 1280, 1280))))
    tiny = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=(32, 64))))
    assert default_lr(sd15) == 5e-4 == DEFAULT_LR["sd"] and default_lr(tiny) == 0.1
    assert AdaptConfig().lr is None  # no single number for every model
    # the SD grid holds the paper's own setting (5e-4, 20 steps per support frame, MSE) beside its rates
    assert PAPER_SETTING == {"lr": 5e-4, "steps_per_frame": 20, "loss": "mse"}
    plan, _ = plan_validation(4, AdaptConfig(), ValidationConfig(), "sd")
    assert plan.paper_steps == 80 and plan.paper_run_steps > 0 and plan.learning_rates == LEARNING_RATES["sd"]
    assert plan.total_steps <= 2 * AdaptConfig().steps  # still within the cost rule
    tiny_plan, _ = plan_validation(4, AdaptConfig(), ValidationConfig(), "tiny")
    assert tiny_plan.paper_run_steps == 0
    fixed, _ = plan_validation(4, AdaptConfig(), ValidationConfig(learning_rates=(1e-3,)), "sd")
    assert fixed.paper_run_steps == 0  # a rate the user fixed is not second-guessed


def test_adapt_without_validation_records_which_default_applied(tiny_model, small_support):
    from ppmtrack.pipelines.engine_report import format_engine_info

    engine = Engine.adapt(small_support, tiny_model, AdaptConfig(**QUICK))  # validates by default: too few steps
    assert engine.config.lr == 0.1
    defaults = engine.info["defaults"]
    assert defaults["lr_from"] == "family default" and defaults["family"] == "tiny"
    assert "validation was skipped" in defaults["why"]
    off = Engine.adapt(small_support, tiny_model, AdaptConfig(**QUICK), validation="off")
    assert "validation was off" in off.info["defaults"]["why"]
    given = Engine.adapt(small_support, tiny_model, AdaptConfig(**{**QUICK, "lr": 0.05}), validation="off")
    assert given.config.lr == 0.05 and given.info["defaults"]["lr_from"] == "given"
    line = [x for x in format_engine_info({"path": "e", "bytes": 1, "sha256": "x", "meta": {
        "keypoints": ["a"], "model": {"name": "tiny"}, "adapt_config": {}, "info": engine.info}}).splitlines()
        if "keypoint learning rate" in x]
    assert line and "tiny family's default" in line[0]
