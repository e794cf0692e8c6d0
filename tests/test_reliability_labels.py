"""Reliability of label reading (issue 8, item 13): conflicting duplicates, never-labelled keypoints, a UTF-8
byte-order mark, DeepLabCut prediction tables, plain numbers in messages, no OpenCV or numpy noise."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.labels import LabelsError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"


def _write(path: Path, frames: list[dict], names=("nose", "tail"), bom: bool = False) -> Path:
    text = json.dumps({"ppmtrack_annotation": 1, "keypoints": list(names), "frames": frames})
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_same_frame_labelled_twice_with_different_coordinates_is_an_error(tmp_path):
    path = _write(tmp_path / "a.json", [
        {"video": str(SAMPLE), "frame": 10, "points": {"nose": [100, 50], "tail": [20, 30]}},
        {"video": str(SAMPLE), "frame": 10, "points": {"nose": [140, 50], "tail": [20, 30]}},
    ])
    with pytest.raises(LabelsError, match=r"frame 10 is labelled twice \(entries 0 and 1\).*'nose' at "
                                          r"\(100\.0, 50\.0\) and \(140\.0, 50\.0\)"):
        read_annotation(path)


def test_identical_copies_of_one_labelled_frame_count_once_with_a_warning(tmp_path, caplog):
    same = _write(tmp_path / "b.json", [
        {"video": str(SAMPLE), "frame": 10, "points": {"nose": [100, 50]}},
        {"video": str(SAMPLE), "frame": 10, "points": {"nose": [100, 50]}},
        {"video": str(SAMPLE), "frame": 20, "points": {"nose": [90, 40]}},
    ])
    with caplog.at_level(logging.WARNING, logger="ppmtrack"):
        labels = read_annotation(same)
    assert [f.frame for f in labels.frames] == [10, 20] and labels.keypoints[:, 0].tolist() == [[100, 50], [90, 40]]
    assert "entry 1" in caplog.text and "copy of entry 0" in caplog.text and "counted once" in caplog.text


def test_identical_images_under_two_names_with_the_same_labels_count_once(tmp_path, caplog):
    import cv2
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    for name in ("img005.png", "img005 copy.png"):
        cv2.imwrite(str(tmp_path / name), image)
    cv2.imwrite(str(tmp_path / "img009.png"), image[::-1])
    path = _write(tmp_path / "c.json", [
        {"image": "img005.png", "points": {"nose": [10, 5], "tail": [20, 15]}},
        {"image": "img005 copy.png", "points": {"nose": [10, 5], "tail": [20, 15]}},
        {"image": "img009.png", "points": {"nose": [10, 5], "tail": [20, 15]}},
    ])
    with caplog.at_level(logging.WARNING, logger="ppmtrack"):
        labels = read_annotation(path)
        support = labels.to_support()
    assert len(support.images) == 2 and len(support.labels) == 2 and len(labels.frames) == 2
    assert [f.image.name for f in labels.frames] == ["img005.png", "img009.png"]
    assert "img005 copy.png" in caplog.text and "identical pixels" in caplog.text


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    labels = read_annotation(_write(tmp_path / "bom.json", [{"video": str(SAMPLE), "frame": 3,
                                                              "points": {"nose": [1, 2]}}], bom=True))
    assert labels.names == ["nose", "tail"] and labels.keypoints[0, 0].tolist() == [1.0, 2.0]


def test_keypoint_never_labelled_warns_clearly_without_numpy_noise(tmp_path, caplog, monkeypatch, tiny_model):
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.pipelines.evaluate import format_support_error

    monkeypatch.setattr(logging.getLogger("ppmtrack"), "propagate", True)
    path = _write(tmp_path / "a.json", [{"video": str(SAMPLE), "frame": f, "points": {"nose": [150, 100 + f]}}
                                        for f in (10, 60)])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="ppmtrack"):
        warnings.simplefilter("always")
        support = read_annotation(path).to_support()
        engine = Engine.adapt(support, tiny_model, AdaptConfig(steps=2, fg_steps=1, views_per_frame=1,
                                                               resolution=64))
        table = format_support_error(engine, support)
    assert "never labelled in any frame: tail" in caplog.text
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert "n/a" in table.splitlines()[2]


def test_keypoint_outside_the_image_is_reported_with_plain_numbers(tmp_path):
    path = _write(tmp_path / "a.json", [{"video": str(SAMPLE), "frame": 0, "points": {"nose": [700, 20]}}])
    with pytest.raises(LabelsError) as failure:
        read_annotation(path).load_images()
    assert "(700.0, 20.0)" in str(failure.value) and "np.float" not in str(failure.value)


def test_missing_image_is_a_labels_error_without_opencv_warnings(tmp_path, capfd):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"keypoints": ["nose"], "frames": [{"image": "gone.png", "points": {}}]}))
    (tmp_path / "not-an-image.png").write_text("hello")
    path2 = tmp_path / "b.json"
    path2.write_text(json.dumps({"keypoints": ["nose"], "frames": [{"image": "not-an-image.png", "points": {}}]}))
    for p in (path, path2):
        with pytest.raises(LabelsError, match="cannot read image"):
            read_annotation(p).load_images()
    captured = capfd.readouterr()
    assert "WARN" not in captured.err and "WARN" not in captured.out


def test_dlc_predictions_table_is_refused_by_convert_labels(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    predictions = tmp_path / "videoDLC_resnet50_testshuffle1_1000.csv"
    predictions.write_text(
        "scorer,DLC_resnet50,DLC_resnet50,DLC_resnet50\n"
        "bodyparts,nose,nose,nose\n"
        "coords,x,y,likelihood\n"
        "0,10.5,20.5,0.99\n"
        "10,11.5,21.5,0.98\n"
    )
    status = main(["convert-labels", str(predictions), "-o", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert status == 2 and "predictions table" in err and "likelihood" in err
    assert not (tmp_path / "out.json").exists()
