"""Keypoint prompts that start from their names (engine/text_prompts.py, ``adapt --init``). The tiny model's text
encoder is random: these tests check the mechanics (different names, different starts; the choice stored), not
whether a name start helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.engine.support import SupportSet
from ppmtrack.engine.text_prompts import keypoint_phrases, name_prompts
from ppmtrack.engine.validate import ValidationConfig

QUICK = dict(resolution=64, steps=10, fg_steps=2, views_per_frame=2, batch_size=2)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_different_names_give_different_starting_prompts(tiny_model):
    assert keypoint_phrases(["tail_base"], "mouse") == ["the tail base of a mouse"]
    pf = torch.randn(tiny_model.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    a, record = name_prompts(tiny_model, ["nose", "tail", "nose"], "mouse", scale_to=pf)
    assert torch.allclose(a[0], a[2]) and not torch.allclose(a[0], a[1])  # the same phrase, the same start
    np.testing.assert_allclose(a.norm(dim=1).numpy(), float(pf.norm()), rtol=1e-5)  # at P_f's scale
    b, _ = name_prompts(tiny_model, ["nose"], "fly", scale_to=pf)
    assert not torch.allclose(a[0], b[0])  # another species, another start
    assert record["phrases"][0] == "the nose of a mouse" and "tiny random" in record["text_encoder"]


def _subset(support: SupportSet, frames: list[int]) -> SupportSet:
    return SupportSet(support.names, [support.images[i] for i in frames], support.keypoints[frames],
                      support.skeleton, labels=[support.labels[i] for i in frames])


def test_the_start_is_used_and_stored_in_the_engine(tiny_model, sample_support, tmp_path):
    support = _subset(sample_support, [0, 1])
    cfg = AdaptConfig(**{**QUICK, "steps": 1, "lr": 1e-6})  # one tiny step: the prompts stay at their start
    names = Engine.adapt(support, tiny_model, cfg, init="names", species="lizard")
    start, _ = name_prompts(tiny_model, list(support.names), "lizard", scale_to=names.foreground_prompt)
    assert torch.allclose(names.keypoint_prompts, start, atol=1e-3)
    assert names.info["prompt_init"]["chosen"] == "names"
    path = tmp_path / "names.engine"
    names.save(path)
    assert Engine.load(path, model=tiny_model).info["prompt_init"]["phrases"][0].endswith("of a lizard")
    plain = Engine.adapt(support, tiny_model, cfg)
    assert plain.info["prompt_init"]["chosen"] == "foreground"
    assert torch.allclose(plain.keypoint_prompts, plain.foreground_prompt.expand_as(plain.keypoint_prompts),
                          atol=1e-3)


def test_auto_chooses_by_held_out_error_and_records_both(tiny_model, sample_support):
    support = _subset(sample_support, [0, 1, 2])
    engine = Engine.adapt(support, tiny_model, AdaptConfig(**QUICK), init="auto", species="lizard",
                          validation=ValidationConfig(min_run_steps=2))
    record = engine.info["prompt_init"]
    errors = record["held_out_error_px"]
    assert set(errors) == {"names", "foreground"} and record["why"] == "lower held-out error in validation"
    assert record["chosen"] == min(errors, key=lambda k: (errors[k], k != "foreground"))
    assert engine.info["validation"]["error_px"] == errors[record["chosen"]]
