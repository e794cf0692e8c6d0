"""ppmtrack eval with the labels users have as truth: DeepLabCut CollectedData, SLEAP .slp, COCO keypoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.evaluate import evaluate, truth_for_video
from ppmtrack.pipelines.io.csv import write_tracks_csv
from ppmtrack.pipelines.io.formats import read_labels
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError
from ppmtrack.tracker.track import Tracks

REACHING = Path(__file__).resolve().parents[2] / "shared" / "data" / "dlc_reaching"
COLLECTED = REACHING / "labeled-data" / "reachingvideo1" / "CollectedData_Mackenzie.csv"


def tracks_from(names, positions: dict[int, np.ndarray], n_frames: int, noise: float, seed: int = 0) -> Tracks:
    """Tracks of frames 0..n_frames-1: the given positions plus Gaussian noise, NaN elsewhere."""
    rng = np.random.default_rng(seed)
    xy = np.full((n_frames, len(names), 2), np.nan)
    for frame, points in positions.items():
        if frame < n_frames:
            xy[frame] = points + rng.normal(0, noise, points.shape)
    frames = np.arange(n_frames)
    return Tracks(names=list(names), frame=frames, time=frames / 30.0, raw_xy=xy, xy=xy,
                  confidence=np.where(np.isfinite(xy[..., 0]), 0.9, 0.0), visible=np.isfinite(xy[..., 0]),
                  skeleton=[])


@pytest.mark.skipif(not COLLECTED.is_file(), reason="../shared/data/dlc_reaching not present")
def test_eval_on_the_dlc_reaching_project_without_a_hand_written_truth_file(tmp_path, capsys):
    labels = read_labels(COLLECTED)
    truth = truth_for_video(labels)
    frames = [ref.frame for ref in truth.frames]
    assert frames == [5, 20, 23, 28, 31, 33, 36, 37]  # img005.png ... img037.png
    # the 31-frame clip of the same video: frames 5, 20, 23, 28 lie in it (README.txt)
    positions = {f: truth.keypoints[i] for i, f in enumerate(frames)}
    tracks = tracks_from(labels.names, positions, 31, noise=2.0)
    tracks.xy[:, labels.names.index("Hand")] += 100.0  # one keypoint far off in every frame
    csv = tmp_path / "reaching_frames0-30.csv"
    write_tracks_csv(tracks, csv)

    assert main(["eval", str(csv), str(COLLECTED), "--tracked-span"]) == 0
    report = capsys.readouterr().out
    inside = truth.keypoints[:4]
    labelled = np.isfinite(inside).all(axis=2)
    hand = labelled[:, labels.names.index("Hand")].sum()
    expected = (labelled.sum() - hand) / labelled.sum()
    assert "frames tracked: 4/4 (100.0%)" in report
    assert "truth frames outside the tracked frames, not scored: 4" in report
    assert f"PCK@0.2: {expected:.3f}" in report  # every keypoint right but the displaced Hand
    hand_row = next(line for line in report.splitlines() if line.startswith("Hand "))
    assert hand_row.split()[3:6] == ["0.000", "0.000", "0.000"]

    # the labeled-data folder and --truth-video name the same frames; without --tracked-span the frames
    # beyond the clip count as not tracked
    assert main(["eval", str(csv), str(COLLECTED.parent), "--truth-video", "reachingvideo1"]) == 0
    report = capsys.readouterr().out
    assert "frames tracked: 4/8 (50.0%)" in report
    assert f"PCK@0.2: {expected * labelled.sum() / np.isfinite(truth.keypoints).all(axis=2).sum():.3f}" in report


def test_dlc_images_of_several_videos_need_the_video_named(tmp_path):
    names = ["a", "b"]
    refs = [FrameRef(image=tmp_path / "labeled-data" / video / f"img{f:03d}.png")
            for video, f in (("mouse1", 3), ("mouse2", 3), ("mouse1", 10))]
    keypoints = np.array([[[1.0, 2.0], [30.0, 40.0]], [[5.0, 5.0], [9.0, 9.0]], [[2.0, 3.0], [31.0, 41.0]]])
    truth = Labels(names=names, frames=refs, keypoints=keypoints, source=tmp_path / "CollectedData_X.csv")
    with pytest.raises(LabelsError, match="2 videos .*mouse1, mouse2.*--truth-video"):
        truth_for_video(truth)
    with pytest.raises(LabelsError, match="no labelled frames of video 'rat'"):
        truth_for_video(truth, "rat")
    chosen = truth_for_video(truth, "mouse1.mp4")
    assert [r.frame for r in chosen.frames] == [3, 10]
    tracks = tracks_from(names, {3: keypoints[0], 10: keypoints[2]}, 12, noise=0.0)
    result = evaluate(tracks, truth, video="mouse1")
    assert result.pck[0.05] == 1.0 and result.n_truth_frames == 2


def test_images_without_a_frame_number_are_refused(tmp_path):
    truth = Labels(names=["a"], frames=[FrameRef(image=tmp_path / "still.png")], keypoints=np.ones((1, 1, 2)))
    with pytest.raises(LabelsError, match="does not end in a frame number"):
        truth_for_video(truth)


def test_eval_with_sleap_user_instances_as_truth(tmp_path, capsys):
    sio = pytest.importorskip("sleap_io")
    import cv2

    video_path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    video = sio.Video.from_filename(str(video_path))
    skeleton = sio.Skeleton(["head", "tail"])
    truth_xy = {1: np.array([[10.0, 12.0], [40.0, 30.0]]), 4: np.array([[14.0, 10.0], [44.0, 33.0]])}
    frames = [sio.LabeledFrame(video=video, frame_idx=f, instances=[
        sio.PredictedInstance.from_numpy(np.zeros((2, 2)), skeleton=skeleton, point_scores=np.ones(2), score=1.0),
        sio.Instance.from_numpy(xy, skeleton=skeleton)]) for f, xy in truth_xy.items()]
    slp = tmp_path / "labels.slp"
    sio.save_slp(sio.Labels(frames, videos=[video], skeletons=[skeleton]), str(slp), embed=False)
    tracks = tracks_from(["head", "tail"], truth_xy, 6, noise=0.0)
    tracks.xy[4, 1] = np.nan  # tail lost in frame 4
    write_tracks_csv(tracks, tmp_path / "clip.csv")
    assert main(["eval", str(tmp_path / "clip.csv"), str(slp)]) == 0
    report = capsys.readouterr().out
    assert "frames tracked: 2/2" in report and "PCK@0.05: 0.750 (3/4 keypoints)" in report


def test_eval_with_coco_keypoints_as_truth(tmp_path, capsys):
    doc = {
        "images": [{"id": 1, "file_name": "frames/img0002.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "frames/img0005.png", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [10, 12, 2, 40, 30, 2], "num_keypoints": 2},
            {"id": 2, "image_id": 2, "category_id": 1, "keypoints": [20, 22, 2, 0, 0, 0], "num_keypoints": 1},
        ],
        "categories": [{"id": 1, "name": "mouse", "keypoints": ["head", "tail"], "skeleton": [[1, 2]]}],
    }
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(doc))
    tracks = tracks_from(["head", "tail"], {2: np.array([[10.0, 12.0], [40.0, 30.0]]),
                                            5: np.array([[60.0, 22.0], [1.0, 1.0]])}, 8, noise=0.0)
    write_tracks_csv(tracks, tmp_path / "clip.csv")
    assert main(["eval", str(tmp_path / "clip.csv"), str(path), "--format", "coco"]) == 0
    report = capsys.readouterr().out
    # frame 2 both right; frame 5 head 40 px off (bbox 32 px: wrong at every threshold); its tail unlabelled
    assert "PCK@0.2: 0.667 (2/3 keypoints)" in report
