"""NWB (ndx-pose) tracks out, read back with pynwb and movement."""

import datetime

import numpy as np
import pytest

from ppmtrack.pipelines.io.formats import write_tracks
from ppmtrack.pipelines.io.nwb import write_nwb
from ppmtrack.tracker.track import Tracks

pynwb = pytest.importorskip("pynwb")
pytest.importorskip("ndx_pose")

NAMES = ["snout", "paw", "tail"]


def make_tracks(n_frames=8):
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 200, (n_frames, 3, 2))
    xy[3, 0] = np.nan
    frames = np.arange(n_frames)
    return Tracks(
        names=NAMES,
        frame=frames,
        time=frames / 30.0,
        raw_xy=xy,
        confidence=rng.uniform(0, 1, (n_frames, 3)),
        xy=xy,
        visible=np.isfinite(xy[..., 0]),
        skeleton=[("snout", "paw")],
    )


def test_written_nwb_read_back_by_movement(tmp_path):
    load_poses = pytest.importorskip("movement.io.load_poses")
    tracks = make_tracks()
    (path,) = write_tracks(
        tracks, tmp_path, "clip", ["nwb"], engine_name="e", video_path=tmp_path / "clip.mp4", fps=30.0
    )
    assert path.name == "clip.nwb"
    ds = load_poses.from_nwb_file(path)
    # NWB keeps keypoints as a named group (no order); movement lists them sorted, so compare by name
    assert sorted(ds.keypoints.values) == sorted(NAMES) and ds.sizes["time"] == len(tracks)
    np.testing.assert_allclose(ds.time.values, tracks.time)
    ds = ds.sel(keypoints=NAMES, individuals=ds.individuals.values[0])
    position = ds.position.transpose("time", "keypoints", "space").values
    np.testing.assert_allclose(position, tracks.xy, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(
        ds.confidence.transpose("time", "keypoints").values, tracks.confidence, rtol=1e-12
    )
    assert np.isnan(position[3, 0]).all()
    assert ds.source_software == "ppmtrack"


def test_written_nwb_structure_in_pynwb(tmp_path):
    tracks = make_tracks()
    start = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.timezone.utc)
    path = write_nwb(
        tracks,
        tmp_path / "clip.nwb",
        engine_name="sd15",
        video_path="clip.mp4",
        fps=30.0,
        session_start_time=start,
    )
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        assert nwbfile.session_start_time == start and "ppmtrack" in nwbfile.session_description
        behavior = nwbfile.processing["behavior"]
        skeleton = behavior["Skeletons"].skeletons["subject"]
        assert list(skeleton.nodes[:]) == NAMES and skeleton.edges[:].tolist() == [[0, 1]]
        pose = behavior["PoseEstimation"]
        assert pose.scorer == "ppmtrack_sd15" and pose.skeleton.name == "subject"
        assert pose.source_video.external_file[:].tolist() == ["clip.mp4"]
        series = pose.pose_estimation_series["paw"]
        assert series.data.shape == (8, 2) and series.unit == "pixels"
        np.testing.assert_allclose(series.timestamps[:], tracks.time)
    assert not list(tmp_path.glob(".*partial*"))


def test_nwb_individual_is_stable_and_has_a_subject(tmp_path):
    load_poses = pytest.importorskip("movement.io.load_poses")
    tracks = make_tracks()
    default = write_nwb(tracks, tmp_path / "a.nwb", engine_name="e")
    named = write_nwb(tracks, tmp_path / "b.nwb", engine_name="e", subject_id="mouse7", species="Mus musculus")
    # the same name on every run (no random UUID), and the one movement gives a single-animal DLC file
    assert load_poses.from_nwb_file(default).individuals.values.tolist() == ["individual_0"]
    assert load_poses.from_nwb_file(named).individuals.values.tolist() == ["mouse7"]
    with pynwb.NWBHDF5IO(str(named), "r") as io:
        nwbfile = io.read()
        assert nwbfile.identifier == "mouse7"
        assert nwbfile.subject.subject_id == "mouse7" and nwbfile.subject.species == "Mus musculus"
        assert nwbfile.processing["behavior"]["Skeletons"].skeletons["subject"].subject.subject_id == "mouse7"
    with pynwb.NWBHDF5IO(str(default), "r") as io:
        assert io.read().subject.subject_id == "individual_0"


def test_nwb_reference_frame_matches_the_code_and_the_csv_docs(tmp_path):
    from pathlib import Path

    from ppmtrack.engine.geometry import grid_to_input

    # the code: map cell 0 of a stride-8 map covers input pixels 0..7, whose centre is pixel 3.5 when pixel
    # centres sit at integers, i.e. (0, 0) is the centre of the top-left pixel
    assert grid_to_input(np.array([0.0]), 8)[0] == pytest.approx(3.5)
    path = write_nwb(make_tracks(), tmp_path / "c.nwb", engine_name="e")
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        text = io.read().processing["behavior"]["PoseEstimation"].pose_estimation_series["paw"].reference_frame
    assert "centre of the top-left pixel" in text and "corner" not in text
    outputs = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    assert "(0, 0) = centre of the top-left pixel" in outputs
