"""bench/tracking_quality.py's controls: random detections score below a good detector, and a fused result
that does not beat the controls is called out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "tracking_quality.py"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ppmtrack_bench_tracking_quality", BENCH)
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def clip_and_frames(bench):
    clip = bench.CLIPS["sample"]()
    frames, fps = bench.read_video(clip.video)
    return clip, frames[:60], fps


def test_random_detections_score_below_a_good_detector_and_a_broken_one_is_called_out(bench, clip_and_frames):
    clip, frames, fps = clip_and_frames
    rng = np.random.default_rng(1)
    truth = clip.label_xy[:len(frames)]
    good = truth + rng.normal(0, 2.0, truth.shape)  # a good engine: 2 px off
    conf = np.full(truth.shape[:2], 0.9)
    result = bench.score_variants(clip, frames, fps, 1, good, conf)  # support: frame 10, in the span
    control = result["(c) random detections"][0.1]
    assert result["detection"][0.1] > control and result["+flow"][0.1] > control
    assert "(a) flow+anchors, no detections" in result and "(b) LK restarted at each support frame" in result
    assert result["verdict"] != "the detector adds nothing here"
    broken = bench.random_detections(truth, frames.shape[1:3], seed=5)  # a broken engine: random positions
    flagged = bench.score_variants(clip, frames, fps, 1, broken, conf)
    assert flagged["verdict"] == "the detector adds nothing here", flagged
    assert "the detector adds nothing here" in bench.format_table([result, flagged])
    # the self-check, as every run makes it: the good detector agrees with the motion, random detections do not
    assert result["self_check"]["engine"]["flagged"] == 0
    assert result["self_check"]["random detections"]["flagged"] == len(clip.names)
