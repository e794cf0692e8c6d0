"""Evaluation against ground truth: PCK relative to the keypoint bounding box, missing predictions, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppmtrack.pipelines.evaluate import MIN_BBOX_SIZE_PX, evaluate, format_report
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.labels import FrameRef, Labels
from ppmtrack.tracker.track import Tracks

NAMES = ["nose", "ear", "tail"]
# Keypoints span 200 × 100 px, so the bbox size max(w, h) is 200 px:
# PCK@0.05 = 10 px, @0.1 = 20 px, @0.2 = 40 px.
TRUTH = np.array([[100.0, 100.0], [300.0, 150.0], [200.0, 200.0]])


def make_truth(frames: list[int], keypoints: np.ndarray | None = None) -> Labels:
    kps = np.repeat(TRUTH[None], len(frames), axis=0) if keypoints is None else keypoints
    return Labels(names=list(NAMES), frames=[FrameRef(video=Path("video.mp4"), frame=f) for f in frames],
                  keypoints=kps)


def make_tracks(frames: list[int], xy: np.ndarray, raw_xy: np.ndarray | None = None) -> Tracks:
    t = len(frames)
    return Tracks(names=list(NAMES), frame=np.array(frames), time=np.array(frames) / 30.0,
                  raw_xy=xy if raw_xy is None else raw_xy, confidence=np.ones((t, 3)), xy=xy,
                  visible=np.ones((t, 3), bool))


def test_pck_follows_distances_relative_to_the_bbox():
    offsets = np.array([5.0, 15.0, 30.0])  # within 0.05, 0.1, 0.2 of the 200 px bbox respectively
    xy = TRUTH.copy()
    xy[:, 0] += offsets  # along x, so the distance is exactly the offset
    result = evaluate(make_tracks([4], xy[None]), make_truth([4]))
    assert result.pck == pytest.approx({0.05: 1 / 3, 0.1: 2 / 3, 0.2: 1.0})
    assert result.mean_error_px == pytest.approx(offsets.mean())
    np.testing.assert_allclose(result.mean_error_per_keypoint_px, offsets)
    np.testing.assert_allclose(result.pck_per_keypoint[0.1], [1, 1, 0])


def test_distance_exactly_at_threshold_is_correct_and_just_beyond_is_not():
    xy = TRUTH.copy()
    xy[0] += [12.0, 16.0]  # 20 px = 0.1 · 200
    xy[1, 1] += 20.5
    result = evaluate(make_tracks([0], xy[None]), make_truth([0]))
    np.testing.assert_allclose(result.pck_per_keypoint[0.1], [1, 0, 1])


def test_missing_predictions_and_untracked_frames_count_as_wrong():
    xy = np.repeat(TRUTH[None], 2, axis=0)
    xy[0, 2] = np.nan  # lost keypoint in frame 10
    tracks = make_tracks([10, 11], xy)
    result = evaluate(tracks, make_truth([10, 11, 12, 13]))  # frames 12 and 13 are not tracked
    assert result.n_truth_frames == 4 and result.n_tracked_frames == 2
    assert result.fraction_tracked == 0.5
    assert result.pck[0.05] == pytest.approx(5 / 12)
    np.testing.assert_array_equal(result.n_labelled, [4, 4, 4])
    np.testing.assert_array_equal(result.n_predicted, [2, 2, 1])
    assert result.mean_error_px == 0.0  # the error is over predicted keypoints only


def test_keypoints_not_labelled_in_truth_do_not_count():
    truth = make_truth([0])
    truth.keypoints[0, 2] = np.nan  # tail not visible: bbox is now 200 × 50, still 200
    xy = TRUTH.copy()
    xy[2] = [0.0, 0.0]  # a wild prediction for the unlabelled keypoint is ignored
    result = evaluate(make_tracks([0], xy[None]), truth)
    assert result.pck[0.05] == 1.0
    assert result.n_labelled.tolist() == [1, 1, 0]
    assert np.isnan(result.pck_per_keypoint[0.05][2])


def test_single_labelled_keypoint_uses_the_minimum_bbox_size():
    kps = np.full((1, 3, 2), np.nan)
    kps[0, 0] = [50.0, 50.0]
    xy = np.full((1, 3, 2), 100.0)
    xy[0, 0] = [50.0 + 0.1 * MIN_BBOX_SIZE_PX - 0.01, 50.0]
    result = evaluate(make_tracks([0], xy), make_truth([0], kps))
    assert result.pck == pytest.approx({0.05: 0.0, 0.1: 1.0, 0.2: 1.0})


def test_raw_positions_are_scored_when_asked():
    smoothed = TRUTH[None].copy()
    raw = smoothed + [[[100.0, 0.0]]]
    tracks = make_tracks([0], smoothed, raw_xy=raw)
    assert evaluate(tracks, make_truth([0]), use="xy").pck[0.2] == 1.0
    assert evaluate(tracks, make_truth([0]), use="raw").pck[0.2] == 0.0
    with pytest.raises(ValueError, match="use"):
        evaluate(tracks, make_truth([0]), use="smoothed")


def test_truth_without_common_frames_is_a_clear_error():
    with pytest.raises(ValueError, match="no truth frame is in the tracks"):
        evaluate(make_tracks([0, 1], np.repeat(TRUTH[None], 2, axis=0)), make_truth([50, 60]))


def test_truth_read_from_an_annotation_file_matches_by_frame_index(tmp_path):
    doc = {"keypoints": NAMES, "frames": [
        {"video": "v.mp4", "frame": 7, "points": {n: list(TRUTH[k]) for k, n in enumerate(NAMES)}},
        {"video": "v.mp4", "frame": 3, "points": {"nose": [100.0, 100.0], "ear": None}},
    ]}
    (tmp_path / "truth.json").write_text(json.dumps(doc))
    xy = np.repeat(TRUTH[None], 2, axis=0)
    xy[1, 0] += [1.0, 0.0]  # frame 7's nose 1 px off
    result = evaluate(make_tracks([3, 7], xy), read_annotation(tmp_path / "truth.json"))
    assert result.n_labelled.tolist() == [2, 1, 1]
    assert result.mean_error_px == pytest.approx(1 / 4)


def test_report_has_a_line_per_pck_threshold_and_the_errors():
    xy = TRUTH.copy()
    xy[:, 0] += [5.0, 15.0, 30.0]
    report = format_report(evaluate(make_tracks([4], xy[None]), make_truth([4, 5])))
    lines = report.splitlines()
    for a, value in (("0.05", "0.167"), ("0.1", "0.333"), ("0.2", "0.500")):
        assert any(line.startswith(f"PCK@{a}:") and value in line for line in lines), report
    assert "frames tracked: 1/2 (50.0%)" in report
    assert "mean error: 16.67 px" in report
    assert any(line.startswith("tail") and "30.00" in line for line in lines)


def test_support_frames_are_left_out_by_default_so_anchors_cannot_inflate_the_score(tmp_path):
    """A CSV perfect on the support frames (anchored there) and wrong elsewhere scores low by default."""
    from ppmtrack.pipelines.cli import main
    from ppmtrack.pipelines.io.annotation import write_annotation
    from ppmtrack.pipelines.io.csv import write_tracks_csv

    frames = list(range(10))
    support = [0, 3, 6, 9]
    xy = np.repeat(TRUTH[None], 10, axis=0) + 150.0  # far off everywhere ...
    xy[support] = TRUTH  # ... except on the support frames
    write_tracks_csv(make_tracks(frames, xy, raw_xy=xy + 1.0), tmp_path / "video.csv")
    (tmp_path / "video.summary.json").write_text(json.dumps(
        {"input": {"path": str(tmp_path / "video.mp4")}, "engine": {"path": None},
         "settings": {"anchor_frames": support}}))
    write_annotation(make_truth(frames), tmp_path / "truth.json")

    def run(*extra):
        import contextlib
        import io
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["eval", str(tmp_path / "video.csv"), str(tmp_path / "truth.json"), *extra]) == 0
        return out.getvalue()

    report = run()
    assert "4 support frames not scored" in report and "--include-support" in report
    assert "PCK@0.2: 0.000" in report and "detection-only: 0.000" in report
    assert "PCK@0.2: 0.400" in run("--include-support")
