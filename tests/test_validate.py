"""Adaptation that validates itself (engine.validate), the foreground plateau rule, and ``ppmtrack info``."""

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.engine.adapt import loss_floor, loss_plateaued
from ppmtrack.engine.support import SupportSet
from ppmtrack.engine.validate import LEARNING_RATES, ValidationConfig, model_family, plan_validation

# small and quick: 64² input, few steps and views (the machine has 2 shared cores); validation runs of 2 steps
QUICK = dict(resolution=64, steps=10, fg_steps=4, views_per_frame=2, batch_size=2)
QUICK_VALIDATION = dict(min_run_steps=2)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subset(support: SupportSet, frames: list[int]) -> SupportSet:
    return SupportSet(support.names, [support.images[i] for i in frames], support.keypoints[frames],
                      support.skeleton, labels=[support.labels[i] for i in frames])


@pytest.fixture(scope="module")
def validated(tiny_model, sample_support):
    """An engine adapted with validation on three of the sample's support frames."""
    support = _subset(sample_support, [0, 1, 2])
    engine = Engine.adapt(support, tiny_model, AdaptConfig(**QUICK), validation=ValidationConfig(**QUICK_VALIDATION))
    return support, engine


def test_foreground_plateau_rule_stops_on_a_flat_loss_and_not_on_a_falling_one():
    falling = list(np.linspace(1.0, 0.2, 40))
    flat = falling[:20] + [falling[19]] * 20
    assert not loss_plateaued(falling, patience=10)
    assert loss_plateaued(flat, patience=10)
    assert not loss_plateaued(flat, patience=0)  # patience 0: a fixed number of steps
    assert not loss_plateaued(flat[:12], patience=10)  # too few steps to judge
    assert loss_floor(flat) == pytest.approx(falling[19])
    assert loss_floor([1.0, 2.0]) is None


def test_foreground_prompt_stops_at_its_plateau_before_the_cap(tiny_model, sample_support):
    support = _subset(sample_support, [0])
    cfg = AdaptConfig(resolution=64, steps=1, fg_steps=200, fg_patience=3, fg_lr=1e-6, views_per_frame=1,
                      batch_size=1)  # a learning rate this small cannot improve the loss: a plateau at once
    engine = Engine.adapt(support, tiny_model, cfg)
    adaptation = engine.info["adaptation"]
    assert adaptation["foreground_steps"] < 200
    assert adaptation["foreground_loss_floor"] is not None


def test_model_family_by_unet_width(tiny_model):
    assert model_family(tiny_model) == "tiny"
    sd15 = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=(320, 640, 1280, 1280))))
    assert model_family(sd15) == "sd"
    assert max(LEARNING_RATES["sd"]) <= 1e-2 and min(LEARNING_RATES["sd"]) <= 5e-4


def test_validation_plan_keeps_to_the_cost_rule():
    cfg = AdaptConfig(steps=150)
    plan, _ = plan_validation(8, cfg, ValidationConfig(), "tiny")
    assert plan.total_steps <= 2 * cfg.steps  # validation ≤ 2× the keypoint training: adapt ≤ 3× in all
    assert len(plan.held_out) >= 2 and plan.run_steps < cfg.steps
    assert sorted(plan.checkpoints.values()) == [75, 150]
    fixed_lr, _ = plan_validation(8, cfg, ValidationConfig(learning_rates=(0.1,)), "tiny")
    assert len(fixed_lr.held_out) > len(plan.held_out)  # one rate to try: more held-out frames fit
    one, _ = plan_validation(1, cfg, ValidationConfig(), "sd")
    assert one.held_out == [0] and one.learning_rates == LEARNING_RATES["sd"]
    none, reason = plan_validation(4, AdaptConfig(steps=10), ValidationConfig(), "tiny")
    assert none is None and "steps" in reason


