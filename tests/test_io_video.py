"""The annotated video: exact size and frame count, keypoint colours, timing, playable after a kill."""

from __future__ import annotations

import signal
import subprocess
import sys

import av
import numpy as np
import pytest

from ppmtrack.pipelines.io.video import PALETTE, AnnotatedVideoWriter

BACKGROUND = 100


def decode(path) -> tuple[list[np.ndarray], list[float]]:
    """All frames that decode, stopping quietly at a truncated end."""
    images, times = [], []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                images.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time))
    except av.error.FFmpegError:
        pass
    return images, times


def write_video(path, width, height, n_frames, xy, confidence, visible, **kwargs):
    with AnnotatedVideoWriter(path, width, height, 30, ["a", "b", "c"], **kwargs) as writer:
        for _ in range(n_frames):
            writer.write(np.full((height, width, 3), BACKGROUND, np.uint8), xy, confidence, visible)


@pytest.mark.parametrize("size", [(320, 240), (321, 241)])
def test_output_has_the_input_size_and_every_frame(tmp_path, size):
    width, height = size
    path = tmp_path / "out.mp4"
    xy = np.array([[40.0, 50.0], [160.0, 120.0], [300.0, 200.0]])
    write_video(path, width, height, 25, xy, np.ones(3), np.ones(3, bool))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name in ("h264", "mpeg4")
        assert float(container.streams.video[0].average_rate) == pytest.approx(30)
    images, _ = decode(path)
    assert len(images) == 25
    assert all(img.shape == (height, width, 3) for img in images)


def test_keypoints_are_drawn_in_their_colour_and_lost_or_weak_ones_differently(tmp_path):
    path = tmp_path / "out.mp4"
    xy = np.array([[60.0, 60.0], [160.0, 120.0], [np.nan, np.nan]])
    confidence = np.array([0.9, 0.1, 0.9])  # "b" is below min_confidence: hollow, so its centre is untouched
    write_video(path, 321, 241, 3, xy, confidence, np.array([True, True, False]), trail=0)
    image = decode(path)[0][-1].astype(int)
    palette = np.array(PALETTE, dtype=int)
    centre = image[60, 60]
    assert np.abs(centre - palette[0]).max() <= 40, centre
    assert np.argmin(np.abs(palette - centre).sum(axis=1)) == 0
    assert np.abs(image[120, 160] - BACKGROUND).max() <= 8  # hollow circle: centre is background
    ring = image[120 - 5:120 + 6, 160 - 5:160 + 6]
    assert np.abs(ring - BACKGROUND).max() > 30  # ... but the circle itself is drawn
    untouched = image[180:, :]  # nothing but the background where no keypoint is (the lost one is not drawn)
    assert np.abs(untouched - BACKGROUND).max() <= 8


def test_explicit_times_become_frame_times(tmp_path):
    path = tmp_path / "out.mp4"
    times = [0.0, 0.04, 0.1, 0.13, 0.2]
    with AnnotatedVideoWriter(path, 64, 48, 25, ["a"]) as writer:
        for t in times:
            writer.write(np.zeros((48, 64, 3), np.uint8), np.array([[10.0, 10.0]]), np.ones(1),
                         np.ones(1, bool), time=t)
    np.testing.assert_allclose(decode(path)[1], times, atol=1e-4)


def test_without_libx264_mpeg4_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    path = tmp_path / "out.mp4"
    write_video(path, 320, 240, 5, np.full((3, 2), 50.0), np.ones(3), np.ones(3, bool))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert len(decode(path)[0]) == 5
    with pytest.raises(ValueError, match="even"):
        AnnotatedVideoWriter(tmp_path / "odd.mp4", 321, 241, 30, ["a"])


KILLED_WRITER = r"""
import sys, time, numpy as np
from ppmtrack.pipelines.io.video import AnnotatedVideoWriter
writer = AnnotatedVideoWriter(sys.argv[1], 321, 241, 30, ["a", "b"], skeleton=[("a", "b")])
for i in range(int(sys.argv[2])):
    image = np.full((241, 321, 3), (i * 5) % 256, np.uint8)
    writer.write(image, np.array([[10.0 + 3 * i, 50.0], [100.0, 20.0 + i]]), np.ones(2), np.ones(2, bool))
print("written", flush=True)
time.sleep(60)
"""


def test_killed_writer_leaves_a_playable_file_with_most_frames(tmp_path):
    path = tmp_path / "killed.mp4"
    n_frames = 90
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(n_frames)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    images, _ = decode(path)
    assert len(images) >= n_frames // 2, f"only {len(images)} of {n_frames} frames survived"
    assert images[0].shape == (241, 321, 3)
