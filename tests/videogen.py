"""Test helper: small videos whose frames show their own index as a block code.

Each frame is a grid of big black or white blocks; block ``k`` (row-major) is white when bit ``k`` of the
frame index is set. Large flat blocks survive lossy compression, so :func:`decode_index` recovers the index by
thresholding the mean of each block's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID_ROWS = 3
GRID_COLS = 4
N_BITS = GRID_ROWS * GRID_COLS
WIDTH = 128
HEIGHT = 96


def encode_index_image(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Return an RGB uint8 image whose block pattern encodes ``index`` (0 <= index < 2**N_BITS)."""
    if not 0 <= index < 2**N_BITS:
        raise ValueError(f"index {index} does not fit in {N_BITS} bits")
    image = np.zeros((height, width, 3), dtype=np.uint8)
    bh, bw = height // GRID_ROWS, width // GRID_COLS
    for bit in range(N_BITS):
        if index >> bit & 1:
            r, c = divmod(bit, GRID_COLS)
            image[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255
    return image


def decode_index(image: np.ndarray) -> int:
    """Read back the index drawn by :func:`encode_index_image` from a decoded RGB frame."""
    height, width = image.shape[:2]
    bh, bw = height // GRID_ROWS, width // GRID_COLS
    gray = image.mean(axis=2) if image.ndim == 3 else image
    index = 0
    for bit in range(N_BITS):
        r, c = divmod(bit, GRID_COLS)
        centre = gray[r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4]
        if centre.mean() > 127:
            index |= 1 << bit
    return index


@dataclass
class WrittenVideo:
    """What :func:`write_index_video` wrote: the file and each frame's presentation time in seconds."""

    path: Path
    times: list[float]
    codec: str


def write_index_video(
    path: str | Path,
    n_frames: int,
    *,
    fps: int = 25,
    codec: str = "libx264",
    bframes: int = 2,
    frame_times: list[float] | None = None,
    time_base: Fraction | None = None,
    gop: int = 12,
) -> WrittenVideo:
    """Encode ``n_frames`` index-coded frames into ``path`` (container chosen by the suffix).

    Parameters
    ----------
    path
        Output file; ``.mp4``, ``.mkv``, ``.avi`` or ``.mov``.
    n_frames
        Number of frames; frame ``i`` shows index ``i``.
    fps
        Nominal frame rate (used for constant-rate timestamps and as the stream's declared rate).
    codec
        Encoder name, e.g. ``"libx264"`` or ``"mpeg4"``.
    bframes
        Maximum consecutive B-frames, so decode order differs from presentation order.
    frame_times
        Presentation time of each frame in seconds for variable frame rate; default ``i / fps``.
    time_base
        Stream time base; default ``1/fps`` for constant rate, ``1/90000`` when ``frame_times`` is given.
    gop
        Keyframe interval in frames.
    """
    path = Path(path)
    if frame_times is None:
        tb = time_base or Fraction(1, fps)
        pts = [round(Fraction(i, fps) / tb) for i in range(n_frames)]
    else:
        tb = time_base or Fraction(1, 90000)
        pts = [round(Fraction(t).limit_denominator(10**6) / tb) for t in frame_times]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = tb
        stream.time_base = tb
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = bframes
        if codec == "libx264":
            stream.options = {"bf": str(bframes), "preset": "ultrafast" if bframes == 0 else "veryfast"}
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(encode_index_image(i), format="rgb24")
            frame.pts = pts[i]
            frame.time_base = tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return WrittenVideo(path=path, times=[float(p * tb) for p in pts], codec=codec)


def write_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    """Write a short WAV file with a sine tone and no video stream."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        tone = (np.sin(np.arange(n) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def truncate_file(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst``, as an interrupted recording leaves it."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def corrupt_file(src: Path, dst: Path, *, at: float = 0.3, length: float = 0.04, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with random garbage over a ``length`` fraction of its bytes from ``at`` on."""
    data = bytearray(src.read_bytes())
    start, n_bytes = int(len(data) * at), max(1, int(len(data) * length))
    garbage = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8)
    data[start : start + n_bytes] = garbage.tobytes()
    dst.write_bytes(bytes(data))
    return dst