def test_leave_one_out_error_is_reported_and_not_below_the_training_error(validated):
    from ppmtrack.pipelines.evaluate import support_errors

    support, engine = validated
    v = engine.info["validation"]
    assert v["mode"] == "leave-one-frame-out" and not v["weaker"]
    assert len(v["held_out"]) >= 2
    assert set(v["error_px_per_keypoint"]) == set(support.names)
    assert 0.0 <= v["pck@0.1"] <= v["pck@0.2"] <= 1.0
    assert len(v["grid"]) == len(LEARNING_RATES["tiny"]) * 2
    training = support_errors(engine, support)
    assert v["error_px"] >= np.nanmean(training), "held-out frames predicted better than the training frames"


def test_chosen_settings_are_stored_in_the_engine_file_and_reproduced_on_reload(validated, tiny_model, tmp_path):
    support, engine = validated
    chosen = engine.info["validation"]["chosen"]
    assert any(e["lr"] == chosen["lr"] and e["steps"] == chosen["steps"] for e in engine.info["validation"]["grid"])
    assert (engine.config.lr, engine.config.steps) == (chosen["lr"], chosen["steps"])
    path = tmp_path / "validated.engine"
    engine.save(path)
    loaded = Engine.load(path, model=tiny_model)
    assert (loaded.config.lr, loaded.config.steps) == (chosen["lr"], chosen["steps"])
    assert loaded.info["validation"] == json.loads(json.dumps(engine.info["validation"]))
    # the final prompts are those of a plain adaptation with the chosen settings: validation leaves no trace
    again = Engine.adapt(support, tiny_model, AdaptConfig(**{**QUICK, "lr": chosen["lr"], "steps": chosen["steps"]}))
    assert torch.allclose(again.keypoint_prompts, loaded.keypoint_prompts, atol=1e-5)


def test_one_support_frame_validates_on_held_out_augmented_views(tiny_model, sample_support):
    support = _subset(sample_support, [0])
    engine = Engine.adapt(support, tiny_model, AdaptConfig(**QUICK),
                          validation=ValidationConfig(learning_rates=(0.1,), held_out_views=2, **QUICK_VALIDATION))
    v = engine.info["validation"]
    assert v["mode"] == "held-out augmented views" and v["weaker"]
    assert v["keypoints_scored"] > 0 and v["error_px"] > 0
    assert any("one support frame" in line for line in v["advice"])


def test_info_prints_validation_settings_and_sha256(validated, tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    support, engine = validated
    path = tmp_path / "shown.engine"
    engine.save(path)
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    chosen = engine.info["validation"]["chosen"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() in text
    assert f"chosen (*): lr {chosen['lr']:g}, {chosen['steps']} steps" in text
    assert "leave-one-frame-out" in text and all(name in text for name in support.names)
    table = text[text.index("held-out error per keypoint"):].splitlines()[1:len(support.names) + 1]
    assert [row.split()[0] for row in table] == support.names  # the engine's keypoint order, not the file's sorted
    assert main(["info", str(path), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["meta"]["info"]["validation"]["chosen"] == chosen
    assert described["meta"]["adapt_config"]["lr"] == chosen["lr"]


def test_info_refuses_a_file_that_is_not_an_engine(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--help"])
    assert exit_info.value.code == 0 and "example" in capsys.readouterr().out

    bogus = tmp_path / "notes.engine"
    bogus.write_text("hello")
    assert main(["info", str(bogus)]) == 2
    assert "not a ppmtrack engine file" in capsys.readouterr().err


def test_advice_names_poor_keypoints_and_what_to_label():
    from ppmtrack.engine.validate import advice

    one = advice(["nose", "tail_tip"], [3.0, 48.0], [0.02, 0.4], {"pck@0.2": 0.5}, 4, "sd")
    assert one == ["tail_tip: held-out error 48 px — label 2 more frames where tail_tip is visible"]
    names = [f"k{i}" for i in range(6)]
    many = advice(names, [10.0 * i for i in range(6)], [0.3] * 6, {"pck@0.2": 0.2}, 8, "tiny")
    assert len(many) == 2 and many[0].startswith("6 of 6 keypoints") and "k5 50 px, k4 40 px" in many[0]
    assert "label 4 more frames" in many[0] and "untrained" in many[1]
