"""Animals from boxes (pipelines/boxes.py, Engine.predict_boxes, track --animals N --boxes SOURCE).

The pipeline tests use a stand-in engine that reads each box as the pair sample's truth animal whose keypoint box
overlaps it most (plus noise), so they check the box handling, counts and identities, not the model; one test
runs the real crop forward of the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ppmtrack.engine.multi import Animals
from ppmtrack.pipelines.boxes import (
    BoxCounts,
    BoxesError,
    FrameBoxes,
    OnnxDetector,
    box_iou,
    keypoint_boxes,
    open_boxes,
    select_boxes,
)
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_multi_tracks_csv
from ppmtrack.pipelines.track_multi import track_video_multi

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
N_FRAMES = 30


@pytest.fixture(scope="module")
def truth():
    return read_annotation(SAMPLES / "pair_truth.json")


class BoxTruthEngine:
    """Reads each box as the truth animal whose keypoint box it overlaps most; records the boxes it got."""

    def __init__(self, truth, noise_px=0.5, seed=0):
        self.truth, self.noise_px, self.calls, self.got = truth, noise_px, 0, []
        self.rng = np.random.default_rng(seed)
        self.names, self.skeleton = truth.names, truth.skeleton
        self.model = SimpleNamespace(name="box-truth", device="cpu")
        self.resolution, self.info = 64, {}
        self.looks = self.rng.normal(size=(2, 8))

    def predict_boxes(self, frames, boxes):
        out = []
        for b in boxes:
            gt = self.truth.instances[self.calls]
            self.calls += 1
            self.got.append(np.asarray(b).copy())
            if not len(b):
                out.append(Animals(np.zeros((0, len(self.names), 2)), np.zeros((0, len(self.names))),
                                   np.zeros((0, 8)), np.zeros(0)))
                continue
            which = box_iou(np.asarray(b), keypoint_boxes(gt)).argmax(axis=1)
            xy = np.nan_to_num(gt[which]) + self.rng.normal(0, self.noise_px, (len(b), len(self.names), 2))
            out.append(Animals(xy, np.full(xy.shape[:2], 0.9), self.looks[which], np.ones(len(b))))
        return out


def test_select_boxes_defines_gaps_overlaps_outside_and_extra_boxes():
    counts = BoxCounts()
    size = (100, 200)  # height, width
    assert len(select_boxes(None, size, 2, counts)) == 0  # the source has no entry for the frame
    boxes = FrameBoxes(np.array([[10, 10, 50, 50], [11, 10, 50, 50],  # the same animal twice (IoU ≥ 0.9)
                                 [30, 30, 80, 80],  # overlaps the first: touching animals, kept
                                 [300, 10, 350, 40],  # wholly outside the frame
                                 [150, 60, 260, 120],  # partly outside: clipped
                                 [np.nan, 0, 5, 5]]),  # invalid
                       np.array([0.9, 0.8, 0.7, 0.95, 0.6, 1.0]))
    kept = select_boxes(boxes, size, 2, counts)
    assert len(kept) == 2 and kept.score.tolist() == [0.9, 0.7]  # the two best after the duplicate went
    assert counts.duplicates == 1 and counts.outside == 1 and counts.invalid == 1 and counts.clipped == 1
    assert counts.extra == 1 and counts.overlapping_pairs == 1
    assert counts.frames == 2 and counts.frames_without_boxes == 1 and counts.boxes_used == 2
    low = select_boxes(FrameBoxes(np.array([[0, 0, 10, 10]]), np.array([0.1])), size, 2, counts, min_score=0.5)
    assert len(low) == 0 and counts.low_score == 1 and counts.frames_without_boxes == 2
    ids = FrameBoxes(np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]), np.ones(3), ["a", "z", "b"])
    chosen = select_boxes(ids, size, 2, counts, allowed_ids=["a", "b"])
    assert chosen.ids == ["a", "b"] and counts.unknown_id == 1


def _truth_boxes_csv(path: Path, truth, frames, with_ids: bool):
    rows = ["frame," + ("id," if with_ids else "") + "x0,y0,x1,y1,score"]
    for f in frames:
        for a, box in enumerate(keypoint_boxes(truth.instances[f])):
            rows.append(f"{f}," + (f"fly{a}," if with_ids else "") + ",".join(f"{v:.2f}" for v in box) + ",0.9")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_track_from_a_boxes_file_with_gaps_overlaps_and_extras(tmp_path, truth):
    frames = [f for f in range(N_FRAMES) if f not in (5, 6, 7)]  # a gap of three frames
    path = _truth_boxes_csv(tmp_path / "boxes.csv", truth, frames, with_ids=False)
    with open(path, "a") as f:
        f.write("10,500,500,600,600,0.99\n")  # outside the frame
        box = keypoint_boxes(truth.instances[12])[0]
        f.write("12," + ",".join(f"{v + 0.5:.2f}" for v in box) + ",0.5\n")  # a duplicate of animal 0
        f.write("14,0,0,30,30,0.1\n")  # a third box, lowest score: more boxes than animals
    engine = BoxTruthEngine(truth)
    summary = track_video_multi(SAMPLES / "pair.mp4", engine, tmp_path / "out", animals=2, stop=N_FRAMES,
                                boxes=path, write_video=False, progress=False, batch_size=4)
    assert summary.status == "complete" and summary.frames_processed == N_FRAMES
    counts = summary.identities["boxes"]
    assert counts["frames"] == N_FRAMES and counts["frames_without_boxes"] == 3
    assert counts["outside"] == 1 and counts["duplicates"] == 1 and counts["extra"] == 1
    assert counts["boxes_used"] == 2 * len(frames)
    assert all(len(engine.got[f]) == 0 for f in (5, 6, 7))
    tracks = read_multi_tracks_csv(tmp_path / "out" / "pair.csv")
    assert list(tracks) == ["animal1", "animal2"]
    # identities by Hungarian + appearance: each identity stays on one lizard, also across the gap
    for animal in tracks.values():
        rows = [f for f in range(N_FRAMES) if f not in (5, 6, 7)]
        err = [np.nanmean(np.linalg.norm(animal.raw_xy[rows] - truth.instances[rows, a], axis=-1), axis=1)
               for a in range(2)]
        follows = np.argmin(np.stack(err), axis=0)
        assert (follows == follows[0]).all()
    doc = json.loads((tmp_path / "out" / "pair.summary.json").read_text())
    assert doc["settings"]["boxes"]["kind"] == "boxes csv"


def test_ids_in_the_source_are_the_identities(tmp_path, truth):
    path = _truth_boxes_csv(tmp_path / "boxes.csv", truth, range(12), with_ids=True)
    summary = track_video_multi(SAMPLES / "pair.mp4", BoxTruthEngine(truth), tmp_path / "out", animals=2, stop=12,
                                boxes=path, write_video=False, progress=False)
    assert summary.identities["individuals"] == ["fly0", "fly1"]
    tracks = read_multi_tracks_csv(tmp_path / "out" / "pair.csv")
    for a, name in enumerate(["fly0", "fly1"]):
        assert np.nanmean(np.linalg.norm(tracks[name].raw_xy - truth.instances[:12, a], axis=-1)) < 3


def test_boxes_from_sleap_and_deeplabcut_tracks(tmp_path, truth):
    from ppmtrack.pipelines.io.dlc import write_dlc_multi
    from ppmtrack.pipelines.io.sleap import write_sleap_analysis_multi
    from ppmtrack.tracker import Tracks

    n = 8
    tracks = {name: Tracks(names=list(truth.names), frame=np.arange(n), time=np.arange(n) / 25.0,
                           raw_xy=truth.instances[:n, a], confidence=np.full((n, len(truth.names)), 0.9),
                           xy=truth.instances[:n, a], visible=np.ones((n, len(truth.names)), bool),
                           skeleton=list(truth.skeleton))
              for a, name in enumerate(["liz_a", "liz_b"])}
    sleap = write_sleap_analysis_multi(tracks, tmp_path / "pair.analysis.h5", engine_name="x")
    written = write_dlc_multi(tracks, tmp_path, "pair", engine_name="x")
    for path in [sleap, *written]:
        source = open_boxes(path)
        assert source.id_order == ["liz_a", "liz_b"], path
        got = source.boxes_at(3, None)
        want = keypoint_boxes(truth.instances[3])
        np.testing.assert_allclose(got.xyxy, want, atol=0.05)


def test_a_bad_box_source_is_a_clear_error(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("frame,x0,y0\n1,2,3\n")
    with pytest.raises(BoxesError, match="needs frame, x0, y0, x1, y1"):
        open_boxes(bad)
    with pytest.raises(BoxesError, match="unknown kind"):
        open_boxes(__file__)


def _tiny_detector(path: Path, boxes: np.ndarray, fixed: tuple[int, int] | None = None):
    """An ONNX model with the documented contract: (1, 3, H, W) in, (N, 5) boxes out. The boxes are constants
    plus the input's mean times zero (so the graph depends on its input)."""
    import onnx
    from onnx import TensorProto, helper

    h, w = fixed or ("H", "W")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
         helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
         helper.make_node("Add", ["boxes", "nothing"], ["detections"])],
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [len(boxes), 5])],
        [helper.make_tensor("boxes", TensorProto.FLOAT, boxes.shape, boxes.astype(np.float32).ravel()),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnx_detector_runs_a_generated_model(tmp_path, truth):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    box = keypoint_boxes(truth.instances[0])
    rows = np.concatenate([box, [[0.9], [0.8]]], axis=1)
    detector = _tiny_detector(tmp_path / "det.onnx", rows)
    source = open_boxes(detector)
    assert isinstance(source, OnnxDetector) and not source.has_ids
    image = np.zeros((120, 160, 3), np.uint8)
    np.testing.assert_allclose(source.boxes_at(0, image).xyxy, box, atol=1e-3)
    # a fixed input size: the frame is resized to it and the boxes scaled back
    fixed = open_boxes(_tiny_detector(tmp_path / "fixed.onnx", np.array([[10, 20, 30, 40, 1.0]]), (64, 32)))
    np.testing.assert_allclose(fixed.boxes_at(0, image).xyxy, [[50, 37.5, 150, 75]], atol=1e-3)
    summary = track_video_multi(SAMPLES / "pair.mp4", BoxTruthEngine(truth), tmp_path / "out", animals=2, stop=6,
                                boxes=detector, write_video=False, progress=False)
    assert summary.status == "complete" and summary.identities["boxes"]["boxes_used"] == 12


def test_engine_reads_animals_from_boxes_in_one_crop_forward(tiny_model):
    import torch

    from ppmtrack.engine import AdaptConfig, Engine

    generator = torch.Generator().manual_seed(0)
    dim = tiny_model.unet.config.cross_attention_dim
    engine = Engine(tiny_model, ["nose", "tail"], torch.randn(2, dim, generator=generator),
                    torch.randn(dim, generator=generator), AdaptConfig(resolution=64))
    frames = np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    found = engine.predict_boxes(frames, [np.array([[10, 10, 50, 40], [60, 30, 120, 90]]), np.zeros((0, 4))])
    assert len(found) == 2 and found[0].keypoints.shape == (2, 2, 2) and len(found[1]) == 0
    # keypoints come back in frame pixels, inside (or at the margin of) their box's square crop
    for xy, (x0, y0, x1, y1) in zip(found[0].keypoints, [[10, 10, 50, 40], [60, 30, 120, 90]], strict=True):
        side = max(x1 - x0, y1 - y0) * 1.5
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert (np.abs(xy[:, 0] - cx) <= side / 2 + 1).all() and (np.abs(xy[:, 1] - cy) <= side / 2 + 1).all()
    np.testing.assert_allclose(np.linalg.norm(found[0].appearance, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(found[0].appearance[0], found[0].appearance[1])


def test_track_refuses_boxes_without_animals_and_a_bad_box_file_before_loading_a_model(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    bad = tmp_path / "boxes.txt"
    bad.write_text("nothing")
    common = ["track", str(SAMPLES / "pair.mp4"), "--support", str(SAMPLES / "pair_support.json"), "--model", "tiny",
              "-o", str(tmp_path / "out")]
    assert main([*common, "--boxes", str(bad)]) != 0
    assert "add --animals N" in capsys.readouterr().err
    assert main([*common, "--animals", "2", "--boxes", str(bad)]) != 0
    assert "unknown kind of box source" in capsys.readouterr().err
