"""Several animals with an engine adapted *with validation* (issue 19 item 5): the per-keypoint detection noise
that validation gives must reach every multi-animal path (whole-frame maps, per-animal crops) without meeting
the identity filter's one-point centre. Small and quick: 64² input, a few steps, 12 frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.engine.validate import ValidationConfig
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_multi_tracks_csv
from ppmtrack.pipelines.track_multi import track_video_multi
from ppmtrack.tracker import SmoothingParams
from ppmtrack.tracker.identity import IdentityTracker

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_identity_centre_takes_a_per_keypoint_detection_noise():
    k = 3
    smoothing = SmoothingParams(measurement_noise_px=(1.0, 4.0, 9.0))
    tracker = IdentityTracker(k, smoothing=smoothing)
    rng = np.random.default_rng(0)
    base = np.array([[[10.0, 10.0], [14.0, 10.0], [18.0, 10.0]], [[60.0, 60.0], [64.0, 60.0], [68.0, 60.0]]])
    for t in range(5):
        xy = base + [t, 0] + rng.normal(0, 0.2, base.shape)
        ids = tracker.update(t, t / 10, xy[::-1] if t % 2 else xy, np.full((2, k), 0.9))
        assert sorted(ids.tolist()) == [0, 1]
        assert ids.tolist() == ([1, 0] if t % 2 else [0, 1])  # the same animal keeps its identity
    # the centre's noise is the RMS of the used keypoints' noise: all three, then only the first
    assert tracker._centre_params(np.ones(k, bool)).measurement_noise_px == pytest.approx(np.sqrt(98 / 3))
    assert tracker._centre_params(np.array([True, False, False])).measurement_noise_px == pytest.approx(1.0)


@pytest.fixture(scope="module")
def validated_pair_engine(tiny_model):
    support = read_annotation(SAMPLES / "pair_support.json").to_support()
    engine = Engine.adapt(support, tiny_model, AdaptConfig(resolution=64, steps=10, fg_steps=2, views_per_frame=2,
                                                           batch_size=2),
                          validation=ValidationConfig(min_run_steps=2))
    assert engine.info["validation"].get("error_px_per_keypoint"), engine.info["validation"]
    return engine


@pytest.mark.parametrize("crops", [False, True], ids=["animals", "animal-crops"])
def test_multi_animal_run_with_a_validated_engine(validated_pair_engine, tmp_path, crops):
    summary = track_video_multi(SAMPLES / "pair.mp4", validated_pair_engine, tmp_path, animals=2, stop=12,
                                batch_size=4, crops=crops, write_video=False, progress=False)
    assert summary.status == "complete" and summary.frames_processed == 12
    noise = summary.settings["detection_noise"]
    assert noise["source"].startswith("engine validation") and len(noise["px"]) == len(validated_pair_engine.names)
    tracks = read_multi_tracks_csv(tmp_path / "pair.csv")
    assert 1 <= len(tracks) <= 2 and all(len(t.frame) == 12 for t in tracks.values())
    assert json.loads((tmp_path / "pair.summary.json").read_text())["csv_positions"] == "rts"
