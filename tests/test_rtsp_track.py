"""Tracking a live RTSP stream end to end through a real relay on 127.0.0.1, across a disconnect."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from rtsp_server import UDP_OPTIONS

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.sources import live_reader
from ppmtrack.pipelines.track import track_video


@pytest.fixture(scope="module")
def small_engine(tiny_model, sample_support):
    """A quickly adapted engine: this test is about the stream plumbing, not accuracy."""
    cfg = AdaptConfig(resolution=128, steps=2, fg_steps=1, views_per_frame=1, batch_size=2)
    return Engine.adapt(sample_support, tiny_model, cfg)


def test_live_stream_is_tracked_across_a_reconnect(relay, small_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(live_reader, "STALL_TIMEOUT_S", 2.0)
    stop = threading.Event()
    csv = tmp_path / "127.0.0.1_{}_cam.csv".format(relay.url.split(":")[2].split("/")[0])

    def rows() -> int:
        return sum(1 for _ in open(csv)) - 1 if csv.exists() else 0

    def operator():
        """Waits for tracked frames, restarts the relay (a dropped camera), then stops the run like Ctrl-C."""
        deadline = time.monotonic() + 60
        while rows() < 10 * len(small_engine.names) and time.monotonic() < deadline:
            time.sleep(0.1)
        relay.stop()
        time.sleep(1.0)
        relay.start(first_index=2000)
        before = rows()
        deadline = time.monotonic() + 60  # reconnecting takes seconds more on a loaded machine
        while rows() < before + 10 * len(small_engine.names) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()

    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    summary = track_video(relay.url, small_engine, tmp_path, batch_size=4, write_video=True, progress=False,
                          stop_event=stop, ffmpeg_options=UDP_OPTIONS, max_reconnect_s=20)
    helper.join(timeout=5)
    doc = json.loads((tmp_path / csv.name.replace(".csv", ".summary.json")).read_text())
    assert doc["status"] == "interrupted"
    assert summary.status == "interrupted"
    tracks = read_tracks_csv(csv)
    assert len(tracks) >= 20
    assert np.all(np.diff(tracks.frame) > 0) and np.all(np.diff(tracks.time) > 0)
    assert np.isfinite(tracks.raw_xy).all()
    assert doc["reconnects"] >= 1 and len(doc["gaps"]) >= 1, doc
    gap = doc["gaps"][0]
    # no frame was invented inside the outage
    inside = (tracks.time > gap["start_time"] + 1e-3) & (tracks.time < gap["end_time"] - 1e-3)
    assert not inside.any()


def test_an_outage_the_run_ends_in_is_recorded_as_a_gap(relay, small_engine, tmp_path, monkeypatch):
    """The camera drops and never comes back: the run gives up after --max-reconnect-s and says so in its gaps."""
    monkeypatch.setattr(live_reader, "STALL_TIMEOUT_S", 2.0)
    csv = tmp_path / "127.0.0.1_{}_cam.csv".format(relay.url.split(":")[2].split("/")[0])

    def operator():
        deadline = time.monotonic() + 60
        while (not csv.exists() or len(csv.read_text().splitlines()) < 5) and time.monotonic() < deadline:
            time.sleep(0.1)
        relay.stop()

    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    summary = track_video(relay.url, small_engine, tmp_path, batch_size=4, write_video=False, progress=False,
                          ffmpeg_options=UDP_OPTIONS, max_reconnect_s=3)
    helper.join(timeout=5)
    doc = json.loads((tmp_path / csv.name.replace(".csv", ".summary.json")).read_text())
    assert summary.frames_processed >= 1
    assert len(doc["gaps"]) == 1, doc["gaps"]
    gap = doc["gaps"][0]
    assert "ended during the outage" in gap["reason"] and gap["duration_s"] >= 3
    assert gap["start_time"] >= read_tracks_csv(csv).time[-1] - 1e-3
