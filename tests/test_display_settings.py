"""A DeepLabCut project's plotting settings (config.yaml dotsize, pcutoff, colormap) travel from the labels
through adaptation and the engine file to the annotated video; raw outputs and the NWB Subject via track_video."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppmtrack import Engine, read_labels, track_video
from ppmtrack.engine import AdaptConfig
from ppmtrack.tracker import SmoothingParams

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
REACHING = ROOT.parent / "shared" / "data" / "dlc_reaching"
COLLECTED = REACHING / "labeled-data" / "reachingvideo1" / "CollectedData_Mackenzie.csv"
DLC_DISPLAY = {"dotsize": 12, "pcutoff": 0.4, "colormap": "jet"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.skipif(not COLLECTED.is_file(), reason="../shared/data/dlc_reaching not present")
def test_dlc_config_plotting_settings_reach_the_support_set_and_survive_conversion(tmp_path):
    from ppmtrack.pipelines.io.annotation import read_annotation, write_annotation

    labels = read_labels(COLLECTED)
    assert labels.display == DLC_DISPLAY  # config.yaml: pcutoff 0.4, dotsize 12, colormap jet
    assert labels.to_support().display == DLC_DISPLAY
    write_annotation(labels, tmp_path / "support.json")
    assert read_annotation(tmp_path / "support.json").display == DLC_DISPLAY


@pytest.fixture(scope="module")
def engine_with_display(tmp_path_factory):
    labels = read_labels(SAMPLES / "support.json")
    labels.display = dict(DLC_DISPLAY)
    engine = Engine.adapt(labels.to_support(), "tiny",
                          AdaptConfig(steps=3, fg_steps=1, views_per_frame=1, batch_size=2, resolution=128))
    path = tmp_path_factory.mktemp("engine") / "reach.engine"
    engine.save(path)
    return Engine.load(path)


def test_engine_file_keeps_the_settings_and_the_video_uses_them(engine_with_display, tmp_path):
    engine = engine_with_display
    assert engine.info["display"] == DLC_DISPLAY
    summary = track_video(SAMPLES / "sample.mp4", engine, tmp_path / "a", stop=3, progress=False)
    assert summary.settings["video_style"] == {"min_confidence": 0.4, "dot_radius": 12, "colormap": "jet"}
    # an explicit --min-confidence is the hollow cut-off, whatever the project says
    summary = track_video(SAMPLES / "sample.mp4", engine, tmp_path / "b", stop=3, progress=False,
                          smoothing=SmoothingParams(min_confidence=0.3))
    assert summary.settings["video_style"]["min_confidence"] == 0.3


def test_track_video_writes_raw_files_and_the_nwb_subject(engine_with_display, tmp_path):
    pynwb = pytest.importorskip("pynwb")
    pytest.importorskip("ndx_pose")
    pytest.importorskip("h5py")
    summary = track_video(SAMPLES / "sample.mp4", engine_with_display, tmp_path, stop=4, progress=False,
                          write_video=False, output_formats=["sleap", "nwb"], with_raw=True, subject_id="lizard2",
                          species="Podarcis muralis")
    names = [Path(p).name for p in summary.outputs["formats"]]
    assert names == ["sample.analysis.h5", "sample.raw.analysis.h5", "sample.nwb", "sample.raw.nwb"]
    with pynwb.NWBHDF5IO(str(tmp_path / "sample.raw.nwb"), "r") as io:
        nwbfile = io.read()
        assert nwbfile.identifier == "lizard2" and nwbfile.subject.species == "Podarcis muralis"
        assert "raw" in nwbfile.processing["behavior"]["PoseEstimation"].description
