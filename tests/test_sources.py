"""Frame-exact file reading with open_source: numbering, times, selection, damaged and invalid inputs."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from videogen import (
    corrupt_file,
    decode_index,
    truncate_file,
    write_audio_only,
    write_index_video,
)

from ppmtrack.pipelines.sources import Gap, SourceError, VideoFrame, open_source, read_frames_at

N_FRAMES = 60


def _vfr_times(n: int) -> list[float]:
    rng = random.Random(7)
    times, t = [], 0.0
    for _ in range(n):
        times.append(round(t, 3))
        t += rng.choice([0.01, 0.033, 0.04, 0.1, 0.25])
    return times


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("videos")
    vfr = _vfr_times(N_FRAMES)
    return {
        "h264_bframes.mp4": write_index_video(folder / "h264_bframes.mp4", N_FRAMES, bframes=3),
        "h264.mkv": write_index_video(folder / "h264.mkv", N_FRAMES),
        "h264.mov": write_index_video(folder / "h264.mov", N_FRAMES),
        "mpeg4_bframes.avi": write_index_video(folder / "mpeg4_bframes.avi", N_FRAMES, codec="mpeg4"),
        "vfr.mp4": write_index_video(folder / "vfr.mp4", N_FRAMES, frame_times=vfr),
        "vfr.mkv": write_index_video(folder / "vfr.mkv", N_FRAMES, frame_times=vfr),
    }


def _read_all(spec, **kwargs) -> tuple[list[VideoFrame], object]:
    with open_source(spec, **kwargs) as source:
        items = list(source)
    assert all(isinstance(item, VideoFrame) for item in items)
    return items, source


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "h264.mkv", "h264.mov", "mpeg4_bframes.avi",
                                  "vfr.mp4", "vfr.mkv"])
def test_file_frames_carry_their_presentation_index_and_pts_time(videos, name):
    written = videos[name]
    frames, source = _read_all(written.path)
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [decode_index(f.image) for f in frames] == list(range(N_FRAMES))
    times = np.array([f.time for f in frames])
    expected = np.array(written.times)
    if name.endswith(".avi"):
        # AVI stores no presentation times; FFmpeg's mpeg4-with-B-frames reading starts them one frame late.
        expected = expected + (times[0] - expected[0])
    np.testing.assert_allclose(times, expected, atol=1.5e-3)
    assert source.stats.frames_yielded == N_FRAMES
    assert source.stats.decode_errors == 0
    assert source.info.width == 128 and source.info.height == 96
    assert not source.info.is_live
    if not name.startswith("vfr"):
        assert source.info.n_frames in (N_FRAMES - 1, N_FRAMES, N_FRAMES + 1)
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (96, 128, 3)


def test_start_stop_stride_select_frames_by_index(videos):
    frames, _ = _read_all(videos["h264_bframes.mp4"].path, start=5, stop=40, stride=7)
    assert [f.index for f in frames] == [5, 12, 19, 26, 33]
    assert [decode_index(f.image) for f in frames] == [5, 12, 19, 26, 33]


def test_stop_past_the_end_reads_to_the_end(videos):
    frames, _ = _read_all(videos["vfr.mkv"].path, start=50, stop=1000, stride=3)
    assert [f.index for f in frames] == [50, 53, 56, 59]


def test_read_frames_at_agrees_with_open_source(videos):
    path = videos["h264_bframes.mp4"].path
    wanted = [0, 1, 2, 17, 33, 59]
    by_index = read_frames_at(path, wanted)
    frames, _ = _read_all(path)
    for frame in frames:
        if frame.index in by_index:
            np.testing.assert_array_equal(by_index[frame.index], frame.image)
    assert sorted(by_index) == wanted


def test_truncated_file_yields_the_frames_before_the_cut_without_raising(videos, tmp_path):
    src = videos["h264.mkv"].path
    for fraction in (0.5, 0.6, 0.8):
        cut = truncate_file(src, tmp_path / f"cut{fraction}.mkv", fraction)
        frames, source = _read_all(cut)
        assert 0 < len(frames) < N_FRAMES
        assert [decode_index(f.image) for f in frames] == [f.index for f in frames]
        # every frame that still decodes is yielded under its true index (B-frames cut off leave holes)
        indices = [f.index for f in frames]
        assert indices == sorted(set(indices)) and source.stats.frames_missing == N_FRAMES - len(frames)


@pytest.mark.parametrize(("name", "at"), [("h264_bframes.mp4", 0.3), ("h264_bframes.mp4", 0.5),
                                          ("h264.mkv", 0.5), ("h264.mkv", 0.7)])
def test_corrupted_file_skips_broken_frames_but_never_misnumbers(videos, tmp_path, name, at):
    src = videos[name].path
    bad = corrupt_file(src, tmp_path / f"bad{src.suffix}", at=at)
    frames, source = _read_all(bad)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    assert 0 < len(frames) < N_FRAMES
    # Damaged frames that still decode show smeared blocks; wherever the picture is clean, its index matches.
    clean = [f for f in frames if _is_clean(f.image)]
    assert len(clean) >= len(frames) - 2
    assert [decode_index(f.image) for f in clean] == [f.index for f in clean]


def _is_clean(image: np.ndarray) -> bool:
    gray = image.mean(axis=2)
    return bool(np.mean((gray > 40) & (gray < 215)) < 0.15)


def test_missing_file_raises_source_error_naming_it(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match="nope.mp4: no such file"):
        open_source(path)


def test_text_file_raises_source_error(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(SourceError, match="notes.mp4: cannot be opened as a video"):
        open_source(path)


def test_audio_only_file_raises_source_error(tmp_path):
    path = write_audio_only(tmp_path / "tone.wav")
    with pytest.raises(SourceError, match="tone.wav: has no video stream"):
        open_source(path)


def test_source_error_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        open_source(tmp_path / "missing.avi")


def test_file_frames_are_never_dropped_by_a_slow_consumer(videos):
    with open_source(videos["h264.mov"].path, queue_size=2) as source:
        indices = []
        for frame in source:
            time.sleep(0.005)
            indices.append(frame.index)
    assert indices == list(range(N_FRAMES))
    assert source.stats.frames_dropped == 0
    assert source.stats.max_queue_depth <= 2


def test_stop_event_ends_file_iteration_promptly(videos):
    stop = threading.Event()
    with open_source(videos["h264.mkv"].path, queue_size=2, stop_event=stop) as source:
        seen = []
        for item in source:
            seen.append(item)
            if len(seen) == 5:
                stop.set()
                t0 = time.monotonic()
    assert len(seen) == 5
    assert time.monotonic() - t0 < 1.0
    assert not any(isinstance(item, Gap) for item in seen)
    assert not source.decoding


def test_closing_early_stops_the_decoding_thread(videos):
    source = open_source(Path(videos["vfr.mp4"].path), queue_size=1)
    first = next(iter(source))
    source.close()
    assert first.index == 0
    assert not source.decoding
