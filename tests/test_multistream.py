"""Several live streams in one process: cross-stream batching, and one camera dropping does not stall another."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from rtsp_server import UDP_OPTIONS, RtspRelay
from videogen import encode_index_image

from ppmtrack.engine import Engine
from ppmtrack.pipelines import sources
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.multistream import SharedBatcher, track_streams
from ppmtrack.pipelines.track import output_stem

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(quick_engine_file):
    return Engine.load(quick_engine_file)


class CountingEngine:
    """The real engine, counting its calls and the frames of each."""

    def __init__(self, engine):
        self.engine = engine
        self.sizes: list[int] = []

    def predict(self, images):
        self.sizes.append(len(images))
        return self.engine.predict(images)


def test_shared_batcher_merges_streams_and_returns_each_its_own_rows(engine):
    counting = CountingEngine(engine)
    shared = SharedBatcher(counting, max_batch=16)
    inputs = [np.stack([encode_index_image(10 * s + i) for i in range(3)]) for s in range(4)]
    results: dict[int, object] = {}
    barrier = threading.Barrier(4)

    def stream(s: int) -> None:
        barrier.wait()
        results[s] = shared.predict(inputs[s])

    threads = [threading.Thread(target=stream, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert sum(counting.sizes) == 12 and len(counting.sizes) < 4  # fewer engine calls than streams
    for s in range(4):
        alone = engine.predict(inputs[s])
        np.testing.assert_allclose(results[s].keypoints, alone.keypoints, atol=1e-3)
        np.testing.assert_allclose(results[s].confidence, alone.confidence, atol=1e-4)


def wait_until_served(url: str, timeout: float = 20.0) -> None:
    """A loaded machine may take a while before the publisher's ANNOUNCE reaches the relay."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sources.open_source(url, ffmpeg_options=UDP_OPTIONS).close()
            return
        except sources.SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_two_streams_at_once_and_one_camera_drops(relay, engine, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STALL_TIMEOUT_S", 2.0)
    other = RtspRelay(fps=25, mount="cam2")
    other.start(first_index=1000)
    wait_until_served(relay.url)
    wait_until_served(other.url)
    stop = threading.Event()
    csv_a = tmp_path / f"{output_stem(relay.url)}.csv"
    csv_b = tmp_path / f"{output_stem(other.url)}.csv"
    seen: dict[str, int] = {}

    def frames(csv) -> int:
        return (sum(1 for _ in open(csv)) - 1) // len(engine.names) if csv.exists() else 0

    def operator():
        try:
            deadline = time.monotonic() + 60
            while min(frames(csv_a), frames(csv_b)) < 10 and time.monotonic() < deadline:
                time.sleep(0.1)
            other.stop()  # camera B loses power
            seen["a_at_kill"] = frames(csv_a)
            time.sleep(4.0)
            seen["a_after_outage"], seen["b_in_outage"] = frames(csv_a), frames(csv_b)
            other.start(first_index=3000)  # and comes back
            before = frames(csv_b)
            while frames(csv_b) < before + 10 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()

    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    try:
        results = track_streams([relay.url, other.url], engine, tmp_path, stop_event=stop, batch_size=4,
                                write_video=False, progress=False, ffmpeg_options=UDP_OPTIONS,
                                max_reconnect_s=20)
    finally:
        helper.join(timeout=10)
        other.stop()
    assert set(results) == {relay.url, other.url}
    assert not any(isinstance(r, BaseException) for r in results.values()), results
    # stream A kept being tracked while B was gone
    assert seen["a_after_outage"] >= seen["a_at_kill"] + 10, seen
    doc_a = json.loads(csv_a.with_name(csv_a.name.replace(".csv", ".summary.json")).read_text())
    doc_b = json.loads(csv_b.with_name(csv_b.name.replace(".csv", ".summary.json")).read_text())
    tracks_a = read_tracks_csv(csv_a)
    assert doc_a["status"] == "interrupted" and doc_a["gaps"] == []
    assert len(tracks_a) == doc_a["frames_processed"] and np.all(np.diff(tracks_a.frame) > 0)
    assert np.isfinite(tracks_a.raw_xy).all()
    # B recorded its outage, and no frame inside it
    assert doc_b["reconnects"] >= 1 and len(doc_b["gaps"]) >= 1, doc_b
    tracks_b = read_tracks_csv(csv_b)
    gap = doc_b["gaps"][0]
    assert gap["duration_s"] >= 3.0
    assert not ((tracks_b.time > gap["start_time"] + 1e-3) & (tracks_b.time < gap["end_time"] - 1e-3)).any()
    for doc in (doc_a, doc_b):
        latency = doc["latency_s"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["max"] and latency["frames"] > 0
        # every frame read is tracked or counted as dropped (frames still queued when the run stopped: neither)
        assert doc["frames_processed"] + doc["frames_dropped"] <= doc["frames_read"], doc


def test_cli_tracks_several_urls_at_once_with_latency_in_the_batch_summary(relay, quick_engine_file, tmp_path):
    import csv
    import os
    import signal

    from ppmtrack.pipelines.cli import main

    other = RtspRelay(fps=25, mount="cam2")
    other.start()
    try:
        wait_until_served(relay.url)
        wait_until_served(other.url)
        out = tmp_path / "live"
        csvs = [out / f"{output_stem(url)}.csv" for url in (relay.url, other.url)]

        def operator():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                    p.exists() and p.read_text().count("\n") > 10 for p in csvs):
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

        threading.Thread(target=operator, daemon=True).start()
        status = main(["track", relay.url, other.url, "--engine", str(quick_engine_file), "-o", str(out),
                       "--no-video", "-q", "--rtsp-transport", "udp", "--batch-size", "4"])
    finally:
        other.stop()
    assert status == 130
    with open(out / "batch_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["interrupted", "interrupted"]
    for row in rows:
        assert int(row["frames"]) > 0 and float(row["latency_p50_s"]) > 0 and row["dropped"] != ""
