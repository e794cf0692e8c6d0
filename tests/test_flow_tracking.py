"""Optical flow and support-frame anchors in the tracking run (pipelines.track, pipelines.anchors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.pipelines.anchor_discovery import support_frame_records
from ppmtrack.pipelines.anchors import anchors_for_source, matching_anchor
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.track import track_video

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TINY_ADAPT = AdaptConfig(steps=5, fg_steps=2, views_per_frame=2, batch_size=2, resolution=128)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def support_labels():
    return read_annotation(SAMPLES / "support.json")


@pytest.fixture(scope="module")
def engine(support_labels):
    support = support_labels.to_support()
    engine = Engine.adapt(support, "tiny", AdaptConfig(**TINY_ADAPT.to_dict()))
    engine.info["support_frames"] = support_frame_records(support_labels, support.images)
    return engine


def test_support_frames_in_the_video_anchor_the_tracks_and_flow_is_recorded(engine, support_labels, tmp_path):
    summary = track_video(SAMPLES / "sample.mp4", engine, tmp_path / "flow", stop=24, batch_size=8,
                          progress=False, write_video=False)
    doc = json.loads((tmp_path / "flow" / "sample.summary.json").read_text())
    assert doc["settings"]["flow"] == "lk" and doc["settings"]["anchor_frames"] == [10]
    assert summary.status == "complete"
    tracks = read_tracks_csv(tmp_path / "flow" / "sample.csv")
    label = support_labels.keypoints[0]  # frame 10
    row = int(np.flatnonzero(tracks.frame == 10)[0])
    anchored_error = np.linalg.norm(tracks.xy[row] - label, axis=-1)
    raw_error_at_anchor = np.linalg.norm(tracks.raw_xy[row] - label, axis=-1)
    # the RTS pass trades the anchor (σ 0.5 px) against the motion model and the flow from the frames before it
    assert anchored_error.max() < 4.0 and np.median(anchored_error) < 0.2 * np.median(raw_error_at_anchor)
    truth = read_annotation(SAMPLES / "truth.json")
    near = [int(np.flatnonzero(tracks.frame == f)[0]) for f in (12, 14)]
    truth_rows = [next(i for i, r in enumerate(truth.frames) if r.frame == f) for f in (12, 14)]
    flow_error = np.linalg.norm(tracks.xy[near] - truth.keypoints[truth_rows], axis=-1)
    raw_error = np.linalg.norm(tracks.raw_xy[near] - truth.keypoints[truth_rows], axis=-1)
    assert np.median(flow_error) < 0.5 * np.median(raw_error)

    track_video(SAMPLES / "sample.mp4", engine, tmp_path / "off", stop=24, batch_size=8, progress=False,
                write_video=False, flow="off")
    doc = json.loads((tmp_path / "off" / "sample.summary.json").read_text())
    assert doc["settings"]["flow"] == "off" and "anchor_frames" not in doc["settings"]


def test_anchor_is_refused_for_a_frame_that_is_not_the_support_frame(engine, support_labels):
    anchors = anchors_for_source(engine.info, "/elsewhere/sample.mp4", len(engine.names))
    assert sorted(anchors) == [10, 62, 104, 176]
    assert anchors_for_source(engine.info, "other.mp4", len(engine.names)) == {}
    image = support_labels.to_support().images[0]
    np.testing.assert_allclose(matching_anchor(anchors, 10, image), support_labels.keypoints[0])
    assert matching_anchor(anchors, 10, 255 - image) is None
    assert matching_anchor(anchors, 11, image) is None
