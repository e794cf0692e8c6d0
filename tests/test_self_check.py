"""The detector checks itself in every run: a detector that finds the animal agrees with the motion far better
than chance; a broken one (random positions) is flagged in the summary, its positions marked low-confidence."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ppmtrack.engine.api import Prediction
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.track import track_video
from ppmtrack.tracker.selfcheck import check_detector, outlier_frames

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
N_FRAMES = 90
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SampleEngine:
    """Detections on the sample sprite: its truth plus 1 px noise (a good engine), or uniformly random
    positions in the frame (a broken one, as an engine with random prompts gives)."""

    def __init__(self, truth, broken: bool, seed: int = 0):
        self.truth, self.broken = truth, broken
        self.names, self.skeleton, self.flip_pairs = truth.names, truth.skeleton, truth.flip_pairs
        self.resolution, self.layers, self.info, self.path = 256, [], {}, None
        self.model = SimpleNamespace(name="sample-truth", device="cpu")
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def reset_stream(self):
        pass

    def predict(self, frames, return_maps=False):
        n, k = len(frames), len(self.names)
        rows = np.arange(self.calls, self.calls + n)
        self.calls += n
        if self.broken:
            h, w = frames[0].shape[:2]
            xy = np.stack([self.rng.uniform(0, w, (n, k)), self.rng.uniform(0, h, (n, k))], axis=-1)
        else:
            xy = self.truth.keypoints[rows] + self.rng.normal(0, 1.0, (n, k, 2))
        conf = np.full((n, k), 0.9)
        return Prediction(keypoints=xy, confidence=conf, sharpness=conf)


def test_statistic_tells_a_detector_from_chance_and_still_animals_are_undecided():
    t = np.arange(200)
    track = np.stack([50 + 1.0 * t, 100 + 20 * np.sin(t / 15)], axis=-1)[:, None]  # one moving keypoint
    motion = np.diff(track, axis=0, prepend=track[:1])
    rng = np.random.default_rng(0)
    good = track + rng.normal(0, 1.5, track.shape)
    broken = rng.uniform(0, 300, track.shape)
    ok = np.ones((200, 1), bool)
    [g] = check_detector(["k"], t, good, motion, ok, track, 5.0)
    [b] = check_detector(["k"], t, broken, motion, ok, track, 5.0)
    assert g.verdict == "agrees" and g.agreement > 0.9 and g.chance < 0.2 and not g.bad_stretches
    assert b.verdict == "no better than chance" and b.bad_stretches == [(0, 199)]
    fixed = np.full_like(track, 123.0)  # a detector stuck on one spot: agrees with itself, but so does chance
    [f] = check_detector(["k"], t, fixed, motion, ok, track, 5.0)
    assert f.verdict == "no better than chance"
    still = np.full_like(track, 80.0)
    [s] = check_detector(["k"], t, still + rng.normal(0, 1.0, still.shape), np.zeros_like(still), ok, still, 5.0)
    assert s.verdict == "undecided" and not s.bad_stretches  # a still animal cannot be told from chance
    outliers = outlier_frames(t, np.where(t[:, None, None] == 77, good + 40, good), track, 5.0, n=3)
    assert outliers[0]["frame"] == 77 and len(outliers) == 3


@pytest.mark.parametrize("broken", [False, True])
def test_a_broken_engine_is_flagged_in_the_summary_and_a_good_one_is_not(tmp_path, broken):
    truth = read_annotation(SAMPLES / "truth.json")
    summary = track_video(SAMPLES / "sample.mp4", SampleEngine(truth, broken), tmp_path, stop=N_FRAMES,
                          write_video=False, progress=False, batch_size=8)
    assert summary.status == "complete"
    doc = json.loads((tmp_path / "sample.summary.json").read_text())
    detector = doc["detector"]
    assert len(detector["outlier_frames"]) == 10
    from ppmtrack.pipelines.cli import _outlier_frames_of  # label --frames-from: label the worst frames next

    videos = [SimpleNamespace(path=Path("videos/other.mp4")), SimpleNamespace(path=Path("videos/sample.mp4"))]
    assert _outlier_frames_of(str(tmp_path / "sample.summary.json"), videos) == {
        1: sorted(f["frame"] for f in detector["outlier_frames"])}
    tracks = read_tracks_csv(tmp_path / "sample.csv")
    if broken:
        assert set(detector["flagged"]) == set(truth.names)
        assert all(detector["keypoints"][n]["bad_frames"] for n in truth.names)
        assert (tracks.confidence <= 0.05).mean() > 0.5  # not presented as good
    else:
        assert detector["flagged"] == []
        for name in truth.names:
            v = detector["keypoints"][name]
            assert v["verdict"] in ("agrees", "undecided") and not v["bad_frames"], (name, v)
        assert sum(detector["keypoints"][n]["verdict"] == "agrees" for n in truth.names) >= 8
        assert (tracks.confidence <= 0.05).mean() == 0.0
