"""The tidy tracks CSV: round trip, lost keypoints, crash safety of the growing log, atomic rewrite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from ppmtrack.pipelines.io.csv import HEADER, TracksCsvWriter, read_tracks_csv, write_tracks_csv
from ppmtrack.tracker.track import Tracks

NAMES = ["nose", "left ear", "tail,base"]  # a comma in a name must survive quoting


def make_tracks(n_frames: int = 12, seed: int = 0) -> Tracks:
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    raw = rng.uniform(0, 640, (n_frames, k, 2))
    xy = raw + rng.normal(0, 1, raw.shape)
    visible = rng.random((n_frames, k)) > 0.3
    xy[1, 1] = np.nan  # lost keypoint
    xy[3] = np.nan  # a frame with everything lost
    raw[3, 2] = np.nan
    return Tracks(
        names=list(NAMES),
        frame=np.arange(n_frames) * 2 + 5,
        time=(np.arange(n_frames) * 2 + 5) / 29.97,
        raw_xy=raw,
        confidence=rng.random((n_frames, k)),
        xy=xy,
        visible=visible,
    )


def assert_tracks_close(got: Tracks, want: Tracks) -> None:
    assert got.names == want.names
    np.testing.assert_array_equal(got.frame, want.frame)
    np.testing.assert_allclose(got.time, want.time, atol=5e-7)
    np.testing.assert_allclose(got.xy, want.xy, atol=5e-4, equal_nan=True)
    np.testing.assert_allclose(got.raw_xy, want.raw_xy, atol=5e-4, equal_nan=True)
    np.testing.assert_allclose(got.confidence, want.confidence, atol=5e-5)
    np.testing.assert_array_equal(got.visible, want.visible)


def test_frames_written_one_by_one_read_back_within_printed_precision(tmp_path):
    tracks = make_tracks()
    path = tmp_path / "tracks.csv"
    with TracksCsvWriter(path, tracks.names) as writer:
        assert path.read_text() == HEADER + "\n"  # header on disk at open
        for t in range(len(tracks)):
            writer.write_frame(tracks.frame[t], tracks.time[t], tracks.xy[t], tracks.confidence[t],
                               tracks.visible[t], tracks.raw_xy[t])
    assert_tracks_close(read_tracks_csv(path), tracks)


def test_lost_keypoint_is_written_as_empty_fields_and_read_as_nan(tmp_path):
    tracks = make_tracks()
    path = tmp_path / "tracks.csv"
    write_tracks_csv(tracks, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,time,keypoint,x,y,confidence,visible,raw_x,raw_y"
    row = lines[1 + 1 * len(NAMES) + 1].split(",")  # frame index 1, keypoint "left ear"
    assert row[0] == str(tracks.frame[1]) and row[2] == "left ear"
    assert row[3] == "" and row[4] == ""
    assert row[7] != "" and len(row[7].split(".")[1]) == 3  # raw position kept, 3 decimals
    assert '"tail,base"' in lines[3]
    got = read_tracks_csv(path)
    assert np.isnan(got.xy[1, 1]).all() and np.isnan(got.xy[3]).all()
    assert np.isfinite(got.raw_xy[3, :2]).all() and np.isnan(got.raw_xy[3, 2]).all()


def test_partial_last_line_is_ignored_with_its_incomplete_frame(tmp_path):
    tracks = make_tracks(5)
    path = tmp_path / "tracks.csv"
    write_tracks_csv(tracks, path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    # Cut in the middle of the second row of the last frame, as a killed writer would.
    cut = "".join(lines[:-2]) + lines[-2][:7]
    path.write_text(cut)
    got = read_tracks_csv(path)
    assert len(got) == 4
    np.testing.assert_array_equal(got.frame, tracks.frame[:4])


def test_wrong_header_names_the_file(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("frame,x,y\n1,2,3\n")
    with pytest.raises(ValueError, match="other.csv.*header"):
        read_tracks_csv(path)


def test_bad_field_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n0,0.0,nose,1.0,2.0,0.9,1,1.0,2.0\n1,0.1,nose,abc,2.0,0.9,1,1.0,2.0\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: x"):
        read_tracks_csv(path)


def test_atomic_rewrite_replaces_the_log_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "tracks.csv"
    causal = make_tracks(6, seed=1)
    with TracksCsvWriter(path, causal.names) as writer:
        for t in range(3):
            writer.write_frame(causal.frame[t], causal.time[t], causal.xy[t], causal.confidence[t],
                               causal.visible[t], causal.raw_xy[t])
    smoothed = make_tracks(6, seed=2)
    inode_before = os.stat(path).st_ino
    write_tracks_csv(smoothed, path)
    assert os.stat(path).st_ino != inode_before  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracks.csv"]
    assert_tracks_close(read_tracks_csv(path), smoothed)


KILLED_WRITER = r"""
import sys, numpy as np
from ppmtrack.pipelines.io.csv import TracksCsvWriter
names = ["k%d" % i for i in range(40)]
rng = np.random.default_rng(0)
with TracksCsvWriter(sys.argv[1], names) as writer:
    frame = 0
    while True:
        xy = rng.uniform(0, 1000, (40, 2))
        writer.write_frame(frame, frame / 30, xy, rng.random(40), rng.random(40) > 0.5, xy)
        print(frame, flush=True)
        frame += 1
"""


def test_killed_writer_leaves_a_readable_file_with_every_finished_frame(tmp_path):
    path = tmp_path / "tracks.csv"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        finished = -1
        for line in proc.stdout:
            finished = int(line)
            if finished >= 200:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert finished >= 200, "the writer subprocess died early"
    got = read_tracks_csv(path)
    assert len(got.names) == 40
    assert len(got) >= finished + 1
    np.testing.assert_array_equal(got.frame, np.arange(len(got)))
    assert np.isfinite(got.xy).all()  # every frame read back is complete


def test_the_skeleton_comes_back_from_the_runs_summary_or_the_caller(tmp_path):
    import json

    tracks = make_tracks()
    csv_path = tmp_path / "clip.csv"
    write_tracks_csv(tracks, csv_path)
    assert read_tracks_csv(csv_path).skeleton == []  # no summary beside it
    summary = tmp_path / "clip.summary.json"
    names = tracks.names
    summary.write_text(json.dumps({"engine": {"skeleton": [names[:2]]}, "outputs": {"csv": str(csv_path)}}))
    assert read_tracks_csv(csv_path).skeleton == [tuple(names[:2])]
    assert read_tracks_csv(csv_path, skeleton=[]).skeleton == []  # the caller's word wins
    summary.write_text(json.dumps({"engine": {"skeleton": [names[:2]]}, "outputs": {"csv": "/elsewhere/clip.csv"}}))
    assert read_tracks_csv(csv_path).skeleton == []  # a summary of another CSV is not this one's


def test_a_tracked_csv_reads_back_with_the_engines_skeleton(tiny_model, tmp_path):
    from pathlib import Path

    import torch

    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.pipelines.track import track_video

    generator = torch.Generator().manual_seed(0)
    dim = tiny_model.unet.config.cross_attention_dim
    engine = Engine(tiny_model, ["nose", "tail"], torch.randn(2, dim, generator=generator),
                    torch.randn(dim, generator=generator), AdaptConfig(resolution=64), skeleton=[("nose", "tail")])
    sample = Path(__file__).resolve().parents[1] / "samples" / "sample.mp4"
    track_video(sample, engine, tmp_path, stop=2, write_video=False, progress=False, flow="off")
    assert read_tracks_csv(tmp_path / "sample.csv").skeleton == [("nose", "tail")]
