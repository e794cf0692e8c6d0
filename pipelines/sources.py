"""Video sources decoded with PyAV: frame-exact file reading and live streams."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def read_frames_at(path: str | Path, indices: list[int]) -> dict[int, np.ndarray]:
    """Decode a video file and return the frames at the given display-order indices as RGB uint8 arrays.

    Frame N is the N-th frame in presentation order, counting from 0, as in the tracks CSV.
    """
    wanted = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return out
