"""Support labels with several animals per frame train one engine (engine/adapt.py with instances)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.engine.adapt import keypoint_loss
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.formats import read_labels
from ppmtrack.pipelines.sources import read_frames_at

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FRAMES = [15, 150]
QUICK = AdaptConfig(resolution=128, steps=2, fg_steps=1, views_per_frame=2, batch_size=2)


def peak(res, x, y):
    g = np.arange(res)
    return np.exp(-((g[None, :] - x) ** 2 + (g[:, None] - y) ** 2) / 2.0)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_loss_wants_a_peak_on_every_animal(loss):
    res = 16
    xy = torch.tensor([[[[4.0, 4.0]], [[11.0, 10.0]]]])  # (B=1, N=2 animals, K=1, 2)
    both = np.maximum(peak(res, 4, 4), peak(res, 11, 10))
    one = peak(res, 4, 4)
    cfg = AdaptConfig(loss=loss)
    ignore = torch.zeros((1, 1), dtype=torch.bool)

    def value(m):
        maps = torch.from_numpy(m).float()[None, None, None].clamp(1e-4, 1 - 1e-4)  # (B, L, K, R, R)
        return float(keypoint_loss(maps, torch.logit(maps) * 4, xy, ignore, cfg))

    assert value(both) < value(one)
    # a single-animal target (B, K, 2) is still accepted and prefers the one peak
    assert float(keypoint_loss(torch.from_numpy(one).float()[None, None, None].clamp(1e-4, 1 - 1e-4),
                               None if loss == "mse" else torch.logit(torch.from_numpy(one).float().clamp(
                                   1e-4, 1 - 1e-4))[None, None, None] * 4, xy[:, 0], ignore, cfg)) < value(one)


@pytest.fixture(scope="module")
def pair_truth():
    return read_annotation(SAMPLES / "pair_truth.json")


@pytest.fixture(scope="module")
def dlc_project(tmp_path_factory, pair_truth):
    """A DeepLabCut multi-animal project (CollectedData with individuals) on two frames of the pair sample."""
    pd = pytest.importorskip("pandas")
    root = tmp_path_factory.mktemp("dlc")
    folder = root / "labeled-data" / "pair"
    folder.mkdir(parents=True)
    images = read_frames_at(SAMPLES / "pair.mp4", FRAMES)
    rows = []
    for f in FRAMES:
        cv2.imwrite(str(folder / f"img{f:03d}.png"), cv2.cvtColor(images[f], cv2.COLOR_RGB2BGR))
        rows.append(f"labeled-data/pair/img{f:03d}.png")
    columns = pd.MultiIndex.from_product([["me"], pair_truth.individuals, pair_truth.names, ["x", "y"]],
                                         names=["scorer", "individuals", "bodyparts", "coords"])
    values = pair_truth.instances[FRAMES].reshape(len(FRAMES), -1)
    pd.DataFrame(values, index=rows, columns=columns).to_csv(folder / "CollectedData_me.csv")
    return folder


def test_dlc_multi_animal_labels_adapt_one_engine(dlc_project, pair_truth, tiny_model):
    labels = read_labels(dlc_project)
    assert labels.individuals == ["lizard1", "lizard2"]
    support = labels.to_support()
    np.testing.assert_allclose(support.instances(), pair_truth.instances[FRAMES], equal_nan=True)
    engine = Engine.adapt(support, tiny_model, QUICK)
    assert engine.names == pair_truth.names
    assert engine.info["adaptation"]["support_frames"] == 2
    one = read_labels(dlc_project, individual="lizard2")  # --individual still picks one animal
    assert one.instances is None
    np.testing.assert_allclose(one.keypoints, pair_truth.instances[FRAMES, 1], equal_nan=True)


def test_sleap_labels_with_two_instances_adapt_one_engine(tmp_path, pair_truth, tiny_model):
    sio = pytest.importorskip("sleap_io")
    video = sio.Video.from_filename(str(SAMPLES / "pair.mp4"))
    skeleton = sio.Skeleton(list(pair_truth.names))
    tracks = [sio.Track(name) for name in pair_truth.individuals]
    frames = [sio.LabeledFrame(video=video, frame_idx=f, instances=[
        sio.Instance.from_numpy(pair_truth.instances[f, a], skeleton=skeleton, track=tracks[a]) for a in range(2)])
        for f in FRAMES]
    path = tmp_path / "pair.slp"
    sio.save_slp(sio.Labels(frames, videos=[video], skeletons=[skeleton], tracks=tracks), str(path))
    labels = read_labels(path)
    assert labels.individuals == ["lizard1", "lizard2"]
    engine = Engine.adapt(labels.to_support(), tiny_model, QUICK)
    assert engine.names == pair_truth.names


def test_cli_adapt_track_animals_and_eval_on_the_pair_sample(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    engine = tmp_path / "pair.engine"
    assert main(["adapt", str(SAMPLES / "pair_support.json"), "--model", "tiny", "--resolution", "128",
                 "--steps", "2", "--fg-steps", "1", "--views-per-frame", "2", "-o", str(engine)]) == 0
    out = tmp_path / "out"
    assert main(["track", str(SAMPLES / "pair.mp4"), "--engine", str(engine), "--animals", "2", "--stop", "6",
                 "-o", str(out), "-q", "--output-format", "dlc"]) == 0
    printed = capsys.readouterr().out
    assert "identities (animal1, animal2)" in printed and "uncertain identity decisions" in printed
    header = (out / "pair.csv").read_text().split("\n", 1)[0]
    assert header == "frame,time,individual,keypoint,x,y,confidence,visible,raw_x,raw_y"
    assert main(["eval", str(out / "pair.csv"), str(SAMPLES / "pair_truth.json")]) == 0
    report = capsys.readouterr().out
    assert "lizard1" in report and "identity switches" in report and "PCK@0.2" in report
    # what --animals does not do is refused before any model is loaded, not ignored
    assert main(["track", str(SAMPLES / "pair.mp4"), "--engine", str(engine), "--animals", "2", "--resume",
                 "-o", str(tmp_path / "resumed"), "-q"]) == 2
    assert "--resume is not available with --animals" in capsys.readouterr().err
