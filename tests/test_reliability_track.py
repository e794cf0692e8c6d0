"""Reliability of tracking runs (issue 8): empty selections, a full disk, a killed run and --resume, the
engine reused by track --support and recorded by hash in every summary."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.track import OutputError, ResumeError, track_video

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"
TINY = ["--model", "tiny", "--steps", "3", "--fg-steps", "1", "--views-per-frame", "1", "--resolution", "64"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_engine():
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    g = torch.Generator().manual_seed(3)
    return Engine(load_model("tiny"), ["a", "b"], torch.randn(2, 768, generator=g), torch.randn(768, generator=g),
                  AdaptConfig(resolution=64, layers="up"))


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "quick.engine"
    _make_engine().save(path)
    return path


@pytest.fixture(scope="module")
def engine(engine_file):
    from ppmtrack.engine import Engine

    return Engine.load(engine_file)


@pytest.mark.parametrize(("options", "message"), [
    (["--start", "500"], "--start 500 is past the end of the video: it has 200 frames"),
    (["--start", "20", "--stop", "10"], "--stop 10 is not after --start 20"),
    (["--stride", "0"], "--stride must be 1 or more"),
    (["--start", "-5"], "--start must be 0 or more"),
])
def test_empty_or_invalid_selection_is_refused_before_the_model_loads(tmp_path, capsys, options, message):
    missing_engine = tmp_path / "never-loaded.engine"  # loading it would fail with another message
    status = main(["track", str(SAMPLE), "--engine", str(missing_engine), "-o", str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "never-loaded" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_summary_names_the_engine_by_hash(engine, engine_file, tmp_path):
    summary = track_video(SAMPLE, engine, tmp_path, stop=4, write_video=False, progress=False,
                          engine_path=engine_file)
    digest = hashlib.sha256(engine_file.read_bytes()).hexdigest()
    assert summary.engine["sha256"] == digest
    assert json.loads((tmp_path / "sample.summary.json").read_text())["engine"]["sha256"] == digest


KILLED_RUN = """
import sys, time
from ppmtrack.engine import Engine
from ppmtrack.pipelines.track import track_video
engine = Engine.load(sys.argv[1])
predict = engine.predict
def slow_predict(frames):
    time.sleep(0.15)
    return predict(frames)
engine.predict = slow_predict
track_video(sys.argv[2], engine, sys.argv[3], batch_size=2, stop=int(sys.argv[4]), write_video=False,
            progress=False, engine_path=sys.argv[1])
