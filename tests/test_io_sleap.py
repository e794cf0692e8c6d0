"""SLEAP .slp labels in, analysis HDF5 out; checked with sleap-io's writer and movement/sleap-io readers."""

import cv2
import numpy as np
import pytest

from ppmtrack.pipelines.io.formats import detect_labels_format, read_labels, write_tracks
from ppmtrack.pipelines.io.sleap import read_sleap, write_sleap_analysis
from ppmtrack.pipelines.labels import LabelsError
from ppmtrack.tracker.track import Tracks

sio = pytest.importorskip("sleap_io")
h5py = pytest.importorskip("h5py")

NODES = ["head", "left", "right"]


def make_video(path, n_frames=5):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(n_frames):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


def make_slp(tmp_path, embed=False, tracks=("mouse",), predictions_only=False):
    """A .slp written by sleap-io: user instances in frames 1 and 3 (plus a prediction), video or embedded."""
    video = sio.Video.from_filename(str(make_video(tmp_path / "clip.avi")))
    skeleton = sio.Skeleton(list(NODES), edges=[("head", "left")], symmetries=[("left", "right")])
    sio_tracks = [sio.Track(name) for name in tracks]
    frames = []
    for fi in (1, 3):
        instances = [
            sio.PredictedInstance.from_numpy(
                np.zeros((3, 2)), skeleton=skeleton, point_scores=np.ones(3), score=1.0
            )
        ]
        if not predictions_only:
            for t, track in enumerate(sio_tracks):
                xy = np.array([[10.0, 12.0], [20.0, 22.0], [np.nan, np.nan]]) + fi + 30 * t
                instances.append(sio.Instance.from_numpy(xy, skeleton=skeleton, track=track))
        frames.append(sio.LabeledFrame(video=video, frame_idx=fi, instances=instances))
    labels = sio.Labels(frames, videos=[video], skeletons=[skeleton], tracks=sio_tracks)
    path = tmp_path / ("labels.pkg.slp" if embed else "labels.slp")
    sio.save_slp(labels, str(path), embed="user" if embed else False)
    return path


@pytest.mark.parametrize("embed", [False, True])
def test_read_sleap_user_instances_with_video_or_embedded_frames(tmp_path, embed):
    path = make_slp(tmp_path, embed=embed)
    assert detect_labels_format(path) == "sleap"
    labels = read_labels(path)
    assert labels.names == NODES
    assert labels.skeleton == [("head", "left")] and labels.flip_pairs == [("left", "right")]
    np.testing.assert_array_equal(labels.keypoints[1], [[13.0, 15.0], [23.0, 25.0], [np.nan, np.nan]])
    if embed:
        assert all(f.pixels is not None for f in labels.frames)
    else:
        assert [(f.video.name, f.frame) for f in labels.frames] == [("clip.avi", 1), ("clip.avi", 3)]
    support = labels.to_support()
    assert support.images[1].shape == (48, 64, 3)
    assert abs(float(support.images[1].mean()) - 120) < 6  # frame 3 of the clip, not frame 0


def test_read_sleap_chosen_track(tmp_path):
    path = make_slp(tmp_path, tracks=("mouse", "rat"))
    np.testing.assert_array_equal(read_sleap(path).keypoints[0, 0], [11.0, 13.0])
    np.testing.assert_array_equal(read_labels(path, individual="rat").keypoints[0, 0], [41.0, 43.0])
    with pytest.raises(LabelsError, match=r"labels\.slp: has no track 'cat'; tracks: mouse, rat"):
        read_sleap(path, track="cat")


def test_read_sleap_several_instances_are_all_read_by_track(tmp_path):
    labels = read_sleap(make_slp(tmp_path, tracks=("mouse", "rat")))
    assert labels.individuals == ["mouse", "rat"] and labels.instances.shape == (2, 2, 3, 2)
    np.testing.assert_array_equal(labels.instances[1, :, 0], [[13.0, 15.0], [43.0, 45.0]])
    np.testing.assert_array_equal(labels.keypoints, labels.instances[:, 0])
    (tmp_path / "one").mkdir()
    assert read_sleap(make_slp(tmp_path / "one", tracks=("mouse",))).instances is None


