"""The foreground prompt pre-trained on a base set: written once, reused by adaptation, tied to its model."""

import json

import cv2
import numpy as np
import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine, EngineFileError
from ppmtrack.engine.foreground import load_foreground
from ppmtrack.engine.models import load_model
from ppmtrack.pipelines.cli import main

QUICK = AdaptConfig(resolution=128, steps=2, fg_steps=2, views_per_frame=2, batch_size=2)


@pytest.fixture
def base_set(tmp_path):
    """Two annotated images of a different 'animal' (an ellipse with three keypoints) on noise."""
    rng = np.random.default_rng(0)
    frames = []
    for i, (cx, cy) in enumerate([(60, 50), (90, 70)]):
        img = (rng.random((120, 160, 3)) * 80).astype(np.uint8)
        cv2.ellipse(img, (cx, cy), (30, 14), 20 * i, 0, 360, (200, 170, 60), -1)
        cv2.imwrite(str(tmp_path / f"b{i}.png"), img)
        frames.append({"image": f"b{i}.png", "points": {"head": [cx + 25, cy], "tail": [cx - 25, cy],
                                                          "mid": [cx, cy]}})
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"keypoints": ["head", "tail", "mid"], "frames": frames}))
    return path


def test_pretrain_then_adapt_from_it(base_set, tmp_path, sample_support, capsys):
    fg = tmp_path / "rodents.fg"
    status = main(["pretrain-foreground", str(base_set), str(base_set), "-o", str(fg), "--model", "tiny",
                   "--resolution", "128", "--fg-steps", "3", "--views-per-frame", "2"])
    assert status == 0 and fg.is_file()
    out = capsys.readouterr().out
    assert "4 frames of 2 base set(s)" in out and "loss" in out
    model = load_model("tiny")
    prompt, meta = load_foreground(fg, model)
    assert prompt.shape == (768,) and meta["resolution"] == 128
    engine = Engine.adapt(sample_support, model, QUICK, foreground=fg)
    assert engine.info["adaptation"]["foreground_prompt"] == "base set (rodents.fg)"
    assert engine.info["adaptation"]["foreground_loss"] == []  # not refitted on the support frames
    assert torch.equal(engine.foreground_prompt.cpu(), prompt.cpu())


def test_foreground_file_for_another_model_is_refused(base_set, tmp_path):
    fg = tmp_path / "x.fg"
    assert main(["pretrain-foreground", str(base_set), "-o", str(fg), "--model", "tiny", "--resolution", "128",
                 "--fg-steps", "1", "--views-per-frame", "1"]) == 0
    other = load_model("tiny")
    with torch.no_grad():
        other.unet.conv_in.weight.mul_(2.0)
    with pytest.raises(EngineFileError, match="different weights"):
        load_foreground(fg, other)
    engine_like = tmp_path / "not.fg"
    engine_like.write_bytes(b"junk")
    with pytest.raises(EngineFileError, match="not a ppmtrack foreground-prompt file"):
        load_foreground(engine_like, other)


def test_pretrain_foreground_reads_the_individual_asked_for(tmp_path):
    """A multi-animal DeepLabCut base set trains on every animal, or on the one --individual names."""
    from test_io_dlc import make_project

    folder = make_project(tmp_path, multi=True, size=(128, 96))
    labels = folder / "CollectedData_me.csv"
    fg = tmp_path / "x.fg"
    quick = ["--model", "tiny", "--resolution", "128", "--fg-steps", "1", "--views-per-frame", "1"]
    assert main(["pretrain-foreground", str(labels), "-o", str(fg), "--individual", "mouse9", *quick]) == 2
    assert not fg.exists()  # an animal the file does not have: refused, nothing written
    assert main(["pretrain-foreground", str(labels), "-o", str(fg), "--individual", "mouse2", *quick]) == 0
    assert fg.is_file()
    every = tmp_path / "every.fg"
    assert main(["pretrain-foreground", str(labels), "-o", str(every), *quick]) == 0  # all animals' keypoints
