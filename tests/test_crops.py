"""Animal-centred crops: crop geometry, the crop policy's boxes and re-acquisition, a tracking run with crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppmtrack.engine.api import Prediction
from ppmtrack.engine.geometry import crop, crop_mapping, grid_to_input, input_to_grid, square_box
from ppmtrack.pipelines.crops import CropParams, CropPolicy, crop_policy_for, crop_settings, predict_with_crops

W, H = 320, 240


def test_crop_round_trip_frame_to_grid_to_frame_within_a_hundredth_of_a_pixel():
    rng = np.random.default_rng(0)
    boxes = np.array([[37, 21, 165, 149], [-20, 100, 140, 260], [200, 0, 296, 96]], dtype=float)
    points = rng.uniform([0, 0], [W, H], size=(3, 7, 2))
    for size in (64, 128, 256):
        mapping = crop_mapping(boxes, size)
        for stride in (4.0, 8.0):
            grid = input_to_grid(mapping.to_input(points), stride)
            back = mapping.to_frame(grid_to_input(grid, stride))
            assert np.abs(back - points).max() < 0.01


def test_crop_places_frame_pixels_where_the_mapping_says():
    """A bright blob at a sub-pixel frame position lands, in the resized crop, where `crop_mapping` puts it."""
    yy, xx = np.mgrid[0:H, 0:W]
    centre = np.array([101.3, 77.6])
    blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * 4.0**2))
    frame = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    box = square_box(60, 40, 140, 120)
    x, mapping = crop(torch.from_numpy(frame[None]), box, 128)
    image = (x[0, 0].numpy() + 1) * 127.5
    weights = np.clip(image - 20, 0, None)
    iy, ix = np.mgrid[0:128, 0:128]
    found = np.array([(weights * ix).sum(), (weights * iy).sum()]) / weights.sum()
    back = mapping.to_frame(found[None, None])[0, 0]
    assert np.abs(back - centre).max() < 0.15


def test_square_box_is_square_with_margin_and_shifted_inside_the_frame():
    b = square_box(100, 100, 140, 120, margin=0.25)
    assert b[2] - b[0] == pytest.approx(60) and b[3] - b[1] == pytest.approx(60)
    assert (b[:2] + b[2:]) / 2 == pytest.approx([120, 110])
    assert square_box(100, 100, 101, 101, min_side=50)[2:] - square_box(100, 100, 101, 101, min_side=50)[:2] \
        == pytest.approx([50, 50])
    edge = square_box(0, 0, 30, 30, margin=0.5, frame_size=(W, H))
    assert edge[0] == pytest.approx(0) and edge[1] == pytest.approx(0) and edge[2] == pytest.approx(60)
    tall = square_box(10, 0, 300, 20, frame_size=(W, H))  # longer than the frame is high: centred on it
    assert (tall[1] + tall[3]) / 2 == pytest.approx(H / 2)


def test_engine_prediction_on_a_box_equals_prediction_on_the_cut_out_pixels():
    """`Engine.predict(boxes=...)` maps keypoints back to frame pixels: a box cut at the input size needs no
    resizing, so it must agree with predicting the cut-out image and shifting by the box corner."""
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    g = torch.Generator().manual_seed(3)
    engine = Engine(load_model("tiny"), ["a", "b"], torch.randn(2, 768, generator=g), torch.randn(768, generator=g),
                    AdaptConfig(resolution=128, layers="up"))
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, size=(2, H, W, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 138, 148], [150, 90, 278, 218]], dtype=float)
    got = engine.predict(frames, boxes=boxes, return_foreground=True)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        alone = engine.predict(frames[i:i + 1, y0:y1, x0:x1])
        assert np.abs(got.keypoints[i] - (alone.keypoints[0] + [x0, y0])).max() < 1e-3
        assert got.confidence[i] == pytest.approx(alone.confidence[0], abs=1e-5)
    assert got.foreground.shape[0] == 2 and got.maps is None
    smaller = engine.predict(frames, boxes=boxes, crop_size=64)
    assert smaller.keypoints.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="multiple of 64"):
        engine.predict(frames, boxes=boxes, crop_size=100)


# ---- the policy, driven by a synthetic animal ---------------------------------------------------------------

class SyntheticDetector:
    """Stands in for an engine: a square "animal" of 5 keypoints whose true position per frame is known.

    The frame's index is written in its first pixel. Inside the engine's view (the crop box or the whole
    frame) it finds the keypoints exactly with confidence 0.9 and a foreground blob on the animal; an animal
    outside a crop gives keypoints squeezed to the crop's nearest edge, confidence 0.3 and a foreground
    blob at that edge — what a detector shows when the animal leaves its view.
    """

    resolution = 256

    def __init__(self, centres: np.ndarray, half: float = 15.0):
        self.centres = np.asarray(centres, dtype=float)
        offsets = np.array([[0, 0], [-1, -1], [1, -1], [-1, 1], [1, 1]], dtype=float) * half
        self.offsets = offsets
        self.calls: list[tuple[list[int], np.ndarray | None]] = []

    def frames(self) -> np.ndarray:
        out = np.zeros((len(self.centres), H, W, 3), dtype=np.uint8)
        out[:, 0, 0, 0] = np.arange(len(self.centres))
        return out

    def predict(self, images, boxes=None, crop_size=None, return_foreground=False):
        index = [int(v) for v in np.asarray(images)[:, 0, 0, 0]]
        self.calls.append((index, None if boxes is None else np.array(boxes)))
        kps, confs, fgs = [], [], []
        r = (self.resolution if boxes is None else crop_size or self.resolution) // 8  # the maps' side
        for i, f in enumerate(index):
            truth = self.centres[f] + self.offsets
            box = np.array([0, 0, W, H], float) if boxes is None else boxes[i]
            inside = (truth >= box[:2]).all() and (truth <= box[2:]).all()
            if inside:
                kp, conf = truth, 0.9
            else:
                kp, conf = np.clip(truth, box[:2] + 1, box[2:] - 1), 0.3
            cell = (kp.mean(axis=0) - box[:2]) / (box[2:] - box[:2]) * r
            yy, xx = np.mgrid[0:r, 0:r]
            fgs.append(np.exp(-((xx - cell[0]) ** 2 + (yy - cell[1]) ** 2) / (2 * 2.0**2)))
            kps.append(kp)
            confs.append(np.full(len(kp), conf))
        n = len(index)
        return Prediction(np.array(kps), np.array(confs), np.ones((n, 5)), None,
                          np.array(fgs) if return_foreground else None)


def _run(detector: SyntheticDetector, policy: CropPolicy, batch: int) -> np.ndarray:
    frames = detector.frames()
    out = []
    for s in range(0, len(frames), batch):
        out.append(predict_with_crops(detector, frames[s:s + batch], policy).keypoints)
    return np.concatenate(out)


def test_crops_follow_a_moving_animal_without_reacquisition():
    centres = np.stack([60 + 3 * np.arange(30), 100 + np.arange(30)], axis=1).astype(float)
    detector = SyntheticDetector(centres)
    policy = CropPolicy(256)
    kp = _run(detector, policy, batch=4)
    assert np.abs(kp - (centres[:, None] + detector.offsets)).max() < 1e-9
    assert policy.stats.reacquisitions == 0
    assert policy.stats.whole_frames == 4 and policy.stats.crop_frames == 26  # the first batch finds it
    for index, boxes in detector.calls[1:]:
        assert boxes is not None
        side = boxes[:, 2] - boxes[:, 0]
        assert np.allclose(side, boxes[:, 3] - boxes[:, 1])
        assert (side <= 256 / policy.params.max_zoom + 1e-9).all()  # a 30-px animal: the smallest crop
        # the predicted box follows the motion: centred near the animal of its own frame
        assert np.abs((boxes[:, :2] + boxes[:, 2:]) / 2 - centres[index]).max() < 8


@pytest.mark.parametrize("crop_size", [None, 128])  # 128: crops' maps are smaller than the whole frames'
def test_an_animal_that_jumps_out_of_the_crop_is_reacquired_by_a_whole_frame_pass(crop_size):
    centres = np.array([[80.0, 80.0]] * 10 + [[250.0, 180.0]] * 10)
    detector = SyntheticDetector(centres)
    policy = CropPolicy(256, CropParams(size=crop_size, min_gain=0.0))
    kp = _run(detector, policy, batch=5)
    # every frame ends with the true keypoints, the jump frame too (its crop was run again whole)
    assert np.abs(kp - (centres[:, None] + detector.offsets)).max() < 1e-9
    assert policy.stats.reacquisitions >= 1
    assert sum(policy.stats.reasons.values()) == policy.stats.reacquisitions
    rerun = [index for index, boxes in detector.calls if boxes is None and index[0] >= 10]
    assert rerun and rerun[0][0] == 10  # the first frame after the jump is re-run whole
    last_index, last_boxes = detector.calls[-1]
    assert last_boxes is not None  # after the re-acquisition, crops again, around the new place
    assert np.abs((last_boxes[:, :2] + last_boxes[:, 2:]) / 2 - centres[last_index]).max() < 8


@pytest.mark.parametrize("case, reason", [
    ("low confidence", "confidence"),
    ("keypoints at the edge", "keypoints at the crop border"),
    ("foreground at the edge", "foreground at the crop edge"),
    ("fine", None),
])
def test_lost_reasons(case, reason):
    policy = CropPolicy(256)
    policy.update(np.array([[100.0, 100.0], [120.0, 110.0]]), np.array([0.8, 0.8]), whole=True)
    box = np.array([60.0, 60.0, 160.0, 160.0])
    kp = np.array([[105.0, 100.0], [115.0, 110.0]])
    conf = np.array([0.8, 0.8])
    fg = np.zeros((32, 32))
    fg[14:18, 14:18] = 1.0
    if case == "low confidence":
        conf = np.array([0.5, 0.5])
    elif case == "keypoints at the edge":
        kp = np.array([[157.0, 100.0], [158.0, 110.0]])
    elif case == "foreground at the edge":
        fg = np.zeros((32, 32))
        fg[10:20, 31] = 1.0
    assert policy.lost_reason(kp, conf, fg, box, (W, H)) == reason


def test_keypoints_at_a_crop_edge_that_is_the_frame_edge_are_not_lost():
    policy = CropPolicy(256)
    box = np.array([0.0, 0.0, 100.0, 100.0])
    kp = np.array([[1.0, 50.0], [2.0, 60.0]])  # at the frame's left edge: nowhere else to go
    assert policy.lost_reason(kp, np.array([0.8, 0.8]), None, box, (W, H)) is None


def test_whole_frames_when_a_crop_would_not_enlarge_the_animal():
    policy = CropPolicy(256)
    policy.update(np.array([[10.0, 10.0], [300.0, 230.0]]), np.array([0.8, 0.8]), whole=True)
    assert policy.boxes(4, (W, H)) is None
    policy.update(np.array([[100.0, 100.0], [130.0, 120.0]]), np.array([0.8, 0.8]), whole=True, restart=True)
    boxes = policy.boxes(4, (W, H))
    assert boxes.shape == (4, 4)
    assert (boxes[:, 2] - boxes[:, 0] >= 256 / policy.params.max_zoom - 1e-9).all()


def test_crop_policy_modes_settings_and_bad_crop_size():
    class FakeEngine:
        resolution = 256
        info = {"crop": {"views_per_frame": 4, "margin": 0.4, "max_zoom": 3.0}}

    class WholeFrameEngine:
        resolution = 256
        info = {"crop": {"views_per_frame": 0, "margin": 0.25, "max_zoom": 2.0}}

    assert crop_policy_for(FakeEngine(), "off") is None
    policy = crop_policy_for(FakeEngine(), "auto", 128)
    assert policy.size == 128 and policy.params.margin == 0.4 and policy.params.max_zoom == 3.0
    assert policy.settings()["active"] and policy.settings()["mode"] == "auto"
    # auto: an engine adapted on whole frames only tracks on whole frames; "on" forces crops
    assert crop_policy_for(WholeFrameEngine(), "auto") is None
    assert crop_policy_for(WholeFrameEngine(), "on").size == 256
    assert "not adapted on crops" in crop_settings(WholeFrameEngine(), "auto", None)["why"]
    with pytest.raises(ValueError, match="multiple of 64"):
        crop_policy_for(FakeEngine(), "auto", 100)
    with pytest.raises(ValueError, match="crop must be one of"):
        crop_policy_for(FakeEngine(), "sometimes")
    assert CropParams().size is None


# ---- a tracking run ------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_torch_thread")
def test_tracking_run_with_crops_records_crop_statistics(adapted_engine, tmp_path):
    from ppmtrack.pipelines.io.csv import read_tracks_csv
    from ppmtrack.pipelines.track import track_video

    summary = track_video("samples/sample.mp4", adapted_engine, tmp_path, batch_size=4, stop=12,
                          write_video=False, progress=False, crop="on", flow="off")
    doc = json.loads((tmp_path / "sample.summary.json").read_text())
    crops = doc["crops"]
    assert doc["status"] == "complete" and doc["frames_processed"] == 12
    assert doc["settings"]["crop"]["active"] and doc["settings"]["crop"]["size"] == adapted_engine.resolution
    assert crops == summary.crops
    # every frame is either cropped (and kept) or seen whole; a re-acquired frame was both
    assert crops["crop_frames"] + crops["whole_frames"] - crops["reacquisitions"] == 12
    assert crops["whole_frames"] >= 4  # nothing is known before the first batch
    assert crops["crop_frames"] > 0  # the sample's animal is small enough to be cropped
    tracks = read_tracks_csv(tmp_path / "sample.csv")
    assert tracks.frame.tolist() == list(range(12)) and np.isfinite(tracks.raw_xy).all()
    # auto, with an engine adapted on whole frames only: whole frames, and the summary says why
    track_video("samples/sample.mp4", adapted_engine, tmp_path / "auto", batch_size=4, stop=4, write_video=False,
                progress=False, crop="auto", flow="off")
    doc = json.loads((tmp_path / "auto" / "sample.summary.json").read_text())
    assert doc["crops"] is None and doc["settings"]["crop"]["active"] is False
    assert "not adapted on crops" in doc["settings"]["crop"]["why"]


# ---- adaptation on crops -------------------------------------------------------------------------------------

def test_crop_views_are_jittered_crops_around_the_keypoints_with_their_mask():
    from ppmtrack.engine.crop_views import CropViewConfig, crop_views, keypoint_crop_box
    from ppmtrack.engine.geometry import letterbox_mapping

    yy, xx = np.mgrid[0:H, 0:W]
    keypoints = np.array([[100.0, 80.0], [140.0, 110.0], [np.nan, np.nan]])
    blob = np.exp(-((xx - 100.0) ** 2 + (yy - 80.0) ** 2) / (2 * 3.0**2))
    image = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    size = 128
    lb = letterbox_mapping(W, H, size)
    mask = np.zeros((size, size), np.float32)  # the letterbox mask: 1 on the left half of the frame
    left = lb.to_input(np.array([[0.0, 0.0], [W / 2, H]]))
    mask[int(np.ceil(left[0, 1])):int(left[1, 1]), :int(left[1, 0])] = 1.0
    cfg = CropViewConfig(views_per_frame=6, margin=0.25, max_zoom=2.0, scale_jitter=0.25, shift_jitter=0.15)
    box = keypoint_crop_box(keypoints, size, cfg.margin, cfg.max_zoom, (W, H))
    assert box[2] - box[0] == pytest.approx(64)  # 40-px extent * 1.5 = 60 < the smallest crop, 128 / 2
    views = list(crop_views(image, keypoints, mask, lb, size, cfg, np.random.default_rng(0), torch.device("cpu")))
    assert len(views) == 6
    sides = set()  # mask areas
    for view, kp, view_mask, outside in views:
        assert view.shape == (1, 3, size, size)
        assert np.isnan(kp[2]).all() and not outside[2]
        if outside[0]:
            continue
        pixels = (view[0, 0].numpy() + 1) * 127.5
        iy, ix = np.unravel_index(np.argmax(pixels), pixels.shape)
        assert abs(ix - kp[0, 0]) <= 1.5 and abs(iy - kp[0, 1]) <= 1.5  # the keypoint is where its pixels are
        # the mask moved with the pixels: on at the keypoint (in the left half of the frame)
        assert view_mask[int(round(kp[0, 1])), int(round(kp[0, 0]))] > 0.5
        sides.add(round(float(view_mask.sum()), 1))
    assert len(sides) > 1  # jittered: the views differ
    none = list(crop_views(image, np.full((3, 2), np.nan), mask, lb, size, cfg, np.random.default_rng(0),
                           torch.device("cpu")))
    assert none == []


def test_adapting_on_crop_views_records_the_crop_policy_in_the_engine_file(tmp_path):
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.crop_views import CropViewConfig
    from ppmtrack.engine.support import SupportSet

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8) for _ in range(2)]
    keypoints = np.array([[[100.0, 80.0], [140.0, 110.0]], [[60.0, 150.0], [90.0, 170.0]]])
    support = SupportSet(["a", "b"], images, keypoints)
    config = AdaptConfig(resolution=64, steps=2, fg_steps=1, views_per_frame=2, batch_size=2,
                         crop=CropViewConfig(views_per_frame=3, margin=0.3))
    engine = Engine.adapt(support, model="tiny", config=config)
    assert engine.info["adaptation"]["views"] == 2 * (2 + 3)
    assert engine.info["crop"]["views_per_frame"] == 3 and engine.info["crop"]["margin"] == 0.3
    engine.save(tmp_path / "e.engine")
    loaded = Engine.load(tmp_path / "e.engine")
    assert loaded.info["crop"] == engine.info["crop"]
    assert loaded.config.crop == config.crop
    assert crop_policy_for(loaded, "auto").params.margin == 0.3


def test_cli_crop_options_reach_the_adaptation_config_and_the_run():
    from ppmtrack.pipelines.cli import _adapt_config, build_parser

    args = build_parser().parse_args(["adapt", "samples/support.json", "-o", "x.engine", "--crop-views", "3"])
    assert _adapt_config(args).crop.views_per_frame == 3
    assert _adapt_config(build_parser().parse_args(["adapt", "samples/support.json", "-o", "x.engine"])
                         ).crop.views_per_frame == 0
    args = build_parser().parse_args(["track", "v.mp4", "--engine", "e.engine", "-o", "out", "--crop", "on",
                                      "--crop-size", "128"])
    assert args.crop == "on" and args.crop_size == 128
    assert build_parser().parse_args(["track", "v.mp4", "--engine", "e.engine", "-o", "out"]).crop == "auto"
