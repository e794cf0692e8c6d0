"""Keypoint discovery (engine/discover.py, `ppmtrack discover`): better than random tokens, and usable files.

Tiny model, small inputs and few steps: these show that the optimisation and the plumbing work, not how good
discovered keypoints are on real footage (bench/discover_quality.py, docs/discover.md).
"""

import numpy as np
import pytest
from conftest import SAMPLES

from ppmtrack.pipelines.cli import main

FRAMES = list(range(0, 200, 12))  # 17 frames spanning the walk
SETTINGS = dict(resolution=64, candidates=16, top_k=8, steps=15, lr=0.05, batch_size=2, views_per_frame=2,
                tta_views=2, seed=0)
K = 3


@pytest.fixture(scope="module")
def frames(sample_truth):
    from ppmtrack.pipelines.sources import read_frames_at

    got = read_frames_at(SAMPLES / "sample.mp4", FRAMES)
    return [got[i] for i in FRAMES], sample_truth.keypoints[FRAMES]


@pytest.fixture(scope="module")
def runs(tiny_model, frames):
    """The same candidates optimised and left random (same frames, selection and read-out)."""
    from ppmtrack.engine.discover import DiscoverConfig, discover

    images, _ = frames
    cfg = DiscoverConfig(**SETTINGS)
    return {optimise: discover(tiny_model, images, K, cfg, optimise=optimise) for optimise in (True, False)}


def test_discovery_runs_and_locates_every_frame(runs):
    history = runs[True].history
    assert len(history["total"]) == SETTINGS["steps"] and not runs[False].history["total"]
    assert runs[True].keypoints.shape == (len(FRAMES), K, 2) and np.isfinite(runs[True].keypoints).all()


def test_discovered_points_are_more_equivariant_than_random_tokens(tiny_model, runs, frames):
    from ppmtrack.engine.discover import equivariance_error

    images, _ = frames
    held_out = images[1::3]  # warps drawn with a seed training never used
    found = equivariance_error(tiny_model, runs[True], held_out, n_warps=2, seed=99)
    random = equivariance_error(tiny_model, runs[False], held_out, n_warps=2, seed=99)
    assert found < random, (found, random)


def test_farthest_points_spread_out():
    from ppmtrack.engine.discover import farthest_points

    pts = np.array([[0, 0], [0.1, 0], [10, 0], [9.9, 0], [5, 8]], float)
    assert sorted(farthest_points(pts, 3)) == [0, 2, 4]


def test_warp_back_undoes_a_shift():
    import torch

    from ppmtrack.engine.discover import warp_back

    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 3, 5] = 1.0  # the view's peak, 2 cells (16 px at 64 px input) right of the original's (3, 3)
    shift = np.array([[[1.0, 0, 16.0], [0, 1.0, 0]]])  # original → view: +16 px in x
    back, valid = warp_back(maps, shift, 64)
    assert np.unravel_index(int(back[0, 0].argmax()), (8, 8)) == (3, 3)
    assert valid[0, 0, :, -2:].sum() == 0 and valid[0, 0, :, :6].all()


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    """`ppmtrack discover` on the sample with the tiny model: the proposal, its contact sheet and an engine."""
    out = tmp_path_factory.mktemp("discover")
    args = ["discover", str(SAMPLES / "sample.mp4"), "--keypoints", "2", "--frames", "5", "--model", "tiny",
            "--resolution", "64", "--steps", "3", "--candidates", "8", "--top-k", "4", "--tta-views", "1",
            "--lr", "0.05", "-o", str(out / "proposed.json"), "--engine", str(out / "found.engine")]
    assert main(args) == 0
    return out


def test_discover_writes_a_proposal_a_contact_sheet_and_an_engine(discovered):
    import cv2

    from ppmtrack.engine.engine_file import read_engine_file
    from ppmtrack.pipelines.io.annotation import read_annotation

    labels = read_annotation(discovered / "proposed.json")
    assert labels.names == ["kp01", "kp02"] and len(labels.frames) == 5
    assert np.isfinite(labels.keypoints).any()
    sheet = cv2.imread(str(discovered / "proposed.png"))
    assert sheet is not None and sheet.shape[0] > 100
    tensors, meta = read_engine_file(discovered / "found.engine")
    assert meta["keypoints"] == ["kp01", "kp02"] and tensors["keypoint_prompts"].shape[0] == 2
    assert meta["info"]["discovery"]["optimised"]


