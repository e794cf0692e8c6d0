"""Frames of a file by index, numbered exactly as the tracking reader numbers them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ppmtrack.pipelines.sources.file_reader import FileReader
from ppmtrack.pipelines.sources.source import Source, VideoFrame


class FrameSet(dict):
    """Frames by index (``{index: RGB uint8 HxWx3 array}``) that also act as one array for the engine.

    ``np.asarray(frames)`` (and so ``engine.predict(frames)``) stacks the images in increasing index order
    into an (N, H, W, 3) uint8 array; :attr:`indices` gives that order. All frames of one video have the
    same size.
    """

    @property
    def indices(self) -> list[int]:
        """The frame indices in increasing order: the row order of the stacked array."""
        return sorted(self)

    @property
    def images(self) -> np.ndarray:
        """The frames stacked in :attr:`indices` order, an (N, H, W, 3) uint8 array."""
        if not self:
            raise ValueError("no frames to stack")
        return np.stack([self[i] for i in self.indices])

    def __array__(self, dtype=None, copy=None):
        images = self.images
        return images if dtype is None else images.astype(dtype)


def read_frames_at(path: str | Path, indices) -> FrameSet:
    """Decode a video file and return the frames at the given display-order indices.

    Frame N is the N-th frame in presentation order, counting from 0, numbered by the same reader as
    tracking (``open_source``), so frame N here is the picture the tracks CSV calls frame N, also in a
    damaged file, and it is turned to the file's display rotation the same way. A frame that the file does
    not hold, or that is damaged, is absent from the result.

    Returns
    -------
    FrameSet
        A dict ``{index: image}``; ``engine.predict(frames)`` takes it directly (images stacked in index
        order, see :class:`FrameSet`).

    Raises
    ------
    SourceError
        The file is missing or not a video.
    """
    wanted = sorted({int(i) for i in indices})
    out = FrameSet()
    if not wanted:
        return out
    reader = FileReader(Path(path), wanted[0], wanted[-1] + 1, 1, {})
    with Source(reader.info, queue_size=8, drop_policy="block", stop_event=None) as source:
        source.start(reader.run)
        wanted_set = set(wanted)
        for frame in source:
            if isinstance(frame, VideoFrame) and frame.index in wanted_set:
                out[frame.index] = frame.image
    return out
