"""Live RTSP sources against a real RTSP relay on 127.0.0.1: reconnection with gaps, dropping, stopping."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from rtsp_server import UDP_OPTIONS, free_tcp_port
from videogen import decode_index

from ppmtrack.pipelines import sources
from ppmtrack.pipelines.sources import Gap, SourceError, VideoFrame, open_source


@pytest.fixture(autouse=True)
def short_stall_timeout(monkeypatch):
    monkeypatch.setattr(sources, "STALL_TIMEOUT_S", 2.0)


def test_stream_reconnects_after_the_server_restarts_and_reports_the_gap(relay):
    frames: list[VideoFrame] = []
    gaps: list[Gap] = []
    killed_at = restarted_at = None
    with open_source(relay.url, ffmpeg_options=UDP_OPTIONS, max_reconnect_s=15) as source:
        assert source.info.is_live and source.info.n_frames is None
        assert (source.info.width, source.info.height, source.info.codec) == (128, 96, "h264")
        for item in source:
            if isinstance(item, Gap):
                gaps.append(item)
                continue
            frames.append(item)
            if len(frames) == 25:
                relay.stop()
                killed_at = item.time
                time.sleep(1.0)
                relay.start(first_index=2000)
                restarted_at = source_time(source)
            if len(gaps) == 1 and len(frames) >= 50:
                break
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap.start_time >= killed_at - 0.5
    assert gap.end_time > restarted_at > gap.start_time
    before = [f for f in frames if f.time <= gap.start_time]
    after = [f for f in frames if f.time >= gap.end_time]
    assert len(before) >= 25 and len(after) >= 20
    assert len(before) + len(after) == len(frames)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    codes_before = [decode_index(f.image) for f in before]
    codes_after = [decode_index(f.image) for f in after]
    assert codes_before == sorted(codes_before) and codes_before[-1] < 2000
    assert codes_after == sorted(codes_after) and codes_after[0] >= 2000
    assert source.stats.reconnects >= 1 and source.stats.gaps == 1  # every attempt counts (some were refused)
    assert source.stats.seconds_lost == pytest.approx(gap.duration)


def source_time(source) -> float:
    """Seconds since the source's run started, on the clock its live frames use."""
    return time.monotonic() - source.started_at


def test_slow_consumer_drops_the_oldest_frames_within_the_queue_bound(relay):
    with open_source(relay.url, ffmpeg_options=UDP_OPTIONS, queue_size=3) as source:
        frames, lags = [], []
        for item in source:
            frames.append(item)
            lags.append(source.stats.frames_read - 1 - item.index)
            time.sleep(0.15)
            if len(frames) == 15:
                break
    indices = [f.index for f in frames]
    codes = [decode_index(f.image) for f in frames]
    assert source.stats.frames_dropped > 0
    assert source.stats.max_queue_depth <= 3
    assert indices == sorted(set(indices)) and indices[-1] - indices[0] > 20
    assert codes == sorted(set(codes))
    # the newest frames survive: each frame yielded is at most a queue (plus one decoding) behind
    assert max(lags[1:]) <= 3 + 1


def test_stop_event_ends_a_live_iteration_promptly(relay):
    stop = threading.Event()
    with open_source(relay.url, ffmpeg_options=UDP_OPTIONS, stop_event=stop) as source:
        threading.Timer(1.0, stop.set).start()
        n = sum(1 for _ in source)
        stopped = time.monotonic()
    assert n > 5
    assert time.monotonic() - stopped < 1.5
    assert not source.decoding


def test_unreachable_url_raises_a_clear_error_quickly():
    url = f"rtsp://127.0.0.1:{free_tcp_port()}/nothing"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="cannot open stream"):
        open_source(url, ffmpeg_options=UDP_OPTIONS)
    assert time.monotonic() - t0 < 6


def test_stream_that_never_comes_back_ends_with_a_warning(relay, caplog, monkeypatch):
    # the CLI (run earlier in the same process by other tests) stops "ppmtrack" records from reaching the root
    monkeypatch.setattr(logging.getLogger("ppmtrack"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="ppmtrack"), \
            open_source(relay.url, ffmpeg_options=UDP_OPTIONS, max_reconnect_s=2) as source:
        t0 = None
        items = []
        for item in source:
            items.append(item)
            if len(items) == 10:
                relay.stop()
                t0 = time.monotonic()
        ended = time.monotonic() - t0
    assert ended < 2.0 + 2 * sources.MAX_BACKOFF_S
    assert not any(isinstance(item, Gap) for item in items)
    assert "giving up" in caplog.text


def test_live_start_stop_stride_select_by_arrival_index(relay):
    with open_source(relay.url, ffmpeg_options=UDP_OPTIONS, start=4, stop=20, stride=5,
                     drop_policy="block") as source:
        indices = [item.index for item in source]
    assert indices == [4, 9, 14, 19]