def test_proposal_round_trips_through_label_and_adapt(discovered, tiny_model, tmp_path):
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.pipelines.io.annotation import read_annotation, write_annotation
    from ppmtrack.pipelines.web.sessions import LabelSession

    proposal = discovered / "proposed.json"
    before = read_annotation(proposal)
    copy = tmp_path / "proposed.json"
    write_annotation(before, copy)
    session = LabelSession([], copy)  # what `ppmtrack label proposed.json` opens
    try:
        doc = session.document()
        assert doc["keypoints"] == before.names and len(doc["frames"]) == len(before.frames)
        # the page renames kp01 to "head" and deletes kp02 (what label.js sends after "head = kp01")
        frames = [{"video": f["video"], "frame": f["frame"], "points": {"head": f["points"]["kp01"]}}
                  for f in doc["frames"]]
        session.update({"keypoints": ["head"], "skeleton": [], "frames": frames})
    finally:
        session.close()
    edited = read_annotation(copy)
    assert edited.names == ["head"]
    np.testing.assert_allclose(edited.keypoints[:, 0], before.keypoints[:, 0], equal_nan=True, atol=1e-3)
    support = read_annotation(proposal).to_support()
    engine = Engine.adapt(support, tiny_model, AdaptConfig(resolution=64, steps=2, fg_steps=2, views_per_frame=1))
    assert engine.names == ["kp01", "kp02"]


@pytest.mark.xfail(reason="after the merge with the run-state run the discovered engine's tracked "
                          "positions come out NaN in the DLC file; open, see issue 24", strict=False)
def test_discovered_engine_tracks_the_sample_and_movement_reads_it(discovered, tmp_path):
    load_poses = pytest.importorskip("movement.io.load_poses")
    out = tmp_path / "tracks"
    assert main(["track", str(SAMPLES / "sample.mp4"), "--engine", str(discovered / "found.engine"), "-o", str(out),
                 "--stop", "6", "--no-video", "--output-format", "csv,dlc", "-q"]) == 0
    dlc_csv = [p for p in out.glob("*.csv") if p.name != "sample.csv"]
    assert dlc_csv, sorted(p.name for p in out.iterdir())
    ds = load_poses.from_dlc_file(dlc_csv[0], fps=30)
    assert list(ds.keypoints.values) == ["kp01", "kp02"] and ds.sizes["time"] == 6
    assert np.isfinite(ds.position.values).any()


@pytest.mark.parametrize("extra, message", [
    (["--keypoints", "9", "--candidates", "8"], "more than the 8 most localised"),
    (["--keypoints", "0"], "at least 1"),
    (["--keypoints", "2", "--frames", "1"], "--frames must be at least 2"),
])
def test_bad_arguments_exit_2_with_one_line_before_the_model_loads(extra, message, tmp_path, capsys, monkeypatch):
    import ppmtrack.engine.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    args = ["discover", str(SAMPLES / "sample.mp4"), "-o", str(tmp_path / "p.json"), "--model", "tiny", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ppmtrack: error:") and message in err[0]


def test_unreadable_and_still_videos_exit_2_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import cv2

    import ppmtrack.engine.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    still = tmp_path / "still.mp4"
    writer = cv2.VideoWriter(str(still), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for _ in range(12):
        writer.write(np.full((48, 64, 3), 90, np.uint8))
    writer.release()
    for video, message in ((tmp_path / "broken.mp4", "cannot be opened"), (still, "all alike")):
        assert main(["discover", str(video), "--keypoints", "2", "-o", str(tmp_path / "p.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    (tmp_path / "p.json").write_text("{}")
    assert main(["discover", str(SAMPLES / "sample.mp4"), "--keypoints", "2", "-o", str(tmp_path / "p.json")]) == 2
    assert "exists" in capsys.readouterr().err
