"""How far the filter trusts the detections: per-keypoint noise, taken from the engine's held-out validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_fusion import FPS, rms, sprite_video

from ppmtrack.engine.errors import UsageError
from ppmtrack.pipelines.detection_noise import (
    describe_detection_noise,
    parse_detection_noise,
    resolve_detection_noise,
)
from ppmtrack.tracker import SmoothingParams
from ppmtrack.tracker.fusion import Anchors, fuse_keypoints
from ppmtrack.tracker.kalman import measure_flow

VALIDATED = {"validation": {"mode": "leave-one-frame-out", "error_px": 30.0,
                            "error_px_per_keypoint": {"nose": 10.0, "tail": None, "paw": 0.2}},
             "adaptation": {"support_image_sizes": [[100, 100], [100, 100]]}}


def test_per_keypoint_noise_is_validated_and_broadcast():
    params = SmoothingParams(measurement_noise_px=[3, 4.5])
    assert params.measurement_noise_px == (3.0, 4.5)
    assert params.detection_noise(2).tolist() == [3.0, 4.5]
    assert SmoothingParams().detection_noise(3).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="3 keypoints"):
        params.detection_noise(3)
    for bad in ([], [1.0, -2.0], [1.0, float("nan")], [[1.0]]):
        with pytest.raises(ValueError, match="measurement_noise_px"):
            SmoothingParams(measurement_noise_px=bad)


def test_auto_takes_each_keypoints_held_out_error_in_the_videos_pixels():
    names = ["nose", "tail", "paw"]
    params, record = resolve_detection_noise(VALIDATED, names, SmoothingParams(), "auto", (200, 200))
    # support frames 100 px, video 200 px: errors double; tail (no held-out label) gets the overall error; the
    # floor keeps paw at 1 px
    assert params.measurement_noise_px == (20.0, 60.0, 1.0)
    assert record["scale"] == 2.0 and record["px"] == {"nose": 20.0, "tail": 60.0, "paw": 1.0}
    assert record["source"].startswith("engine validation")
    json.dumps(record)  # it goes into the run summary
    assert describe_detection_noise(record) == ("detections trusted to their held-out error: 1–60 px per keypoint "
                                                "(median 20 px; leave-one-frame-out)")


def test_a_single_frame_estimate_is_doubled():
    single = {"validation": {**VALIDATED["validation"], "mode": "held-out augmented views", "weaker": True}}
    params, record = resolve_detection_noise(single, ["nose", "tail", "paw"], SmoothingParams(), "auto", None)
    assert params.measurement_noise_px == (20.0, 60.0, 1.0) and record["single_frame_factor"] == 2.0


def test_auto_without_validation_keeps_the_smoothing_parameters_and_says_why():
    params = SmoothingParams(measurement_noise_px=3.0)
    resolved, record = resolve_detection_noise({"adaptation": {}}, ["a"], params, "auto", (100, 100))
    assert resolved is params
    assert record["px"] == 3.0 and "without held-out validation" in record["why_not_validation"]
    assert describe_detection_noise(record).startswith("detection noise 3.0 px: the engine was adapted without")
    skipped = {"validation": {"skipped": "one support frame and --steps 5: too short to validate"}}
    assert "too short" in resolve_detection_noise(skipped, ["a"], params, "auto", None)[1]["why_not_validation"]


def test_a_given_noise_applies_to_every_keypoint_and_bad_values_are_refused():
    params, record = resolve_detection_noise(VALIDATED, ["nose", "tail", "paw"], SmoothingParams(), 12.5, None)
    assert params.measurement_noise_px == 12.5 and record == {"source": "given", "px": 12.5}
    assert parse_detection_noise("AUTO") == "auto" and parse_detection_noise("7") == 7.0
    for bad in ("-1", "0", "nan", "inf", "lots"):
        with pytest.raises(UsageError, match="detection noise must be"):
            parse_detection_noise(bad)


def test_trusting_poor_keypoints_less_lowers_their_error_and_keeps_the_good_one():
    """Keypoint 0's detections are good to 2 px, keypoints 1-2 are off by ~30 px (the tiny model on real footage):
    per-keypoint noise from their measured error beats one fixed 2 px for all."""
    frames, truth = sprite_video()
    rng = np.random.default_rng(5)
    time = np.arange(len(frames)) / FPS
    confidence = rng.uniform(0.5, 0.9, truth.shape[:2])
    spread = np.array([2.0, 30.0, 30.0])
    raw_xy = truth + rng.normal(0, 1, truth.shape) * spread[None, :, None]
    anchors = Anchors(frame=np.array([0]), xy=truth[:1])
    errors = {}
    for name, noise in (("fixed", 2.0), ("per keypoint", tuple(spread))):
        params = SmoothingParams(measurement_noise_px=noise)
        flow = measure_flow(frames, raw_xy, confidence, time, anchors, params=params)
        xy = fuse_keypoints(raw_xy, confidence, time, flow, anchors, params=params)[0]
        errors[name] = [rms(xy[:, k], truth[:, k]) for k in range(3)]
    fixed, per_keypoint = errors["fixed"], errors["per keypoint"]
    assert np.mean(per_keypoint[1:]) < 0.6 * np.mean(fixed[1:]), errors
    assert per_keypoint[0] < 1.2 * fixed[0] + 0.2, errors


def test_track_help_explains_detection_noise():
    out = subprocess.run([sys.executable, "-m", "ppmtrack.pipelines.cli", "track", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--detection-noise" in out and "held-out error" in out
    bad = subprocess.run([sys.executable, "-m", "ppmtrack.pipelines.cli", "track", "x.mp4", "--detection-noise",
                          "-3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "detection-noise" in bad.stderr
