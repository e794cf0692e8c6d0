"""The bundled sample (samples/): annotations readable, video agrees with them, generator deterministic."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from ppmtrack.pipelines.io.annotation import read_annotation

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SCRIPT = SAMPLES / "make_sample.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("ppmtrack_make_sample", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen():
    return _load_script()


@pytest.fixture(scope="module")
def truth():
    return read_annotation(SAMPLES / "truth.json")


@pytest.fixture(scope="module")
def support():
    return read_annotation(SAMPLES / "support.json")


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


@pytest.fixture(scope="module")
def video_frames():
    return _decode(SAMPLES / "sample.mp4")


def test_annotations_read(truth, support, gen):
    for labels in (truth, support):
        assert labels.names == gen.KEYPOINTS
        assert labels.skeleton == gen.SKELETON
        assert labels.flip_pairs == gen.FLIP_PAIRS
        assert all(ref.video == SAMPLES / "sample.mp4" for ref in labels.frames)
    assert [r.frame for r in truth.frames] == list(range(len(truth.frames)))
    assert np.isfinite(truth.keypoints).all()  # every keypoint is visible in every frame
    idx = [r.frame for r in support.frames]
    assert idx == gen.SUPPORT_FRAMES and len(idx) == 4
    np.testing.assert_array_equal(support.keypoints, truth.keypoints[idx])


def test_video_matches_truth(truth, video_frames):
    assert (SAMPLES / "sample.mp4").stat().st_size < 3_000_000
    assert len(video_frames) == len(truth.frames) >= 150
    h, w = video_frames[0].shape[:2]
    assert (w, h) == (320, 240)
    assert all(f.shape == (240, 320, 3) for f in video_frames)
    kp = truth.keypoints
    assert (kp[..., 0] >= 0).all() and (kp[..., 0] <= w - 1).all()
    assert (kp[..., 1] >= 0).all() and (kp[..., 1] <= h - 1).all()
    with av.open(str(SAMPLES / "sample.mp4")) as c:
        assert c.streams.video[0].average_rate == 30


def test_support_frames_load(support, truth, video_frames):
    images = support.load_images()
    assert len(images) == 4
    for ref, img in zip(support.frames, images, strict=True):
        assert img.shape == (240, 320, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, video_frames[ref.frame])


def test_keypoints_sit_on_their_parts(truth, video_frames, gen):
    """The ground truth agrees with the pixels: each marked keypoint's pixel has its body part's colour."""
    parts = {n: p for n, p in gen.KEYPOINT_PART.items() if p is not None}
    palette = {p: np.array(gen.COLOURS[p], float) for p in parts.values()}
    assert len(parts) >= 8
    checked = 0
    for f, img in enumerate(video_frames):
        for k, name in enumerate(truth.names):
            if name not in parts:
                continue
            x, y = np.round(truth.keypoints[f, k]).astype(int)
            pixel = np.median(img[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3), axis=0)
            dist = {p: np.linalg.norm(pixel - c) for p, c in palette.items()}
            assert min(dist, key=dist.get) == parts[name], (f, name, pixel, dist)
            assert dist[parts[name]] < 80, (f, name, pixel, gen.COLOURS[parts[name]])
            checked += 1
    assert checked == len(video_frames) * len(parts)
    # and just off the animal, a few pixels beyond the tail tip, it is not the tail tip's colour
    k_tip, k_mid = truth.names.index("tail_tip"), truth.names.index("tail_mid")
    for f in (0, len(video_frames) // 2):
        tip, mid = truth.keypoints[f, k_tip], truth.keypoints[f, k_mid]
        beyond = tip + 12 * (tip - mid) / np.linalg.norm(tip - mid)
        x, y = np.round(beyond).astype(int)
        assert np.linalg.norm(video_frames[f][y, x] - palette["tail_tip"]) > 80


def test_regeneration_is_deterministic(tmp_path, video_frames):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("truth.json", "support.json"):
        assert (tmp_path / name).read_text() == (SAMPLES / name).read_text(), name
    again = _decode(tmp_path / "sample.mp4")
    assert len(again) == len(video_frames)
    for f in (0, len(again) // 2, len(again) - 1):  # same pixels, up to encoder differences
        assert np.abs(again[f].astype(int) - video_frames[f].astype(int)).mean() < 2.0


def test_pair_sample_truth_has_two_individuals_on_their_pixels(gen):
    """The two-animal sample: 200 frames, two named lizards, visible keypoints on their colours, and the
    touching pass hides some of lizard 1's keypoints under lizard 2 (null in the truth)."""
    truth = read_annotation(SAMPLES / "pair_truth.json")
    support = read_annotation(SAMPLES / "pair_support.json")
    assert truth.individuals == ["lizard1", "lizard2"] and truth.instances.shape == (200, 2, 10, 2)
    assert [f.frame for f in support.frames] == gen.PAIR_SUPPORT_FRAMES
    hidden = ~np.isfinite(truth.instances).all(axis=-1)
    assert hidden[:, 1].sum() == 0 and 0 < hidden[:, 0].sum() < 0.2 * hidden[:, 0].size
    assert hidden[90:110, 0].any()  # during the pass
    frames = _decode(SAMPLES / "pair.mp4")
    assert len(frames) == 200 and (SAMPLES / "pair.mp4").stat().st_size < 300_000
    parts = {n: p for n, p in gen.KEYPOINT_PART.items() if p is not None}
    palette = {p: np.array(gen.COLOURS[p], float) for p in parts.values()}
    for f, animals in ((0, (0, 1)), (99, (1,)), (199, (0, 1))):  # at the pass, only the lizard on top
        for a in animals:
            for k, name in enumerate(truth.names):
                if name not in parts or hidden[f, a, k]:
                    continue
                x, y = np.round(truth.instances[f, a, k]).astype(int)
                pixel = np.median(frames[f][y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3), axis=0)
                dist = {p: np.linalg.norm(pixel - c) for p, c in palette.items()}
                assert min(dist, key=dist.get) == parts[name], (f, a, name, pixel)


