"""The project's annotation format: wrong files get a clear error naming the file and the entry."""

import json

import cv2
import numpy as np
import pytest

from ppmtrack.pipelines.io.annotation import read_annotation, write_annotation
from ppmtrack.pipelines.labels import LabelsError


def _write(tmp_path, doc, name="a.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


@pytest.fixture
def image(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "f.png"), img)
    return "f.png"


def test_round_trip(tmp_path, image):
    doc = {"keypoints": ["a", "b"], "skeleton": [["a", "b"]],
           "frames": [{"image": image, "points": {"a": [1.5, 2.0], "b": None}}]}
    labels = read_annotation(_write(tmp_path, doc))
    assert labels.names == ["a", "b"] and labels.skeleton == [("a", "b")]
    assert np.isnan(labels.keypoints[0, 1]).all()
    write_annotation(labels, tmp_path / "out" / "b.json")
    again = read_annotation(tmp_path / "out" / "b.json")
    assert np.allclose(again.keypoints, labels.keypoints, equal_nan=True)
    assert again.to_support().images[0].shape == (40, 60, 3)


@pytest.mark.parametrize(
    "frames, message",
    [
        ([{"image": "f.png", "points": {"z": [1, 2]}}], "frames\\[0\\]: unknown keypoint 'z'"),
        ([{"image": "f.png", "points": {"a": [1]}}], "keypoint 'a' must be \\[x, y\\]"),
        ([{"points": {}}], "frames\\[0\\] needs 'image' or 'video'"),
        ([{"video": "v.mp4", "points": {}}], "non-negative integer 'frame'"),
        ([], "'frames' is empty"),
    ],
)
def test_malformed_entries_name_file_and_entry(tmp_path, image, frames, message):
    p = _write(tmp_path, {"keypoints": ["a"], "frames": frames})
    with pytest.raises(LabelsError, match=message) as e:
        read_annotation(p)
    assert str(p) in str(e.value)


def test_outside_and_unreadable_images(tmp_path, image):
    p = _write(tmp_path, {"keypoints": ["a"], "frames": [{"image": image, "points": {"a": [100, 5]}}]})
    with pytest.raises(LabelsError, match="lies outside the 60x40 image"):
        read_annotation(p).to_support()
    (tmp_path / "broken.png").write_bytes(b"junk")
    p = _write(tmp_path, {"keypoints": ["a"], "frames": [{"image": "broken.png", "points": {"a": [1, 1]}}]})
    with pytest.raises(LabelsError, match="cannot read image"):
        read_annotation(p).to_support()


def test_not_json_and_missing_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{oops")
    with pytest.raises(LabelsError, match="not a readable JSON"):
        read_annotation(p)
    with pytest.raises(LabelsError, match="no such annotation file"):
        read_annotation(tmp_path / "none.json")
