"""Issue 19 (track side): --resume gives the tracks of an uninterrupted run and keeps its anchors, the run state on
disk and the smoothing in windows, own outputs never taken as input, another frame selection is not "complete"."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ppmtrack.pipelines.anchors import thumbnail
from ppmtrack.pipelines.batch import expand_inputs
from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.sources import open_source
from ppmtrack.pipelines.track import ResumeError, track_video
from ppmtrack.tracker import SmoothingParams
from ppmtrack.tracker.fusion import Anchors, FlowTrack, fuse_keypoints
from ppmtrack.tracker.smoothing import smooth_on_disk

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"
STOP = 12
ANCHORED = (1, 10)  # support frames that lie in the sample: one before the interruption, one after

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory):
    """A small random engine whose info names two frames of the sample as support frames (anchors)."""
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    g = torch.Generator().manual_seed(3)
    engine = Engine(load_model("tiny"), ["a", "b"], torch.randn(2, 768, generator=g),
                    torch.randn(768, generator=g), AdaptConfig(resolution=64, layers="up"))
    source = open_source(SAMPLE, stop=max(ANCHORED) + 1)
    images = {f.index: f.image for f in source if f.index in ANCHORED}
    source.close()
    engine.info["support_frames"] = [
        {"video": SAMPLE.name, "frame": i, "points": [[40.0 + i, 50.0], [90.0, 60.0 - i]],
         "thumbnail": thumbnail(images[i]).reshape(-1).astype(int).tolist()} for i in ANCHORED]
    path = tmp_path_factory.mktemp("engine") / "anchored.engine"
    engine.save(path)
    return path


@pytest.fixture(scope="module")
def engine(engine_file):
    from ppmtrack.engine import Engine

    return Engine.load(engine_file)


def _interrupting(engine, after_calls: int):
    """A stop event set by the engine's ``after_calls``-th prediction (as Ctrl-C would between batches)."""
    halt = threading.Event()
    predict, calls = engine.predict, [0]

    def counted(frames):
        calls[0] += 1
        if calls[0] == after_calls:
            halt.set()
        return predict(frames)

    return halt, counted, predict


def test_resumed_run_gives_the_tracks_of_an_uninterrupted_run_and_keeps_its_anchors(engine, engine_file,
                                                                                      tmp_path):
    whole = track_video(SAMPLE, engine, tmp_path / "whole", stop=STOP, batch_size=2, write_video=False,
                        progress=False, engine_path=engine_file)
    assert whole.settings["anchor_frames"] == list(ANCHORED)
    halt, counted, predict = _interrupting(engine, 3)
    engine.predict = counted
    try:
        first = track_video(SAMPLE, engine, tmp_path / "out", stop=STOP, batch_size=2, write_video=False,
                            progress=False, engine_path=engine_file, stop_event=halt)
    finally:
        engine.predict = predict
    assert first.status == "interrupted" and 0 < first.frames_processed < STOP
    state_kept = (tmp_path / "out" / "sample.state").is_dir()  # what --resume reads
    resumed = track_video(SAMPLE, engine, tmp_path / "out", stop=STOP, batch_size=2, write_video=False,
                          progress=False, engine_path=engine_file, resume=True)
    assert resumed.status == "complete" and resumed.csv_positions == "rts"
    a, b = read_tracks_csv(tmp_path / "whole" / "sample.csv"), read_tracks_csv(tmp_path / "out" / "sample.csv")
    assert b.frame.tolist() == a.frame.tolist()
    np.testing.assert_allclose(b.raw_xy, a.raw_xy, atol=0.05)
    np.testing.assert_allclose(b.xy, a.xy, atol=0.1)  # every frame, before and after the interruption
    assert resumed.settings.get("anchor_frames") == list(ANCHORED)
    assert resumed.resumed["frames_before"] == first.frames_processed
    assert resumed.resumed["from_frame"] == first.last_frame + 1
    assert resumed.resumed["frames_retracked"] == 0
    assert resumed.frames_processed == STOP
    assert state_kept and not (tmp_path / "out" / "sample.state").exists()  # complete: nothing left to resume
    doc = json.loads((tmp_path / "out" / "sample.summary.json").read_text())
    assert doc["resumed"]["frames_before"] == first.frames_processed


