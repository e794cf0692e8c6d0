"""The ppmtrack command line, end to end on the bundled sample with the untrained tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_tracks_csv

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
VIDEO = str(SAMPLES / "sample.mp4")
# Tiny adaptation: seconds, not minutes. Whether it tracks well is the engine's tests' business.
TINY = ["--model", "tiny", "--steps", "5", "--fg-steps", "2", "--views-per-frame", "2", "--resolution", "128"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """``ppmtrack adapt`` on the sample's support frames: (engine path, exit status, stdout)."""
    path = tmp_path_factory.mktemp("engine") / "lizard.engine"
    capture = tmp_path_factory.mktemp("stdout") / "adapt.txt"
    stdout = sys.stdout
    with open(capture, "w") as sys.stdout:
        try:
            status = main(["adapt", str(SAMPLES / "support.json"), "-o", str(path), *TINY])
        finally:
            sys.stdout = stdout
    return path, status, capture.read_text()


COMMANDS = [[], ["adapt"], ["track"], ["eval"], ["convert-labels"]]
if importlib.util.find_spec("ppmtrack.engine.onnx_export") is not None:
    COMMANDS.append(["export-onnx"])


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_shows_usage_and_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ppmtrack") and "example" in out


def test_adapt_track_eval_on_the_sample(adapted, tmp_path, capsys):
    engine, status, adapt_out = adapted
    assert status == 0 and engine.is_file()
    assert "keypoint loss:" in adapt_out and "→" in adapt_out
    assert "support-frame error" in adapt_out and "tail_tip" in adapt_out

    assert main(["track", VIDEO, "--engine", str(engine), "-o", str(tmp_path), "--stop", "30", "-q"]) == 0
    csv_path = tmp_path / "sample.csv"
    assert csv_path.read_text().split(",", 1)[0] == "frame"
    tracks = read_tracks_csv(csv_path)
    assert tracks.frame.tolist() == list(range(30)) and len(tracks.names) == 10
    with av.open(str(tmp_path / "sample.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 30 and (frames[0].width, frames[0].height) == (320, 240)
    summary = json.loads((tmp_path / "sample.summary.json").read_text())
    assert summary["status"] == "complete" and summary["frames_processed"] == 30
    for stage in ("decode", "inference", "smoothing", "writing"):
        assert summary["stages"][stage]["fps"] > 0, stage
    assert "complete: 30 frames" in capsys.readouterr().out

    assert main(["eval", str(csv_path), str(SAMPLES / "truth.json")]) == 0
    report = capsys.readouterr().out
    for threshold in ("PCK@0.05", "PCK@0.1", "PCK@0.2"):
        assert threshold in report


def test_every_output_format_is_written(adapted, tmp_path):
    for module in ("pandas", "tables", "h5py", "pynwb", "ndx_pose"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'ppmtrack[formats]')")
    engine = adapted[0]
    args = ["track", VIDEO, "--engine", str(engine), "-o", str(tmp_path), "--stop", "8", "--no-video", "-q",
            "--output-format", "csv,dlc,sleap,nwb"]
    assert main(args) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["sample.analysis.h5", "sample.csv", "sample.nwb", "sample.summary.json",
                       "sampleppmtrack_lizard.csv", "sampleppmtrack_lizard.h5"]


def test_sigint_stops_the_run_with_valid_outputs(adapted, tmp_path):
    engine = adapted[0]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.Popen([sys.executable, "-m", "ppmtrack.pipelines.cli", "track", VIDEO, "--engine", str(engine),
                            "-o", str(tmp_path), "--batch-size", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    csv_path = tmp_path / "sample.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.poll() is None:
        if csv_path.exists() and csv_path.read_text().count("\n") > 10:  # header + the first frame
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err.decode()
    summary = json.loads((tmp_path / "sample.summary.json").read_text())
    assert summary["status"] == "interrupted"
    tracks = read_tracks_csv(csv_path)
    assert 1 <= len(tracks) == summary["frames_processed"] < 200
    with av.open(str(tmp_path / "sample.mp4")) as container:
        assert 1 <= sum(1 for _ in container.decode(video=0)) <= len(tracks)
    assert b"Traceback" not in err


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("ppmtrack: error: ")
    return err[0]


def test_missing_or_unreadable_video_is_one_line_and_exit_2(adapted, tmp_path, capsys):
    engine = str(adapted[0])
    assert main(["track", str(tmp_path / "missing.mp4"), "--engine", engine, "-o", str(tmp_path / "a")]) == 2
    assert "no such file" in one_line_error(capsys)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    assert main(["track", str(text), "--engine", engine, "-o", str(tmp_path / "b")]) == 2
    assert "cannot be opened as a video" in one_line_error(capsys)
    # An MP4 cut short loses its index (written last), so nothing of it can be read.
    cut = tmp_path / "cut.mp4"
    data = (SAMPLES / "sample.mp4").read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    assert main(["track", str(cut), "--engine", engine, "-o", str(tmp_path / "c")]) == 2
    assert "cut.mp4" in one_line_error(capsys)


def test_unwritable_output_folder_is_one_line_and_exit_2(adapted, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["track", VIDEO, "--engine", str(adapted[0]), "-o", str(blocker / "out")]
    assert main(args) == 2
    assert "cannot write outputs" in one_line_error(capsys)


def test_corrupt_engine_file_is_one_line_and_exit_2(adapted, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.engine"
    corrupt.write_bytes(adapted[0].read_bytes()[:200])
    assert main(["track", VIDEO, "--engine", str(corrupt), "-o", str(tmp_path / "out")]) == 2
    assert "not a ppmtrack engine file" in one_line_error(capsys)


def test_convert_labels_writes_a_ppmtrack_annotation(tmp_path, capsys):
    out = tmp_path / "support.json"
    assert main(["convert-labels", str(SAMPLES / "support.json"), "-o", str(out)]) == 0
    assert read_annotation(out).names == read_annotation(SAMPLES / "support.json").names
    assert "4 frames, 10 keypoints" in capsys.readouterr().out


def test_export_onnx_then_track_with_the_onnx_backend(adapted, tmp_path):
    engine = adapted[0]
    onnx_path = tmp_path / "lizard.onnx"
    assert main(["export-onnx", str(engine), "-o", str(onnx_path)]) == 0
    assert main(["track", VIDEO, "--engine", str(onnx_path), "-o", str(tmp_path / "onnx"), "--stop", "6",
                 "--no-video", "-q"]) == 0
    assert main(["track", VIDEO, "--engine", str(engine), "-o", str(tmp_path / "torch"), "--stop", "6",
                 "--no-video", "-q", "--smooth", "causal"]) == 0
    onnx_tracks = read_tracks_csv(tmp_path / "onnx" / "sample.csv")
    torch_tracks = read_tracks_csv(tmp_path / "torch" / "sample.csv")
    assert onnx_tracks.frame.tolist() == list(range(6))
    # same engine, two runtimes: raw positions agree except where an untrained map has two near-equal peaks
    close = (abs(onnx_tracks.raw_xy - torch_tracks.raw_xy) < 0.5).all(axis=-1)
    assert close.mean() > 0.9
    summary = json.loads((tmp_path / "onnx" / "sample.summary.json").read_text())
    assert summary["status"] == "complete"


def _record_engine_loads(monkeypatch):
    """Wrap ``Engine.load`` so a test can see the speed switches each tracking engine was built with."""
    from ppmtrack.engine import Engine

    calls = []
    original = Engine.load.__func__

    def load(cls, *a, **kw):
        calls.append(kw.get("speed"))
        return original(cls, *a, **kw)

    monkeypatch.setattr(Engine, "load", classmethod(load))
    return calls


@pytest.mark.parametrize("source", ["engine", "support"])
def test_speed_switches_reach_the_engine(adapted, tmp_path, monkeypatch, source):
    calls = _record_engine_loads(monkeypatch)
    given = ["--engine", str(adapted[0])] if source == "engine" else ["--support", str(SAMPLES / "support.json"),
                                                                      *TINY]
    args = ["track", VIDEO, *given, "-o", str(tmp_path), "--stop", "4", "--no-video", "-q", "--channels-last",
            "--reuse-every", "2"]
    assert main(args) == 0
    assert read_tracks_csv(tmp_path / "sample.csv").frame.tolist() == [0, 1, 2, 3]
    # the engine that tracked (adapted just now or loaded) carries the switches asked for
    assert len(calls) == 1 and calls[0].channels_last and calls[0].reuse_every == 2
    with pytest.raises(SystemExit):
        main(["track", VIDEO, "--engine", str(adapted[0]), "-o", str(tmp_path), "--reuse-every", "x"])


def test_with_raw_subject_id_and_species_reach_the_nwb_and_sleap_files(adapted, tmp_path):
    pynwb = pytest.importorskip("pynwb")
    pytest.importorskip("ndx_pose")
    pytest.importorskip("h5py")
    args = ["track", VIDEO, "--engine", str(adapted[0]), "-o", str(tmp_path), "--stop", "4", "--no-video", "-q",
            "--output-format", "sleap,nwb", "--with-raw", "--subject-id", "lizard7", "--species", "Anolis"]
    assert main(args) == 0
    assert (tmp_path / "sample.raw.analysis.h5").is_file() and (tmp_path / "sample.raw.nwb").is_file()
    with pynwb.NWBHDF5IO(str(tmp_path / "sample.nwb"), "r") as io:
        subject = io.read().subject
        assert (subject.subject_id, subject.species) == ("lizard7", "Anolis")
