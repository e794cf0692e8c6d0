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


# ---- optical flow for every animal (issue 23 item 2) ------------------------------------------------------------
SPRITE = 28
OFFSETS = np.array([[7.0, 7.0], [20.0, 9.0], [12.0, 20.0]])  # keypoints inside each sprite's texture


def _two_sprite_video(path: Path, n_frames: int = 100, size=(192, 144)):
    """Two textured sprites moving on a grey background; returns the truth (T, 2 animals, 3 keypoints, 2)."""
    import cv2

    rng = np.random.default_rng(1)
    textures = [cv2.GaussianBlur(rng.integers(0, 256, (SPRITE, SPRITE, 3)).astype(np.uint8), (3, 3), 0)
                for _ in range(2)]
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    truth = np.zeros((n_frames, 2, len(OFFSETS), 2))
    for t in range(n_frames):
        image = np.full((h, w, 3), 110, np.uint8)
        corners = [(20 + 60 * (0.5 - 0.5 * np.cos(t / 9)), 20 + 12 * np.sin(t / 7)),
                   (130 - 50 * (0.5 - 0.5 * np.cos(t / 11)), 90 + 10 * np.cos(t / 6))]
        for a, (x, y) in enumerate(corners):
            xi, yi = int(round(x)), int(round(y))
            image[yi:yi + SPRITE, xi:xi + SPRITE] = textures[a]
            truth[t, a] = OFFSETS + [xi, yi]
        writer.write(image[..., ::-1])
    writer.release()
    return truth


class NoisyTruthEngine:
    """Reports the sprites' true keypoints with Gaussian noise, animals in a random order, and an appearance."""

    def __init__(self, truth, noise_px=5.0, seed=0):
        from types import SimpleNamespace

        self.truth, self.noise_px, self.calls = truth, noise_px, 0
        self.rng = np.random.default_rng(seed)
        self.names = ["a", "b", "c"]
        self.skeleton = [("a", "b")]
        self.model = SimpleNamespace(name="noisy-truth", device="cpu")
        self.resolution = 64
        self.info = {}

    def predict_animals(self, frames, max_animals, exact=True, threshold=0.5, crops=False):
        from ppmtrack.engine.multi import Animals

        out = []
        for _ in frames:
            order = self.rng.permutation(2)
            xy = self.truth[self.calls][order] + self.rng.normal(0, self.noise_px, (2, len(OFFSETS), 2))
            self.calls += 1
            out.append(Animals(xy, np.full((2, len(OFFSETS)), 0.9), np.eye(2)[order], np.ones(2)))
        return out


def test_flow_lowers_the_error_of_every_animal_on_a_two_sprite_video(tmp_path):
    video = tmp_path / "sprites.mp4"
    truth = _two_sprite_video(video)
    errors = {}
    for flow in ("off", "auto"):
        out = tmp_path / flow
        summary = track_video_multi(video, NoisyTruthEngine(truth), out, animals=2, batch_size=8, flow=flow,
                                    detection_noise=5.0, write_video=False, progress=False)
        assert summary.status == "complete" and summary.settings["flow"] == ("off" if flow == "off" else "lk")
        tracks = read_multi_tracks_csv(out / "sprites.csv")
        assert len(tracks) == 2
        per_animal = []
        for animal in tracks.values():  # each identity against the sprite it follows (nearest on average)
            err = [np.nanmean(np.linalg.norm(animal.xy - truth[:, a], axis=-1)) for a in range(2)]
            per_animal.append(min(err))
        raw = [np.nanmean(np.linalg.norm(a.raw_xy - truth[:, np.argmin(
            [np.nanmean(np.linalg.norm(a.raw_xy - truth[:, s], axis=-1)) for s in range(2)])], axis=-1))
            for a in tracks.values()]
        errors[flow] = (per_animal, raw)
    off, on = errors["off"][0], errors["auto"][0]
    # both animals gain from the flow, and clearly: the detections are 5 px noisy, the sprites' texture is sharp
    assert all(b < 0.7 * a for a, b in zip(off, on, strict=True)), errors
