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
    untouched = image[150:200, :]  # nothing but the background where no keypoint, legend or label is
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


def _closest_palette_index(colour: np.ndarray, palette: np.ndarray) -> int:
    return int(np.argmin(np.abs(palette - colour).sum(axis=1)))


def test_legend_shows_every_keypoint_colour_on_the_read_back_frame(tmp_path):
    names = ["nose", "left ear", "right ear", "neck", "tail base"]
    path = tmp_path / "out.mp4"
    lost = np.full((len(names), 2), np.nan)  # no keypoint drawn: every colour on the frame is the legend's
    with AnnotatedVideoWriter(path, 640, 480, 30, names) as writer:
        layout = writer.legend_layout()
        for _ in range(2):
            writer.write(np.full((480, 640, 3), BACKGROUND, np.uint8), lost, np.zeros(5), np.zeros(5, bool))
    image = decode(path)[0][-1].astype(int)
    palette = np.array(PALETTE[: len(names)], dtype=int)
    assert [k for k, _, _ in layout] == list(range(len(names)))
    for k, x, y in layout:
        swatch = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
        assert np.abs(swatch - palette[k]).max() <= 40, (names[k], swatch)
        assert _closest_palette_index(swatch, palette) == k
    # and each colour is found only in the legend's corner (the keypoints themselves were lost)
    for k in range(len(names)):
        near = (np.abs(image - palette[k]).max(axis=2) <= 30)
        ys, xs = np.nonzero(near)
        assert len(ys) > 0 and xs.max() < 320 and ys.max() < 240, names[k]


def test_frame_index_and_time_are_printed_bottom_left(tmp_path):
    path = tmp_path / "out.mp4"
    lost = np.full((3, 2), np.nan)
    with AnnotatedVideoWriter(path, 320, 240, 30, ["a", "b", "c"]) as writer:
        for index in (7, 1234):
            writer.write(np.full((240, 320, 3), BACKGROUND, np.uint8), lost, np.zeros(3), np.zeros(3, bool),
                         index=index, source_time=index / 30)
    first, second = (image.astype(int) for image in decode(path)[0])
    corner = np.s_[215:, :100]
    assert (first[corner] > 200).any()  # white text on a dark box
    assert (first[corner] < BACKGROUND - 30).any()
    assert np.abs(first[corner] - second[corner]).max() > 100  # "frame 7 0:00.233" vs "frame 1234 0:41.133"
    assert np.abs(first[100:200, 150:] - BACKGROUND).max() <= 8  # nothing drawn elsewhere


def test_dots_and_lines_scale_with_the_frame(tmp_path):
    sizes = {}
    for width, height in ((320, 240), (832, 746), (1920, 1080)):
        with AnnotatedVideoWriter(tmp_path / f"{width}.mp4", width, height, 30, ["a"]) as writer:
            sizes[width] = (writer.radius, writer.thickness, writer.font_scale)
    assert sizes[320][0] == 4 and sizes[832][0] == 9 and sizes[1920][0] == 14
    assert sizes[320][1] < sizes[832][1] < sizes[1920][1]
    assert sizes[320][2] < sizes[832][2] < sizes[1920][2]


def test_hollow_cut_off_is_min_confidence_and_defaults_to_the_trackers(tmp_path):
    from pathlib import Path

    from ppmtrack.tracker import SmoothingParams

    default = SmoothingParams().min_confidence
    with AnnotatedVideoWriter(tmp_path / "d.mp4", 320, 240, 30, ["a"]) as writer:
        assert writer.min_confidence == default
    docs = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    assert f"(default {default:g})" in docs and "(default 0.5)" not in docs
    xy = np.array([[160.0, 120.0]])
    centres = {}
    for cut_off in (0.2, 0.4):
        path = tmp_path / f"{cut_off}.mp4"
        with AnnotatedVideoWriter(path, 320, 240, 30, ["a"], min_confidence=cut_off, trail=0) as writer:
            writer.write(np.full((240, 320, 3), BACKGROUND, np.uint8), xy, np.array([0.3]), np.array([True]))
        centres[cut_off] = decode(path)[0][-1].astype(int)[120, 160]
    assert np.abs(centres[0.2] - np.array(PALETTE[0])).max() <= 40  # 0.3 >= 0.2: filled
    assert np.abs(centres[0.4] - BACKGROUND).max() <= 20  # 0.3 < 0.4: hollow (4:2:0 chroma blurs a little)
    assert np.abs(centres[0.4] - np.array(PALETTE[0])).max() > 100


def test_colormap_gives_deeplabcut_like_colours():
    from ppmtrack.pipelines.io.video import keypoint_colours

    jet = keypoint_colours(5, "jet")
    assert jet.shape == (5, 3)
    assert jet[0, 2] > 100 and jet[0, 0] < 50  # jet starts dark blue
    assert jet[-1, 0] > 100 and jet[-1, 2] < 50  # ... and ends dark red
    assert np.array_equal(keypoint_colours(3, None), np.array(PALETTE[:3], dtype=float))
    assert np.array_equal(keypoint_colours(3, "no-such-map"), np.array(PALETTE[:3], dtype=float))
