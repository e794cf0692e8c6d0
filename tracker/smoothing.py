"""Filtering and smoothing of whole keypoint recordings.

:func:`filter_keypoints` runs the causal Kalman filter over a recording (the
numbers a live :class:`tracker.kalman.OnlineSmoother` would give);
:func:`smooth_keypoints` adds the Rauch-Tung-Striebel backward pass, so
every estimate also uses the frames after it. Both run all keypoints at once
(:mod:`tracker.fusion`, which also fuses optical flow); a keypoint's track
segments (see :func:`tracker.visibility.track_segments`) are smoothed apart.
"""

from __future__ import annotations

import numpy as np

from ppmtrack.tracker.fusion import fuse_keypoints
from ppmtrack.tracker.params import SmoothingParams


def filter_keypoints(
    raw_xy: np.ndarray,
    confidence: np.ndarray,
    time: np.ndarray,
    params: SmoothingParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Causal (forward-only) Kalman filtering of keypoint trajectories.

    Each estimate uses only the current and earlier frames, exactly as
    :class:`tracker.kalman.OnlineSmoother` fed the frames one by one.

    Parameters
    ----------
    raw_xy : np.ndarray
        (T, K, 2) measured positions in pixels; NaN where there is none.
    confidence : np.ndarray
        (T, K) engine confidence in [0, 1].
    time : np.ndarray
        (T,) frame times in seconds, strictly increasing; gaps are predicted across.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.

    Returns
    -------
    xy : np.ndarray
        (T, K, 2) filtered positions; NaN where the keypoint is lost.
    visible : np.ndarray
        (T, K) bool, True where the measurement was used.
    """
    return _run_keypoint_filters(raw_xy, confidence, time, params, smooth=False)


def smooth_keypoints(
    raw_xy: np.ndarray,
    confidence: np.ndarray,
    time: np.ndarray,
    params: SmoothingParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Offline forward-backward (Rauch-Tung-Striebel) smoothing of keypoint trajectories.

    Each estimate uses the whole track segment it belongs to, before and
    after it, so occlusions shorter than ``params.max_occluded_s`` are
    interpolated between the measurements on either side. Segments separated
    by a lost stretch are smoothed independently; the lost stretch is NaN.

    Parameters
    ----------
    raw_xy : np.ndarray
        (T, K, 2) measured positions in pixels; NaN where there is none.
    confidence : np.ndarray
        (T, K) engine confidence in [0, 1].
    time : np.ndarray
        (T,) frame times in seconds, strictly increasing; gaps are predicted across.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.

    Returns
    -------
    xy : np.ndarray
        (T, K, 2) smoothed positions; NaN where the keypoint is lost.
    visible : np.ndarray
        (T, K) bool, True where the measurement was used.
    """
    return _run_keypoint_filters(raw_xy, confidence, time, params, smooth=True)


def _run_keypoint_filters(
    raw_xy: np.ndarray,
    confidence: np.ndarray,
    time: np.ndarray,
    params: SmoothingParams | None,
    smooth: bool,
) -> tuple[np.ndarray, np.ndarray]:
    return fuse_keypoints(raw_xy, confidence, time, params=params, smooth=smooth)


SPILL_CHUNK = 8192
"""Frames per window of :func:`smooth_on_disk`: the memory it needs does not grow with the recording."""


class DiskRows:
    """A (T, ...) array in a raw file beside the run, used a window of rows at a time (memory stays flat).

    Each :meth:`window` maps only its rows; dropping the window unmaps them, so a pass over hours of frames
    holds one window in memory, not the recording.
    """

    def __init__(self, path, dtype, row_shape: tuple, n_rows: int):
        from pathlib import Path

        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.n_rows = int(n_rows)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        with open(self.path, "wb") as f:
            f.truncate(self.row_bytes * self.n_rows)

    def window(self, start: int, stop: int, mode: str = "r+") -> np.ndarray:
        """Rows ``start`` to ``stop`` (excluded), mapped from the file; writes go to the file."""
        if stop <= start:
            return np.zeros((0, *self.row_shape), self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=start * self.row_bytes,
                         shape=(stop - start, *self.row_shape))


def smooth_on_disk(read_chunk, time: np.ndarray, n_keypoints: int, params: SmoothingParams | None, workspace,
                   smooth: bool = True, chunk: int = SPILL_CHUNK):
    """:func:`tracker.fusion.fuse_keypoints` of a recording too long for memory, in windows of ``chunk`` frames.

    The filter's states go to raw files in the folder ``workspace`` (about 100 bytes per frame and keypoint);
    the Rauch-Tung-Striebel pass then runs backwards over them a window at a time. The numbers are those of
    :func:`tracker.fusion.fuse_keypoints` on the whole recording.

    Parameters
    ----------
    read_chunk : callable
        ``read_chunk(start, stop)`` → ``(raw_xy, confidence, flow_displacement, fb_error, anchor_xy)`` of those
        frames: (n, K, 2), (n, K), (n, K, 2) or None, (n, K) or None, (n, K, 2) with NaN where no anchor, or None.
    time : np.ndarray
        (T,) frame times, strictly increasing.
    n_keypoints : int
        K.
    params : SmoothingParams, optional
        Filter parameters; the defaults when omitted.
    workspace : str or Path
        An existing folder for the state files (the caller removes them).
    smooth : bool, default True
        Also run the backward pass (else the causal filter's numbers).

    Returns
    -------
    callable
        ``rows(start, stop)`` → ``(xy, visible)``: (n, K, 2) positions (NaN where lost) and (n, K) bool.
    """
    from pathlib import Path

    from ppmtrack.tracker.fusion import KeypointFilter, _rts_backward, frame_measurements

    params = params if params is not None else SmoothingParams()
    time = np.asarray(time, dtype=np.float64)
    n_frames, k = len(time), int(n_keypoints)
    if n_frames and (not np.isfinite(time).all() or np.any(np.diff(time) <= 0)):
        raise ValueError("time must be finite and strictly increasing")
    workspace = Path(workspace)
    means = DiskRows(workspace / "means.f8", np.float64, (3, k, 2), n_frames)
    covs = DiskRows(workspace / "covs.f8", np.float64, (6, k), n_frames) if smooth else None
    active = DiskRows(workspace / "active.b1", np.bool_, (k,), n_frames)
    started = DiskRows(workspace / "started.b1", np.bool_, (k,), n_frames)
    visible = DiskRows(workspace / "visible.b1", np.bool_, (k,), n_frames)
    dts = np.diff(time, prepend=time[:1])
    kf = KeypointFilter(k, params)
    for start in range(0, n_frames, chunk):
        stop = min(n_frames, start + chunk)
        raw, conf, flow, fb_error, anchor = read_chunk(start, stop)
        m = frame_measurements(raw, conf, params, flow, fb_error, anchor)
        mw, aw, sw, vw = (rows.window(start, stop) for rows in (means, active, started, visible))
        cw = covs.window(start, stop) if smooth else None
        for i in range(stop - start):
            vw[i], sw[i] = kf.step(float(time[start + i]), float(dts[start + i]), m.frame(i))
            mw[i] = kf.mean
            aw[i] = kf.active
            if smooth:
                cw[i] = kf.cov
        for w in (mw, aw, sw, vw, cw):
            if w is not None:
                w.flush()
        del mw, aw, sw, vw, cw
    if smooth:
        for stop in range(n_frames - 1, 0, -chunk):  # rows start..stop-1 smoothed from row stop (done already)
            start = max(0, stop - chunk)
            mw = means.window(start, stop + 1)
            _rts_backward(mw, covs.window(start, stop + 1, "r"), active.window(start, stop + 1, "r"),
                          started.window(start, stop + 1, "r"), dts[start:stop + 1], params.process_noise)
            mw.flush()
            del mw

    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(stop, n_frames)
        mean, act = means.window(start, stop, "r"), active.window(start, stop, "r")
        xy = np.where(act[..., None], mean[:, 0], np.nan)
        return xy, np.array(visible.window(start, stop, "r"))

    return rows