def test_read_sleap_with_only_predictions_names_the_file(tmp_path):
    path = make_slp(tmp_path, predictions_only=True)
    with pytest.raises(LabelsError, match=r"labels\.slp: no user-labelled instances"):
        read_sleap(path)


def test_read_sleap_not_an_hdf5_file(tmp_path):
    path = tmp_path / "broken.slp"
    path.write_text("not hdf5")
    with pytest.raises(LabelsError, match=r"broken\.slp: not a readable SLEAP \.slp file"):
        read_sleap(path)


def test_read_sleap_missing_video_fails_at_load(tmp_path):
    path = make_slp(tmp_path)
    (tmp_path / "clip.avi").unlink()
    labels = read_sleap(path)
    with pytest.raises(LabelsError, match=r"labels\.slp: cannot read frames of .*clip\.avi"):
        labels.load_images()


def make_tracks(frames):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (len(frames), 3, 2))
    xy[1, 2] = np.nan
    return Tracks(
        names=NODES,
        frame=frames,
        time=np.asarray(frames) / 25.0,
        raw_xy=xy,
        confidence=rng.uniform(0, 1, (len(frames), 3)),
        xy=xy,
        visible=np.isfinite(xy[..., 0]),
        skeleton=[("head", "left"), ("left", "right")],
    )


def test_written_analysis_file_has_sleaps_layout(tmp_path):
    tracks = make_tracks(np.arange(7))
    path = write_sleap_analysis(
        tracks, tmp_path / "clip.analysis.h5", engine_name="e", video_path="clip.mp4", fps=25
    )
    with h5py.File(path, "r") as f:
        assert f["tracks"].shape == (1, 2, 3, 7)
        assert f["track_occupancy"].shape == (7, 1)
        assert f["point_scores"].shape == (1, 3, 7)
        assert f["instance_scores"].shape == f["tracking_scores"].shape == (1, 7)
        assert [n.decode() for n in f["node_names"][:]] == NODES
        assert f["edge_inds"][:].tolist() == [[0, 1], [1, 2]]
        assert f["video_path"][()].decode() == "clip.mp4"
        np.testing.assert_array_equal(f["tracks"][0, :, :, 4].T, tracks.xy[4])


def test_written_analysis_file_read_back_by_movement_and_sleap_io(tmp_path):
    load_poses = pytest.importorskip("movement.io.load_poses")
    tracks = make_tracks(np.arange(7))
    (path,) = write_tracks(
        tracks, tmp_path, "clip", ["sleap"], engine_name="e", video_path="clip.mp4", fps=25
    )
    assert path.name == "clip.analysis.h5"
    ds = load_poses.from_sleap_file(path, fps=25)
    assert list(ds.keypoints.values) == NODES and ds.sizes["time"] == 7
    position = ds.position.values[:, :, :, 0].transpose(0, 2, 1)
    np.testing.assert_allclose(position, tracks.xy, rtol=1e-6, equal_nan=True)  # movement reads float32
    np.testing.assert_allclose(ds.confidence.values[:, :, 0], tracks.confidence, rtol=1e-6)
    assert np.isnan(position[1, 2]).all()
    labels = sio.load_file(str(path))
    assert labels.skeleton.node_names == NODES
    assert [(e.source.name, e.destination.name) for e in labels.skeleton.edges] == tracks.skeleton
    assert len(labels.labeled_frames) == 7
    np.testing.assert_allclose(labels.numpy()[:, 0], tracks.xy, rtol=1e-6, equal_nan=True)  # float32 too


def test_written_analysis_columns_are_video_frame_numbers(tmp_path):
    tracks = make_tracks(np.array([2, 4, 6]))
    path = write_sleap_analysis(tracks, tmp_path / "clip.analysis.h5", engine_name="e")
    labels = sio.load_file(str(path))
    assert [lf.frame_idx for lf in labels.labeled_frames] == [2, 4, 6]
    with h5py.File(path, "r") as f:
        assert f["track_occupancy"][:, 0].tolist() == [0, 0, 1, 0, 1, 0, 1]
