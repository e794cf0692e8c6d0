"""Several animals through the tracking pipeline (pipelines/track_multi.py), the CSV/DLC outputs and eval.

The engine here is a stand-in that reports the two-animal sample's ground truth (shuffled order each frame,
occluded keypoints with confidence 0, a noisy appearance vector per lizard), so these tests check the
pipeline, identities and writers, not the model (tests/test_multi_engine.py checks the read-out of maps).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ppmtrack.engine.multi import Animals
from ppmtrack.pipelines.evaluate import evaluate_multi
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_multi_tracks_csv
from ppmtrack.pipelines.track_multi import parse_animals, track_video_multi
from ppmtrack.tracker.identity import IdentityParams

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
HAS_NWB = all(importlib.util.find_spec(m) for m in ("pynwb", "ndx_pose"))
N_FRAMES = 130  # through the touching pass around frame 99


class TruthEngine:
    """Reports the pair sample's ground truth as detections, in a random order per frame."""

    def __init__(self, truth, noise_px=1.0, seed=0):
        self.truth = truth
        self.names = truth.names
        self.skeleton = truth.skeleton
        self.model = SimpleNamespace(name="truth", device="cpu")
        self.resolution = 256
        self.rng = np.random.default_rng(seed)
        self.noise_px = noise_px
        self.looks = self.rng.normal(size=(2, 16))
        self.calls = 0

    def predict_animals(self, frames, max_animals, exact=True, threshold=0.5, crops=False):
        out = []
        for _ in frames:
            f = self.calls
            self.calls += 1
            gt = self.truth.instances[f]
            order = self.rng.permutation(2)
            xy = gt[order] + self.rng.normal(0, self.noise_px, gt.shape)
            conf = np.where(np.isfinite(xy).all(axis=-1), 0.9, 0.0)
            look = self.looks[order] + self.rng.normal(0, 0.3, (2, 16))
            out.append(Animals(np.nan_to_num(xy, nan=0.0), conf, look, np.ones(2)))
        return out