"""


def test_killed_run_tells_how_far_it_got_and_resume_finishes_it(engine, engine_file, tmp_path):
    out = tmp_path / "out"
    stop = 120
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(engine_file), str(SAMPLE), str(out),
                                str(stop)], env=os.environ | {"OMP_NUM_THREADS": "1"})
    summary_path = out / "sample.summary.json"
    deadline = time.monotonic() + 120
    doc = {}
    while time.monotonic() < deadline and process.poll() is None:
        if summary_path.is_file():
            doc = json.loads(summary_path.read_text())
            if doc["frames_processed"] >= 10:
                break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert doc.get("status") == "running" and doc["frames_processed"] >= 10, doc
    assert doc["last_frame"] is not None
    killed = read_tracks_csv(out / "sample.csv")
    assert len(killed) >= doc["frames_processed"] and len(killed) < stop
    with pytest.raises(ResumeError, match="--stop"):
        track_video(SAMPLE, engine, out, stop=50, write_video=False, progress=False,
                    engine_path=engine_file, resume=True)

    summary = track_video(SAMPLE, engine, out, batch_size=2, stop=stop, write_video=False, progress=False,
                          engine_path=engine_file, resume=True)
    assert summary.status == "complete"
    # it continues after the last frame both the CSV and the run state hold; CSV frames beyond it are re-tracked
    before = summary.resumed["frames_before"]
    assert 0 < before <= len(killed) and summary.resumed["frames_retracked"] == len(killed) - before
    assert summary.resumed["from_frame"] == int(killed.frame[before - 1]) + 1
    tracks = read_tracks_csv(out / "sample.csv")
    assert tracks.frame.tolist() == list(range(stop))
    assert summary.frames_processed == stop
    # the frames tracked before the kill keep their measurements
    np.testing.assert_allclose(tracks.raw_xy[: len(killed)], killed.raw_xy, atol=1e-3)
    with pytest.raises(ResumeError, match="complete"):
        track_video(SAMPLE, engine, out, stop=stop, write_video=False, progress=False, engine_path=engine_file,
                    resume=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not permitted'})")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # still busy: detach it


def test_full_disk_ends_the_summary_as_failed_naming_the_file(engine, engine_file, small_disk):
    with pytest.raises(OutputError, match=r"sample\.(mp4|csv): writing failed") as failure:
        track_video(SAMPLE, engine, small_disk, batch_size=4, progress=False, engine_path=engine_file)
    assert "No space left" in str(failure.value)
    doc = json.loads((small_disk / "sample.summary.json").read_text())
    assert doc["status"].startswith("failed: ") and "No space left" in doc["status"]
    assert doc["frames_processed"] > 0 and doc["last_frame"] is not None
    assert not list(small_disk.glob(".*.partial*"))  # no temporary file left (engine.atomic naming)
    tracks = read_tracks_csv(small_disk / "sample.csv")
    # the summary and the CSV agree (issue 19 item 9), and the message says where it stopped
    assert doc["frames_processed"] == len(tracks) and doc["last_frame"] == int(tracks.frame[-1])
    assert f"writing failed at frame {doc['last_frame']}: " in doc["status"]
    assert not _open_files_under(small_disk)


def _open_files_under(folder: Path) -> list[str]:
    """Files under ``folder`` this process still holds open."""
    opened = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            opened.append(target)
    return opened


def test_track_support_reuses_its_engine_when_nothing_changed_and_never_overwrites_one(tmp_path, capsys):
    support = tmp_path / "support.json"
    support.write_text((ROOT / "samples" / "support.json").read_text().replace('"sample.mp4"',
                                                                               f'"{SAMPLE}"'))
    out = tmp_path / "out"
    args = ["track", str(SAMPLE), "--support", str(support), "-o", str(out), "--stop", "3", "--no-video",
            "-q", *TINY]
    assert main(args) == 0
    engine = out / "support.engine"
    first = engine.read_bytes()
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "reusing" in printed and "skipped" in printed  # same engine: the complete results are kept
    assert engine.read_bytes() == first
    doc = json.loads((out / "sample.summary.json").read_text())
    assert doc["engine"]["sha256"] == hashlib.sha256(first).hexdigest()
    assert main([*args, "--steps", "4"]) == 2  # another setting: adapted again, results of the old engine kept
    printed = capsys.readouterr().out
    second = out / "support.2.engine"  # the first engine is never written over
    assert f"wrote {second}" in printed and f"kept {engine}" in printed
    assert engine.read_bytes() == first and second.read_bytes() != first
    assert main([*args, "--steps", "4", "--overwrite"]) == 0
    assert f"reusing {second}" in capsys.readouterr().out
    doc = json.loads((out / "sample.summary.json").read_text())
    assert doc["engine"]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    assert main([*args, "--overwrite"]) == 0  # back to the first settings: the first engine again
    assert f"reusing {engine}" in capsys.readouterr().out and engine.read_bytes() == first


class _Records(logging.Handler):
    """Collects the records of the ``ppmtrack`` logger itself (one per emitted message)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_truncated_file_run_reports_missing_frames_in_summary_and_one_warning(engine, tmp_path):
    from videogen import truncate_file, write_index_video

    full = write_index_video(tmp_path / "full.mkv", 60).path
    cut = truncate_file(full, tmp_path / "cut.mkv", 0.6)
    handler = _Records()
    logging.getLogger("ppmtrack").addHandler(handler)
    try:
        summary = track_video(cut, engine, tmp_path / "out", write_video=False, progress=False)
    finally:
        logging.getLogger("ppmtrack").removeHandler(handler)
    doc = json.loads((tmp_path / "out" / "cut.summary.json").read_text())
    assert doc["truncated"] is True
    assert 0 < doc["frames_processed"] < 60
    assert doc["frames_missing"] == 60 - doc["frames_processed"]
    warnings = [r.getMessage() for r in handler.records]
    assert len(warnings) == 1 and "truncated" in warnings[0] and f"{doc['frames_missing']} selected" in warnings[0]
    assert "the file is truncated" in summary.describe() and "frames missing" in summary.describe()


def test_rotated_video_is_tracked_and_drawn_in_its_display_orientation(engine, tmp_path):
    import av
    from videogen import encode_index_image

    path = tmp_path / "phone.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.set_display_rotation(90)
        for i in range(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(encode_index_image(i), format="rgb24")))
        container.mux(stream.encode(None))
    summary = track_video(path, engine, tmp_path / "out", progress=False)
    assert summary.input["rotation"] == 90
    assert (summary.input["width"], summary.input["height"]) == (96, 128)
    with av.open(str(tmp_path / "out" / "phone.mp4")) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (96, 128)
    tracks = read_tracks_csv(tmp_path / "out" / "phone.csv")
    assert np.nanmax(tracks.raw_xy[..., 0]) <= 96 and np.nanmax(tracks.raw_xy[..., 1]) <= 128


def test_starting_over_an_unfinished_run_points_at_resume(engine, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("ppmtrack"), "propagate", True)
    (tmp_path / "sample.summary.json").write_text(json.dumps({"status": "interrupted", "frames_processed": 5,
                                                              "last_frame": 4,
                                                              "input": {"path": str(Path(SAMPLE).resolve())}}))
    with caplog.at_level(logging.WARNING, logger="ppmtrack"):
        track_video(SAMPLE, engine, tmp_path, stop=2, write_video=False, progress=False)
    assert "stopped (interrupted) after frame 4" in caplog.text and "--resume" in caplog.text