def test_resume_without_run_state_is_refused_with_the_way_out(engine, engine_file, tmp_path):
    halt, counted, predict = _interrupting(engine, 2)
    engine.predict = counted
    try:
        track_video(SAMPLE, engine, tmp_path, stop=STOP, batch_size=2, write_video=False, progress=False,
                    engine_path=engine_file, stop_event=halt)
    finally:
        engine.predict = predict
    shutil.rmtree(tmp_path / "sample.state")
    with pytest.raises(ResumeError, match="start over without --resume"):
        track_video(SAMPLE, engine, tmp_path, stop=STOP, batch_size=2, write_video=False, progress=False,
                    engine_path=engine_file, resume=True)


def test_smoothing_on_disk_in_windows_equals_the_whole_recording_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 700, 3
    truth = np.cumsum(rng.normal(0, 2, (n, k, 2)), axis=0) + 100
    raw = truth + rng.normal(0, 3, (n, k, 2))
    raw[300:340, 1] = np.nan  # an occlusion across a window boundary
    conf = rng.uniform(0, 1, (n, k))
    flow = np.diff(truth, axis=0, prepend=truth[:1]) + rng.normal(0, 0.5, (n, k, 2))
    fb_error = rng.uniform(0, 3, (n, k))
    fb_error[::50] = np.inf
    anchor = np.full((n, k, 2), np.nan)
    anchor[[10, 500]] = truth[[10, 500]]
    time = np.arange(n) / 30.0
    params = SmoothingParams()
    expected = fuse_keypoints(raw, conf, time, FlowTrack(flow, fb_error), Anchors(np.array([10, 500]),
                              truth[[10, 500]]), params)
    rows = smooth_on_disk(lambda a, b: (raw[a:b], conf[a:b], flow[a:b], fb_error[a:b], anchor[a:b]), time, k,
                          params, tmp_path, chunk=97)
    xy, visible = rows(0, n)
    np.testing.assert_array_equal(np.isnan(xy), np.isnan(expected[0]))
    np.testing.assert_allclose(xy, expected[0], atol=1e-9)
    np.testing.assert_array_equal(visible, expected[1])


def test_own_outputs_in_a_folder_being_tracked_are_never_taken_as_input(engine, engine_file, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    video = folder / "sample.mp4"
    shutil.copy(SAMPLE, video)
    halt, counted, predict = _interrupting(engine, 2)
    engine.predict = counted
    try:
        track_video(video, engine, folder, stop=8, batch_size=2, progress=False, engine_path=engine_file,
                    stop_event=halt)
    finally:
        engine.predict = predict
    summary = track_video(video, engine, folder, stop=8, batch_size=2, progress=False, engine_path=engine_file,
                          resume=True)
    part = Path(summary.outputs["video"])
    assert part.name.startswith("sample.from") and part.is_file()
    assert (folder / "sample.ppmtrack.mp4").is_file()
    assert expand_inputs([folder]) == [str(video)]
    assert expand_inputs([str(folder / "*.mp4")]) == [str(video)]
    # renamed and moved away from its summary, an annotated video is still recognised (its container's tag)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(part, elsewhere / "renamed.mp4")
    shutil.copy(SAMPLE, elsewhere / "raw.mp4")
    assert expand_inputs([elsewhere]) == [str(elsewhere / "raw.mp4")]


def test_another_frame_selection_is_not_skipped_as_complete(engine_file, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["track", str(SAMPLE), "--engine", str(engine_file), "-o", str(out), "--no-video", "-q",
              "--batch-size", "2"]
    assert main([*common, "--stop", "4"]) == 0
    capsys.readouterr()
    assert main([*common, "--stop", "4"]) == 0  # the same request: nothing to do
    assert "skipped" in capsys.readouterr().out
    assert main([*common, "--stop", "6"]) != 0  # another request: refused with the way out, nothing lost
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "skipped" not in text and "another frame selection" in text and "--overwrite" in text
    assert len(read_tracks_csv(out / "sample.csv")) == 4
    assert main([*common, "--stop", "6", "--overwrite"]) == 0
    assert read_tracks_csv(out / "sample.csv").frame.tolist() == list(range(6))