@pytest.fixture(scope="module")
def truth():
    return read_annotation(SAMPLES / "pair_truth.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory, truth):
    out = tmp_path_factory.mktemp("multi")
    summary = track_video_multi(SAMPLES / "pair.mp4", TruthEngine(truth), out, animals=2, stop=N_FRAMES,
                                output_formats=["csv", "dlc", "sleap", *(["nwb"] if HAS_NWB else [])],
                                progress=False, batch_size=4, species="Anolis carolinensis")
    return out, summary


def test_two_animals_keep_their_identities_through_the_touching_pass(run, truth):
    out, summary = run
    assert summary.status == "complete" and summary.frames_processed == N_FRAMES
    tracks = read_multi_tracks_csv(out / "pair.csv")
    assert list(tracks) == ["animal1", "animal2"]
    result = evaluate_multi(tracks, truth, use="raw")
    assert result.n_frames == N_FRAMES
    assert sum(result.identity_switches.values()) == 0, result.identity_switches
    assert result.pck_all[0.05] > 0.95
    assert sorted(result.matched_to.values()) == ["animal1", "animal2"]
    doc = json.loads((out / "pair.summary.json").read_text())
    assert doc["identities"]["individuals"] == ["animal1", "animal2"]
    assert doc["settings"]["animals"] == 2 and doc["csv_positions"] == "rts"


def test_nearest_position_baseline_runs_and_is_scored(tmp_path, truth):
    params = IdentityParams(motion="nearest")
    summary = track_video_multi(SAMPLES / "pair.mp4", TruthEngine(truth), tmp_path, animals=2, stop=40,
                                identity=params, write_video=False, progress=False)
    assert summary.settings["identity"]["motion"] == "nearest"
    result = evaluate_multi(read_multi_tracks_csv(tmp_path / "pair.csv"), truth, use="raw")
    assert result.n_frames == 40 and result.pck_all[0.05] > 0.95


def test_dlc_multi_animal_table_loads_in_movement_with_the_csv_coordinates(run):
    load_poses = pytest.importorskip("movement.io.load_poses")
    out, summary = run
    h5 = [p for p in summary.outputs["formats"] if p.endswith(".h5")][0]
    ds = load_poses.from_dlc_file(h5)
    assert list(ds.individuals.values) == ["animal1", "animal2"]
    tracks = read_multi_tracks_csv(out / "pair.csv")
    for name, animal in tracks.items():
        position = ds.position.sel(individuals=name).transpose("time", "keypoints", "space").values
        np.testing.assert_allclose(position[animal.frame], animal.xy, atol=1e-3)


def test_sleap_analysis_file_has_one_track_per_animal_and_loads_in_movement(run):
    load_poses = pytest.importorskip("movement.io.load_poses")
    out, summary = run
    ds = load_poses.from_sleap_file(out / "pair.analysis.h5")
    assert list(ds.individuals.values) == ["animal1", "animal2"]
    tracks = read_multi_tracks_csv(out / "pair.csv")
    for name, animal in tracks.items():
        position = ds.position.sel(individuals=name).transpose("time", "keypoints", "space").values
        np.testing.assert_allclose(position[animal.frame], animal.xy, atol=1e-3)


@pytest.mark.skipif(not HAS_NWB, reason="needs pynwb and ndx-pose (the formats extra)")
def test_nwb_one_file_per_animal_with_its_subject_and_all_load_in_movement(run):
    load_poses = pytest.importorskip("movement.io.load_poses")
    import pynwb
    import xarray as xr

    out, summary = run
    files = [out / "pair.animal1.nwb", out / "pair.animal2.nwb"]
    assert [str(p) for p in files] == [p for p in summary.outputs["formats"] if p.endswith(".nwb")]
    for name, path in zip(["animal1", "animal2"], files, strict=True):
        with pynwb.NWBHDF5IO(str(path), "r") as io:
            nwb = io.read()
            assert nwb.subject.subject_id == name and nwb.subject.species == "Anolis carolinensis"
            pose = nwb.processing["behavior"]["PoseEstimation"]
            assert pose.skeleton.subject.subject_id == name
            assert set(pose.pose_estimation_series) == set(summary.engine["keypoints"])
    ds = xr.merge([load_poses.from_nwb_file(p) for p in files], join="outer", compat="no_conflicts")
    assert ds.sizes["individuals"] == 2 and list(ds.individuals.values) == ["animal1", "animal2"]
    tracks = read_multi_tracks_csv(out / "pair.csv")
    for name, animal in tracks.items():
        position = ds.position.sel(individuals=name, keypoints=animal.names).transpose(
            "time", "keypoints", "space").values
        np.testing.assert_allclose(position, animal.xy, atol=1e-3)


def test_annotated_video_has_every_frame(run):
    from ppmtrack.pipelines.sources import open_source

    out, _ = run
    with open_source(out / "pair.mp4") as source:
        assert sum(1 for _ in source) == N_FRAMES


def test_animals_argument_is_checked():
    assert parse_animals("3") == (3, True) and parse_animals("auto") == (None, False)
    with pytest.raises(ValueError, match="number of animals or 'auto'"):
        parse_animals("two")
    with pytest.raises(ValueError, match="at least 1"):
        parse_animals(0)


def test_eval_of_one_animal_against_truth_of_two_asks_which(run, tmp_path, capsys):
    from ppmtrack.pipelines.cli import main
    from ppmtrack.pipelines.io.csv import write_tracks_csv

    out, _ = run
    one = tmp_path / "one.csv"
    write_tracks_csv(read_multi_tracks_csv(out / "pair.csv")["animal1"], one)
    assert main(["eval", str(one), str(SAMPLES / "pair_truth.json")]) == 2
    assert "labels 2 animals (lizard1, lizard2)" in capsys.readouterr().err
    assert main(["eval", str(one), str(SAMPLES / "pair_truth.json"), "--individual", "lizard1"]) == 0
    assert "PCK@0.1" in capsys.readouterr().out


def test_annotated_video_legend_lists_the_animals_not_every_keypoint(tmp_path):
    from ppmtrack.pipelines.io.video import AnnotatedVideoWriter

    names = ["animal1:nose", "animal1:tail", "animal2:nose", "animal2:tail"]
    red, green = (230, 25, 75), (60, 180, 75)
    writer = AnnotatedVideoWriter(tmp_path / "v.mp4", 64, 48, 10, names, colours=[red, red, green, green],
                                  legend_entries=[("animal1", red), ("animal2", green)])
    assert [k for k, _, _ in writer.legend_layout()] == [0, 1]
    np.testing.assert_array_equal(writer.colours[2], green)
    image = np.zeros((48, 64, 3), np.uint8)
    writer.write(image, np.full((4, 2), 20.0), np.ones(4), np.ones(4, bool), labels=[("animal1", (20, 20), red)])
    writer.close()
    assert (tmp_path / "v.mp4").stat().st_size > 0


def test_a_failure_of_several_animals_is_recorded_with_every_password_hidden(tmp_path, truth):
    class FailingEngine(TruthEngine):
        def predict_animals(self, frames, max_animals, exact=True, threshold=0.5, crops=False):
            raise RuntimeError("lost rtsp://admin:p@ssW0rdX@cam.local/live while reading")

    with pytest.raises(RuntimeError):
        track_video_multi(SAMPLES / "pair.mp4", FailingEngine(truth), tmp_path, animals=2, stop=8, progress=False,
                          write_video=False)
    summary = json.loads(next(tmp_path.glob("*.summary.json")).read_text())
    assert summary["status"] == "failed: lost rtsp://***@cam.local/live while reading"
