"""COCO keypoints JSON in: files written by sleap-io and by hand, one annotation per image."""

import json

import cv2
import numpy as np
import pytest

from ppmtrack.pipelines.io.coco import read_coco
from ppmtrack.pipelines.io.formats import detect_labels_format, read_labels
from ppmtrack.pipelines.labels import LabelsError

NAMES = ["nose", "left_ear", "right_ear"]


def make_coco(tmp_path, annotations=None, skeleton=((1, 2), (1, 3))):
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "images" / name), np.zeros((40, 50, 3), np.uint8))
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 50, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 40},
        ],
        "categories": [
            {"id": 7, "name": "mouse", "keypoints": NAMES, "skeleton": [list(e) for e in skeleton]}
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 1, "category_id": 7, "keypoints": [5, 6, 2, 7, 8, 1, 0, 0, 0], "area": 10},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "keypoints": [30, 31, 2, 32, 33, 2, 34, 35, 2],
                "area": 99,
            },
            {
                "id": 3,
                "image_id": 2,
                "category_id": 7,
                "keypoints": [9, 10, 2, 11, 12, 2, 13, 14, 2],
                "area": 5,
            },
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_read_coco_first_or_largest_annotation_per_image(tmp_path):
    path = make_coco(tmp_path)
    assert detect_labels_format(path) == "coco"
    labels = read_labels(path)
    assert labels.names == NAMES and labels.skeleton == [("nose", "left_ear"), ("nose", "right_ear")]
    assert [f.image.name for f in labels.frames] == ["a.png", "b.png"]
    np.testing.assert_array_equal(
        labels.keypoints[0], [[5, 6], [np.nan, np.nan], [np.nan, np.nan]]
    )  # v=1 occluded
    np.testing.assert_array_equal(read_coco(path, keep_occluded=True).keypoints[0, 1], [7, 8])
    np.testing.assert_array_equal(read_coco(path, per_image="largest").keypoints[0, 0], [30, 31])
    assert len(labels.to_support().images) == 2


def test_read_coco_written_by_sleap_io(tmp_path):
    sio = pytest.importorskip("sleap_io")
    for name in ("f0.png", "f1.png"):
        cv2.imwrite(str(tmp_path / name), np.full((40, 50, 3), 70, np.uint8))
    video = sio.Video(filename=[str(tmp_path / "f0.png"), str(tmp_path / "f1.png")])
    skeleton = sio.Skeleton(list(NAMES), edges=[("nose", "left_ear")])
    frames = [
        sio.LabeledFrame(
            video=video,
            frame_idx=i,
            instances=[
                sio.Instance.from_numpy(
                    np.array([[5.0 + i, 6.0], [7.0, 8.0], [np.nan, np.nan]]), skeleton=skeleton
                )
            ],
        )
        for i in range(2)
    ]
    sio.save_coco(
        sio.Labels(frames, videos=[video], skeletons=[skeleton]),
        str(tmp_path / "sio.json"),
        image_filenames=["f0.png", "f1.png"],
    )
    labels = read_labels(tmp_path / "sio.json")
    assert labels.names == NAMES and labels.skeleton == [("nose", "left_ear")]
    np.testing.assert_allclose(labels.keypoints[1], [[6, 6], [7, 8], [np.nan, np.nan]])
    assert labels.to_support().images[1].shape == (40, 50, 3)


def test_read_coco_wrong_keypoint_count_names_the_annotation(tmp_path):
    path = make_coco(
        tmp_path, annotations=[{"id": 1, "image_id": 1, "category_id": 7, "keypoints": [1, 2, 2]}]
    )
    with pytest.raises(
        LabelsError, match=r"ann\.json: annotations\[0\]: 'keypoints' must be 9 numbers.*got 3"
    ):
        read_coco(path)


def test_read_coco_skeleton_index_out_of_range(tmp_path):
    path = make_coco(tmp_path, skeleton=((1, 4),))
    with pytest.raises(
        LabelsError, match=r"ann\.json: category 'mouse': skeleton edge \[1, 4\] .* between 1 and 3"
    ):
        read_coco(path)


def test_read_coco_unknown_image_and_category(tmp_path):
    path = make_coco(
        tmp_path,
        annotations=[{"id": 1, "image_id": 9, "category_id": 7, "keypoints": [1, 2, 2, 3, 4, 2, 5, 6, 2]}],
    )
    with pytest.raises(LabelsError, match=r"ann\.json: annotations\[0\] refers to image_id 9"):
        read_coco(path)
    with pytest.raises(LabelsError, match=r"ann\.json: no category 'rat' with keypoints; .*: mouse"):
        read_coco(make_coco(tmp_path), category="rat")


def test_read_coco_missing_image_fails_at_load(tmp_path):
    path = make_coco(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(LabelsError, match=r"ann\.json: frame 1: cannot read image .*b\.png"):
        read_coco(path).load_images()


def test_read_coco_not_coco_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"images": []}')
    with pytest.raises(LabelsError, match=r"x\.json: .*Supported label formats"):
        read_labels(path)
    with pytest.raises(LabelsError, match=r"x\.json: a COCO file needs lists"):
        read_coco(path)
