"""Support frames anchor the tracks whatever format they came in: by labels, by file name, by content."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ppmtrack.pipelines.anchor_discovery import AnchorFinder, place, support_frame_records
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.labels import FrameRef, Labels

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _frames(name: str) -> list[np.ndarray]:
    import av

    with av.open(str(SAMPLES / name)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _reencoded(image: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


def test_placement_by_labels_dlc_name_or_none():
    assert place(FrameRef(video=Path("/data/s1.mp4"), frame=7)) == ("s1.mp4", 7, "named in the labels")
    video, frame, how = place(FrameRef(image=Path("proj/labeled-data/session1/img00042.png")))
    assert (video, frame) == ("session1", 42) and "DeepLabCut" in how
    video, frame, why = place(FrameRef(image=Path("photos/best_pose.png")))
    assert video is None and frame is None and "frame number" in why


def test_support_frames_found_by_name_and_by_content_and_others_explained():
    truth = read_annotation(SAMPLES / "truth.json")
    video = _frames("sample.mp4")
    other = _frames("session2.mp4")
    refs = [FrameRef(image=Path("proj/labeled-data/sample/img0010.png")),  # DLC name: frame 10 of sample.mp4
            FrameRef(image=Path("exports/pose_a.png")),  # no name: a re-encoded copy of frame 62, found by pixels
            FrameRef(image=Path("exports/pose_b.png"))]  # a frame of another recording: not in this video
    images = [video[10], _reencoded(video[62]), other[40]]
    other_truth = read_annotation(SAMPLES / "session2_truth.json").keypoints[40]
    labels = Labels(names=truth.names, frames=refs,
                    keypoints=np.stack([truth.keypoints[10], truth.keypoints[62], other_truth]))
    info = {"support_frames": support_frame_records(labels, images)}
    finder = AnchorFinder(info, "/videos/sample.mp4", len(truth.names))
    anchored = {}
    for i, image in enumerate(video):
        xy = finder.match(i, image, row=i)
        if xy is not None:
            anchored[i] = xy
    assert list(anchored) == [10]
    np.testing.assert_allclose(anchored[10], truth.keypoints[10], atol=1e-3)
    late = finder.found_by_content()
    assert [row for row, _ in late] == [62]  # the closest frame, not a neighbour
    report = finder.summary()
    assert report[0]["frame"] == 10 and "DeepLabCut" in report[0]["found_by"]
    assert report[1]["frame"] == 62 and report[1]["found_by"].startswith("content")
    assert "frame" not in report[2] and "no frame looks the same" in report[2]["not_found"]
    # and in another video nothing is anchored by name
    elsewhere = AnchorFinder(info, "/videos/session2.mp4", len(truth.names))
    assert not elsewhere.by_frame
