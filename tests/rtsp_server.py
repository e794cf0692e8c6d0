"""Test helper: a real RTSP relay on 127.0.0.1 fed by a PyAV publisher of index-coded frames.

The relay is Debian's RTSP::Server (``librtsp-server-perl``; installed by ``.ci/install-rtsp.sh``): a
publisher pushes with ANNOUNCE/RECORD on one port and clients pull with DESCRIBE/PLAY on another. It carries
RTP over UDP only, so both sides here use ``rtsp_transport=udp``.

Run as a script, this module is the publisher: ``python rtsp_server.py URL --fps 25 --first-index 0``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

UDP_OPTIONS = {"rtsp_transport": "udp"}

# RTSP::Server bound to 127.0.0.1 with its own RTP port range (the packaged rtsp-server-perl script listens on
# all addresses and always uses RTP ports from 20000, so two runs at once would collide).
RELAY_SCRIPT = """
use strict; use warnings; use AnyEvent; use RTSP::Server;
my ($client_port, $source_port, $rtp_port) = @ARGV;
$RTSP::Server::RTP_START_PORT = $rtp_port;
my $srv = RTSP::Server->new(
    client_listen_address => '127.0.0.1', source_listen_address => '127.0.0.1',
    client_listen_port => $client_port, source_listen_port => $source_port,
    rtp_start_port => $rtp_port, log_level => 0);
$srv->listen;
AnyEvent->condvar->recv;
"""


def server_installed() -> bool:
    """True if Perl's RTSP::Server (Debian package librtsp-server-perl) can be loaded."""
    if shutil.which("perl") is None:
        return False
    probe = subprocess.run(["perl", "-MRTSP::Server", "-e", "1"], capture_output=True)
    return probe.returncode == 0


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"RTSP relay did not listen on port {port} within {timeout} s")


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=5)


class RtspRelay:
    """The relay and its publisher, restartable on the same ports to simulate a camera outage."""

    def __init__(self, fps: int = 25, mount: str = "cam"):
        self.fps = fps
        self.mount = mount
        self.client_port = free_tcp_port()
        self.source_port = free_tcp_port()
        self.rtp_start_port = random.randrange(30000, 60000, 100)
        self.server: subprocess.Popen | None = None
        self.publisher: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where clients pull the stream."""
        return f"rtsp://127.0.0.1:{self.client_port}/{self.mount}"

    def start(self, first_index: int = 0) -> None:
        """Start the relay and then the publisher, whose frames count from ``first_index``."""
        self.server = subprocess.Popen(
            ["perl", "-e", RELAY_SCRIPT,
             str(self.client_port), str(self.source_port), str(self.rtp_start_port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(self.client_port, 10)
            _wait_for_port(self.source_port, 10)
        except RuntimeError:
            self.stop()
            raise
        self.publisher = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()),
             f"rtsp://127.0.0.1:{self.source_port}/{self.mount}", "--fps", str(self.fps),
             "--first-index", str(first_index)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_until_published(10.0)  # ANNOUNCE/RECORD done (a loaded machine may take seconds)
        time.sleep(0.3)  # first key frame out
        if self.publisher.poll() is not None:
            message = self.publisher.stderr.read().decode(errors="replace")
            self.stop()
            raise RuntimeError(f"publisher failed: {message}")

    def _wait_until_published(self, timeout: float) -> None:
        """Poll the relay with RTSP DESCRIBE until it serves the mount (or the publisher died, or timeout)."""
        request = f"DESCRIBE {self.url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.publisher.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=1.0) as conn:
                    conn.sendall(request)
                    if b" 200 " in conn.recv(4096).split(b"\r\n", 1)[0]:
                        return
            except OSError:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill the publisher and the relay, as a camera that loses power would vanish."""
        _stop(self.publisher)
        _stop(self.server)
        self.publisher = self.server = None

    def __enter__(self) -> RtspRelay:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def publish(url: str, fps: int, first_index: int) -> None:
    """Stream index-coded frames to ``url`` in real time until killed (frame ``k`` shows first_index + k)."""
    import av
    from videogen import HEIGHT, N_BITS, WIDTH, encode_index_image

    container = av.open(url, mode="w", format="rtsp", options=UDP_OPTIONS)
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps // 2)}
    time_base = Fraction(1, fps)
    t0 = time.monotonic()
    for k in range(10**9):
        frame = av.VideoFrame.from_ndarray(encode_index_image((first_index + k) % 2**N_BITS), format="rgb24")
        frame.pts, frame.time_base = k, time_base
        container.mux(stream.encode(frame))
        delay = t0 + (k + 1) / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=publish.__doc__)
    parser.add_argument("url")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--first-index", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    publish(args.url, args.fps, args.first_index)
