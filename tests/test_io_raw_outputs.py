"""The engine's raw measurements in DeepLabCut, SLEAP and NWB files too (write_tracks(with_raw=True))."""

import numpy as np
import pytest

from ppmtrack.pipelines.io.formats import write_tracks
from ppmtrack.tracker.track import Tracks

load_poses = pytest.importorskip("movement.io.load_poses")
pytest.importorskip("pynwb")
pytest.importorskip("ndx_pose")
pytest.importorskip("tables")

NAMES = ["snout", "paw"]


def make_tracks(n_frames=6):
    rng = np.random.default_rng(4)
    raw = rng.uniform(10, 200, (n_frames, 2, 2))
    xy = raw + 5.0  # smoothed positions differ from the raw ones
    xy[2, 1] = np.nan  # lost after smoothing, still measured
    frames = np.arange(n_frames)
    return Tracks(names=NAMES, frame=frames, time=frames / 25.0, raw_xy=raw, xy=xy,
                  confidence=rng.uniform(0.1, 1, (n_frames, 2)), visible=np.isfinite(xy[..., 0]),
                  skeleton=[("snout", "paw")])


def _position(ds):
    ds = ds.sel(keypoints=NAMES, individuals=ds.individuals.values[0])
    return ds.position.transpose("time", "keypoints", "space").values


def test_raw_files_next_to_the_smoothed_ones_load_in_movement(tmp_path):
    tracks = make_tracks()
    written = write_tracks(tracks, tmp_path, "clip", ["dlc", "sleap", "nwb"], engine_name="mouse", fps=25.0,
                           video_path=None, with_raw=True)
    assert [p.name for p in written] == [
        "clipppmtrack_mouse.h5", "clipppmtrack_mouse.csv", "clipppmtrack_mouse.raw.h5",
        "clipppmtrack_mouse.raw.csv", "clip.analysis.h5", "clip.raw.analysis.h5", "clip.nwb", "clip.raw.nwb",
    ]
    smoothed = {
        "dlc": load_poses.from_dlc_file(tmp_path / "clipppmtrack_mouse.h5", fps=25),
        "sleap": load_poses.from_sleap_file(tmp_path / "clip.analysis.h5", fps=25),
        "nwb": load_poses.from_nwb_file(tmp_path / "clip.nwb"),
    }
    raw = {
        "dlc": load_poses.from_dlc_file(tmp_path / "clipppmtrack_mouse.raw.h5", fps=25),
        "dlc-csv": load_poses.from_dlc_file(tmp_path / "clipppmtrack_mouse.raw.csv", fps=25),
        "sleap": load_poses.from_sleap_file(tmp_path / "clip.raw.analysis.h5", fps=25),
        "nwb": load_poses.from_nwb_file(tmp_path / "clip.raw.nwb"),
    }
    for name, ds in smoothed.items():
        np.testing.assert_allclose(_position(ds), tracks.xy, rtol=1e-6, equal_nan=True, err_msg=name)
    for name, ds in raw.items():
        np.testing.assert_allclose(_position(ds), tracks.raw_xy, rtol=1e-6, err_msg=name)


def test_without_with_raw_only_the_smoothed_files_are_written(tmp_path):
    written = write_tracks(make_tracks(), tmp_path, "clip", ["dlc", "sleap", "nwb"], engine_name="e",
                           fps=25.0, video_path=None)
    assert not [p for p in written if ".raw." in p.name]
    assert not list(tmp_path.glob("*.raw.*"))
