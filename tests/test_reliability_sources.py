"""Reliability of video sources (issues 8, 9, 14): damaged and truncated files, rotation, non-video inputs,
random access numbered like tracking, readers' output fed to the engine, streams that give up."""

from __future__ import annotations

import json
import logging

import av
import cv2
import numpy as np
import pytest
import torch
from videogen import corrupt_file, decode_index, encode_index_image, truncate_file, write_index_video

from ppmtrack.pipelines.sources import FrameSet, SourceError, open_source, read_frames_at

N_FRAMES = 60


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_index_video(folder / "h264_bframes.mp4", N_FRAMES, bframes=3).path,
        "mkv": write_index_video(folder / "h264.mkv", N_FRAMES).path,
    }


class _Warnings(logging.Handler):
    """The warnings of the ``ppmtrack`` logger, one record per emitted message."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def ppmtrack_warnings():
    handler = _Warnings()
    logger = logging.getLogger("ppmtrack")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _frames(path, **kwargs):
    with open_source(path, **kwargs) as source:
        frames = list(source)
    return frames, source


@pytest.mark.parametrize(("kind", "at"), [("mp4", 0.3), ("mp4", 0.5), ("mkv", 0.5)])
def test_read_frames_at_numbers_a_damaged_file_exactly_as_tracking_does(videos, tmp_path, kind, at):
    bad = corrupt_file(videos[kind], tmp_path / f"bad.{kind}", at=at)
    tracked, _ = _frames(bad)
    by_index = read_frames_at(bad, range(N_FRAMES))
    assert sorted(by_index) == [f.index for f in tracked]
    for frame in tracked:
        np.testing.assert_array_equal(by_index[frame.index], frame.image)


def _random_engine(k: int = 3):
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    g = torch.Generator().manual_seed(1)
    return Engine(load_model("tiny"), [f"k{i}" for i in range(k)], torch.randn(k, 768, generator=g),
                  torch.randn(768, generator=g), AdaptConfig(resolution=64, layers="up"))


def test_read_frames_at_output_feeds_engine_predict_directly(videos):
    frames = read_frames_at(videos["mp4"], [7, 3])
    assert isinstance(frames, FrameSet) and frames.indices == [3, 7]
    assert np.asarray(frames).shape == (2, 96, 128, 3) and np.asarray(frames).dtype == np.uint8
    prediction = _random_engine().predict(frames)
    assert prediction.keypoints.shape == (2, 3, 2)
    assert np.isfinite(prediction.keypoints).all()


@pytest.mark.parametrize("name", ["notes.txt", "readme.nfo", "art.asc"])
def test_text_file_is_refused_as_not_a_video(tmp_path, name):
    path = tmp_path / name
    path.write_text("measurements of day 1\n" * 40)
    with pytest.raises(SourceError, match=f"{name}: cannot be opened as a video"):
        open_source(path)
    with pytest.raises(SourceError, match="cannot be opened as a video"):
        read_frames_at(path, [0])


def test_corrupt_frames_are_counted_and_a_warning_says_how_many_are_missing(videos, tmp_path, ppmtrack_warnings):
    bad = corrupt_file(videos["mp4"], tmp_path / "bad.mp4", at=0.3)
    frames, source = _frames(bad)
    stats = source.stats
    assert stats.decode_errors > 0
    assert stats.frames_missing == N_FRAMES - len(frames) > 0
    lines = [r.getMessage() for r in ppmtrack_warnings.records if "damaged file" in r.getMessage()]
    assert len(lines) == 1 and f"{stats.frames_missing} selected frames are missing" in lines[0]


@pytest.mark.parametrize("kind", ["mkv", "faststart.mp4"])
def test_truncated_file_is_reported_truncated_with_its_missing_frames(videos, tmp_path, kind, ppmtrack_warnings):
    if kind == "mkv":
        src = videos["mkv"]
    else:
        src = tmp_path / "fs.mp4"
        _write_faststart(src)
    cut = truncate_file(src, tmp_path / f"cut.{kind}", 0.5)
    frames, source = _frames(cut)
    assert 0 < len(frames) < N_FRAMES
    assert [decode_index(f.image) for f in frames] == [f.index for f in frames]
    assert source.stats.truncated
    assert source.stats.frames_missing == N_FRAMES - len(frames)
    assert "truncated" in ppmtrack_warnings.text


def _write_faststart(path):
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"bf": "0", "preset": "ultrafast", "g": "12"}
        for i in range(N_FRAMES):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(encode_index_image(i), format="rgb24")))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_display_rotation_is_applied_like_players_and_opencv(tmp_path, degrees):
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.set_display_rotation(degrees)
        for i in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(encode_index_image(i + 1), format="rgb24")))
        container.mux(stream.encode(None))
    frames, source = _frames(path)
    capture = cv2.VideoCapture(str(path))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert frames[0].image.shape == expected.shape
    assert (source.info.width, source.info.height) == (expected.shape[1], expected.shape[0])
    assert source.info.rotation == degrees
    assert np.abs(frames[0].image.astype(int) - expected).mean() < 8
    np.testing.assert_array_equal(read_frames_at(path, [0])[0], frames[0].image)


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    """``python -m http.server`` on 127.0.0.1 serving a whole mp4 (``v.mp4``, 30 frames) and one whose data ends
    right after its header (``empty.mp4``: opens, but holds no frame)."""
    import socket
    import subprocess
    import sys
    import time

    folder = tmp_path_factory.mktemp("www")
    write_index_video(folder / "v.mp4", 30)
    _write_faststart(folder / "full.mp4")
    data = (folder / "full.mp4").read_bytes()
    (folder / "empty.mp4").write_bytes(data[: data.index(b"mdat") + 4])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait()


def test_http_url_of_a_whole_file_is_read_as_a_file(web_server):
    frames, source = _frames(f"http://{web_server}/v.mp4")
    assert not source.info.is_live
    assert [f.index for f in frames] == list(range(30))
    assert [decode_index(f.image) for f in frames] == list(range(30))
    assert source.stats.reconnects == 0 and source.stats.frames_dropped == 0


def test_stream_that_reopens_without_frames_gives_up_within_the_budget(web_server, ppmtrack_warnings):
    import time

    t0 = time.monotonic()
    frames, source = _frames(f"http://user:s3cret@{web_server}/empty.mp4", live=True, max_reconnect_s=2)
    assert frames == []
    assert time.monotonic() - t0 < 2 + 8 + 5
    assert source.stats.reconnects >= 1  # every reopening is counted
    assert "giving up" in ppmtrack_warnings.text
    assert "s3cret" not in ppmtrack_warnings.text and "***@" in ppmtrack_warnings.text


def test_udp_with_nothing_sending_says_no_packets_arrived():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match="no packets arrived within 5 s") as failure:
        open_source(f"udp://127.0.0.1:{port}")
    assert "Immediate exit" not in str(failure.value)


def test_credentials_appear_in_no_output_file_message_or_warning(web_server, tmp_path, capsys):
    from rtsp_server import free_tcp_port

    from ppmtrack.pipelines.cli import main

    engine = tmp_path / "quick.engine"
    _random_engine().save(engine)
    out = tmp_path / "out"
    formats = "csv,sleap" if __import__("importlib").util.find_spec("h5py") else "csv"
    statuses = [
        main(["track", f"http://user:s3cret@{web_server}/v.mp4", "--engine", str(engine), "-o", str(out),
              "--stop", "6", "--output-format", formats]),
        main(["track", f"http://user:s3cret@{web_server}/empty.mp4", "--engine", str(engine), "-o", str(out),
              "--no-video"]),
        main(["track", f"rtsp://user:s3cret@127.0.0.1:{free_tcp_port()}/cam", "--engine", str(engine), "-o",
              str(out)]),
        main(["track", f"udp://user:s3cret@127.0.0.1:{free_tcp_port()}", "--engine", str(engine), "-o",
              str(out)]),
    ]
    captured = capsys.readouterr()
    assert statuses[0] == 0 and statuses[2] == statuses[3] == 2
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 4
    for path in written:
        assert b"s3cret" not in path.read_bytes(), path
    assert "s3cret" not in captured.out and "s3cret" not in captured.err
    assert "***@" in captured.err
    assert all("***@" in p.read_text() for p in out.glob("*.summary.json"))


PASSWORD = "p@ssW0rdX"


@pytest.mark.parametrize("url, shown", [
    (f"http://admin:{PASSWORD}@cam.local/live", "http://***@cam.local/live"),
    (f"rtsp://admin:{PASSWORD}@10.0.0.5:554/s?a=b@c", "rtsp://***@10.0.0.5:554/s?a=b@c"),
    (f"rtsp://{PASSWORD}@[::1]:554/cam", "rtsp://***@[::1]:554/cam"),
    ("rtsp://admin:pa/ssW0rdX@cam/x", "rtsp://***@cam/x"),  # an unescaped "/" cuts the authority short
    ("rtsp://cam.local:554/x@y", "rtsp://cam.local:554/x@y"),  # an "@" in the path is no password
    ("/data/mouse@2x.mp4", "/data/mouse@2x.mp4"),
])
def test_redaction_parses_the_url_and_hides_everything_before_the_last_at(url, shown):
    from ppmtrack.pipelines.sources import redact, redact_url

    assert redact_url(url) == shown
    message = "cannot open '{}': refused; retrying {}."
    assert redact(message.format(url, url)) == message.format(shown, shown)
    assert "ssW0rdX" not in redact(url) and "ssW0rdX" not in redact_url(url)


def test_password_with_an_at_sign_appears_in_no_output_file_message_or_warning(web_server, tmp_path, capsys):
    from rtsp_server import free_tcp_port

    from ppmtrack.pipelines.cli import main

    engine = tmp_path / "quick.engine"
    _random_engine().save(engine)
    out = tmp_path / "out"
    statuses = [
        main(["track", f"http://admin:{PASSWORD}@{web_server}/v.mp4", "--engine", str(engine), "-o", str(out),
              "--stop", "4", "--no-video"]),
        main(["track", f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_tcp_port()}/cam", "--engine", str(engine),
              "-o", str(out)]),
    ]
    captured = capsys.readouterr()
    assert statuses == [0, 2]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert b"ssW0rdX" not in path.read_bytes(), path
    assert "ssW0rdX" not in captured.out + captured.err and "***@" in captured.err
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    assert summary["input"]["source"] == f"http://***@{web_server}/v.mp4"
    assert summary["input"]["path"] == f"http://***@{web_server}/v.mp4"


def _mpegts(n: int = 20, size=(64, 48), fps: int = 10) -> bytes:
    import io

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            image = np.full((size[1], size[0], 3), i * 10 % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


class _SilentServer:
    """An HTTP 'camera' on 127.0.0.1: the first connection gets a short MPEG-TS stream, then nothing more while
    the connection stays open; every later connection is accepted and never answered."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/live.ts"
        self.accepted = 0
        self.connections = []
        self.data = _mpegts()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.connections.append(conn)
            if self.accepted == 1:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + self.data)

    def close(self):
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.mark.parametrize("budget", [2.0, 6.0])
def test_stream_that_accepts_but_never_sends_holds_the_reconnect_budget_and_counts_every_reconnect(budget):
    import time

    from ppmtrack.pipelines.sources import Gap

    server = _SilentServer()
    try:
        last = None
        with open_source(server.url, live=True, max_reconnect_s=budget) as source:
            for item in source:
                if not isinstance(item, Gap):
                    last = time.monotonic()
        ended = time.monotonic()
    finally:
        server.close()
    assert last is not None  # the first connection delivered frames
    assert ended - last < budget + 1.5  # the budget runs from the last frame and holds within a second or two
    assert server.accepted >= 2 and source.stats.reconnects == server.accepted - 1  # each reopening is counted
    (outage,) = source.stats.outages
    assert budget - 0.5 < outage.duration < budget + 1.5


def test_empty_and_text_files_named_mp4_get_no_moov_hint_but_a_cut_mp4_does(videos, tmp_path):
    empty = tmp_path / "rec.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("frame,x,y\n1,2,3\n" * 50)
    cut = truncate_file(videos["mp4"], tmp_path / "cut.mp4", 0.5)  # the index (moov) is written last
    for path, says in ((empty, "empty (0 bytes)"), (text, "holds text, not video")):
        with pytest.raises(SourceError, match=r"cannot be opened as a video") as failure:
            open_source(path)
        assert says in str(failure.value) and "untrunc" not in str(failure.value) and "moov" not in str(failure.value)
    with pytest.raises(SourceError, match=r"index \(moov\) was never written.*untrunc"):
        open_source(cut)
