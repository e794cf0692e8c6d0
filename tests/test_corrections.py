"""Identity corrections of a several-animal run (pipelines/corrections.py, ``ppmtrack identities``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_track_multi import TruthEngine

from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.corrections import CorrectionError, Corrections, apply_corrections, swap_candidates
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_multi_tracks_csv
from ppmtrack.pipelines.track_multi import track_video_multi

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
HAS_NWB = all(importlib.util.find_spec(m) for m in ("pynwb", "ndx_pose"))
N = 40
SWAP_AT = 25


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    truth = read_annotation(SAMPLES / "pair_truth.json")
    out = tmp_path_factory.mktemp("corrections")
    track_video_multi(SAMPLES / "pair.mp4", TruthEngine(truth), out, animals=2, stop=N, write_video=False,
                      output_formats=["csv", "dlc", "sleap", *(["nwb"] if HAS_NWB else [])], progress=False,
                      flow="off")
    return out / "pair.csv"


@pytest.fixture
def fresh(run, tmp_path):
    """A copy of the run's folder for one test (corrections change the folder)."""
    import shutil

    shutil.copytree(run.parent, tmp_path / "run")
    return tmp_path / "run" / "pair.csv"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_sleap(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f["tracks"])  # (tracks, 2, nodes, frames)


def test_a_swap_changes_exactly_the_frames_from_n_on_in_every_output_and_can_be_undone(fresh):
    run = fresh
    before = _sha(run)
    original = read_multi_tracks_csv(run)
    fix = Corrections(run)
    written = fix.add({"op": "swap", "animal": "animal1", "other": "animal2", "from_frame": SWAP_AT})
    folder = run.parent
    assert _sha(run) == before  # the run's own CSV is never changed
    corrected = read_multi_tracks_csv(folder / "pair.corrected.csv")
    rows = original["animal1"].frame >= SWAP_AT
    for a, b in (("animal1", "animal2"), ("animal2", "animal1")):
        np.testing.assert_array_equal(corrected[a].xy[~rows], original[a].xy[~rows])
        np.testing.assert_array_equal(corrected[a].xy[rows], original[b].xy[rows])
        np.testing.assert_array_equal(corrected[a].raw_xy[rows], original[b].raw_xy[rows])
    # the SLEAP analysis file and the DeepLabCut table say the same
    sleap_before = _read_sleap(folder / "pair.analysis.h5")
    sleap_after = _read_sleap(folder / "pair.corrected.analysis.h5")
    # (the run wrote its SLEAP file from full-precision tracks, the correction from the CSV's 3 decimals)
    np.testing.assert_allclose(sleap_after[..., :SWAP_AT], sleap_before[..., :SWAP_AT], atol=1e-3)
    np.testing.assert_allclose(sleap_after[0, ..., SWAP_AT:], sleap_before[1, ..., SWAP_AT:], atol=1e-3)
    assert np.abs(sleap_after[0, ..., SWAP_AT:] - sleap_before[0, ..., SWAP_AT:]).max() > 1
    dlc = [Path(p) for p in written if p.endswith(".h5") and "analysis" not in p]
    assert dlc, written
    import pandas as pd

    table = pd.read_hdf(dlc[0])
    x1 = table.xs(("animal1", "x"), level=("individuals", "coords"), axis=1).to_numpy()
    np.testing.assert_allclose(x1[:SWAP_AT], original["animal1"].xy[:SWAP_AT, :, 0], atol=1e-3)
    np.testing.assert_allclose(x1[SWAP_AT:], original["animal2"].xy[SWAP_AT:, :, 0], atol=1e-3)
    if HAS_NWB:
        assert any(p.endswith(".nwb") for p in written)
    doc = json.loads((folder / "pair.corrections.json").read_text())
    assert doc["corrections"] == [{"op": "swap", "animal": "animal1", "other": "animal2", "from_frame": SWAP_AT}]

    assert Corrections(run).undo() == []  # undone: no correction left, no corrected file stays
    assert not (folder / "pair.corrected.csv").exists() and not (folder / "pair.corrected.analysis.h5").exists()
    assert not list(folder.glob("pair.corrected*"))
    redone = Corrections(run).redo()
    assert read_multi_tracks_csv(Path(redone[0]))["animal1"].xy[-1].tolist() == original["animal2"].xy[-1].tolist()
    Corrections(run).undo()
    assert _sha(run) == before


def test_new_animal_and_same_as(run):
    original = read_multi_tracks_csv(run)
    new = apply_corrections(original, [{"op": "new", "animal": "animal2", "from_frame": 30}])
    assert list(new) == ["animal1", "animal2", "animal3"]
    assert np.isnan(new["animal2"].xy[30:]).all() and np.isnan(new["animal3"].xy[:30]).all()
    np.testing.assert_array_equal(new["animal3"].xy[30:], original["animal2"].xy[30:])
    back = apply_corrections(new, [{"op": "same_as", "animal": "animal3", "other": "animal2", "from_frame": 30}])
    np.testing.assert_array_equal(back["animal2"].xy, original["animal2"].xy)
    with pytest.raises(CorrectionError, match="no animal 'animal9'"):
        apply_corrections(original, [{"op": "swap", "animal": "animal9", "other": "animal1", "from_frame": 3}])
    with pytest.raises(CorrectionError, match="outside the tracked frames"):
        apply_corrections(original, [{"op": "swap", "animal": "animal1", "other": "animal2", "from_frame": 999}])


def test_candidates_find_a_swap_in_the_tracks(run):
    original = read_multi_tracks_csv(run)
    swapped = apply_corrections(original, [{"op": "swap", "animal": "animal1", "other": "animal2",
                                            "from_frame": 17}])
    top = swap_candidates(swapped)[0]
    assert top["frame"] == 17 and top["animals"] == ["animal1", "animal2"] and top["reason"] in ("motion", "jump")
    assert all(c["frame"] != 17 for c in swap_candidates(original))


def test_identities_command(fresh, capsys):
    run = fresh
    assert main(["identities", str(run), "--swap", "animal1", "animal2", "--from", "20"]) == 0
    out = capsys.readouterr().out
    assert "correction: swap animal1 animal2 from frame 20" in out and "pair.corrected.csv" in out
    assert "candidate swap points" in out
    assert main(["identities", str(run), "--undo"]) == 0
    assert "corrected files removed" in capsys.readouterr().out