def test_session2_is_a_new_recording_whose_truth_overlays_the_animal(gen, video_frames):
    """The new-session sample: another background, lighting, path and poses, no frame of the first session
    (no support frame inside), and exact truth on the animal's markings under its lighting."""
    truth = read_annotation(SAMPLES / "session2_truth.json")
    frames = _decode(SAMPLES / "session2.mp4")
    cfg = gen.SESSIONS[2]
    assert len(frames) == len(truth.frames) == cfg["n_frames"] and truth.names == gen.KEYPOINTS
    assert (SAMPLES / "session2.mp4").stat().st_size < 400_000
    assert all(ref.video.name == "session2.mp4" for ref in truth.frames)
    # shares no frame with the first session: every pair of frames differs clearly (grey-level thumbnails)
    from ppmtrack.pipelines.anchors import MAX_THUMBNAIL_DIFFERENCE, thumbnail

    first = np.stack([thumbnail(f) for f in video_frames]).astype(float)
    second = np.stack([thumbnail(f) for f in frames]).astype(float)
    closest = np.abs(second[:, None] - first[None]).mean(axis=(2, 3)).min()
    assert closest > MAX_THUMBNAIL_DIFFERENCE, closest  # no frame would be taken for a support frame
    full = min(np.abs(a.astype(float) - b.astype(float)).mean() for a in frames[::10] for b in video_frames[::10])
    assert full > 15.0, full  # and at full resolution they are far apart
    first_truth = read_annotation(SAMPLES / "truth.json").keypoints
    assert np.abs(truth.keypoints[:, None] - first_truth[None]).max(axis=(2, 3)).min() > 5.0  # another path
    # the truth overlays the animal: each marked keypoint's pixel has its part's colour under this lighting
    parts = {n: p for n, p in gen.KEYPOINT_PART.items() if p is not None}
    h, w = frames[0].shape[:2]
    light_x = cfg["gain"] * (1.0 + cfg["gradient"] * np.linspace(-0.5, 0.5, w))
    checked = 0
    for f in range(0, len(frames), 5):
        for k, name in enumerate(truth.names):
            if name not in parts:
                continue
            x, y = np.round(truth.keypoints[f, k]).astype(int)
            assert 0 <= x < w and 0 <= y < h
            pixel = np.median(frames[f][y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3), axis=0)
            lit = {p: np.array(gen.COLOURS[p], float) * light_x[x] * np.array(cfg["tint"]) for p in parts.values()}
            dist = {p: np.linalg.norm(pixel - c) for p, c in lit.items()}
            assert min(dist, key=dist.get) == parts[name], (f, name, pixel, dist)
            checked += 1
    assert checked == len(range(0, len(frames), 5)) * len(parts)
