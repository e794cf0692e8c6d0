"""PNG plots of a tracks CSV with matplotlib: trajectories over a video frame, confidence and speed over time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import MissingExtraError, UsageError
from ppmtrack.tracker.track import Tracks

PLOTS_EXTRA_HINT = "plots need matplotlib: pip install 'ppmtrack[plots]'"
PLOT_KINDS = ("trajectories", "confidence", "speed")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); an ImportError naming the extra when missing."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(PLOTS_EXTRA_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int):
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(k % cmap.N) for k in range(n)]


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        pyplot().close(fig)
    return path


def speeds(tracks: Tracks) -> tuple[np.ndarray, str]:
    """(T, K) speed of each keypoint between consecutive tracked frames, and its unit.

    Pixels per second when the frame times increase, otherwise pixels per frame; the first frame and frames
    next to a lost position are NaN.
    """
    if len(tracks) < 2:
        return np.full(tracks.confidence.shape, np.nan), "px/frame"
    step = np.linalg.norm(np.diff(tracks.xy, axis=0), axis=2)
    dt, unit = np.diff(tracks.time), "px/s"
    if not (np.isfinite(dt).all() and (dt > 0).all()):
        dt, unit = np.diff(tracks.frame).astype(float), "px/frame"
    return np.concatenate([np.full((1, len(tracks.names)), np.nan), step / dt[:, None]]), unit


def plot_trajectories(tracks: Tracks, path: str | Path, background: np.ndarray | None = None) -> Path:
    """Each keypoint's path in image coordinates, drawn over ``background`` (an RGB frame) when given."""
    plt = pyplot()
    height, width = background.shape[:2] if background is not None else (None, None)
    fig, ax = plt.subplots(figsize=(8, 6) if background is None else (8, 8 * height / width + 0.6))
    if background is not None:
        ax.imshow(background, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    else:
        ax.invert_yaxis()
        ax.set_aspect("equal")
    for k, (name, c) in enumerate(zip(tracks.names, _colours(len(tracks.names)), strict=True)):
        ax.plot(tracks.xy[:, k, 0], tracks.xy[:, k, 1], color=c, lw=1, label=name, alpha=0.9)
    ax.set(xlabel="x (px)", ylabel="y (px)", title=f"trajectories, frames {tracks.frame[0]}–{tracks.frame[-1]}")
    ax.legend(fontsize=7, loc="upper right", ncol=2, framealpha=0.7)
    fig.tight_layout()
    return _save(fig, Path(path))


def _per_keypoint(tracks: Tracks, values: np.ndarray, ylabel: str, title: str, path: Path, ylim=None) -> Path:
    plt = pyplot()
    k_count = len(tracks.names)
    fig, axes = plt.subplots(k_count, 1, figsize=(10, 0.9 * k_count + 1), sharex=True, squeeze=False)
    for k, (ax, c) in enumerate(zip(axes[:, 0], _colours(k_count), strict=True)):
        ax.plot(tracks.frame, values[:, k], color=c, lw=1)
        ax.set_ylabel(tracks.names[k], rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[-1, 0].set_xlabel("frame")
    fig.suptitle(f"{title} ({ylabel})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_confidence(tracks: Tracks, path: str | Path) -> Path:
    """The engine's confidence of each keypoint over the frames, one row per keypoint."""
    return _per_keypoint(tracks, tracks.confidence, "0–1", "confidence", Path(path), ylim=(0, 1.02))


def plot_speed(tracks: Tracks, path: str | Path) -> Path:
    """Each keypoint's speed over the frames (smoothed positions), one row per keypoint."""
    values, unit = speeds(tracks)
    return _per_keypoint(tracks, values, unit, "speed", Path(path))


def _video_of(csv_path: Path) -> Path | None:
    summary = csv_path.with_name(f"{csv_path.stem}.summary.json")
    try:
        doc = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    source = (doc.get("input") or {}).get("source")
    if not source or (doc.get("input") or {}).get("live") or not Path(source).is_file():
        return None
    return Path(source)


def write_plots(csv_path: str | Path, out_dir: str | Path | None = None, video: str | Path | None = None,
                tracks: Tracks | None = None) -> list[Path]:
    """Write ``<stem>.trajectories.png``, ``<stem>.confidence.png`` and ``<stem>.speed.png`` for a tracks CSV.

    Parameters
    ----------
    csv_path : str or Path
        The tracks CSV (``ppmtrack track`` writes ``<results>/<stem>.csv``).
    out_dir : str or Path, optional
        Where the PNGs go (default: next to the CSV). Each file is written atomically.
    video : str or Path, optional
        The tracked video, whose middle tracked frame is the trajectories' background; by default the source
        recorded in ``<stem>.summary.json`` when it is a file that exists (else no background).
    tracks : Tracks, optional
        The tracks, if already in memory (else read from the CSV).

    Returns
    -------
    list of Path
        The three PNG files.
    """
    from ppmtrack.pipelines.io.csv import read_tracks_csv
    from ppmtrack.pipelines.video_frames import VideoFrames

    pyplot()
    csv_path = Path(csv_path)
    tracks = tracks if tracks is not None else read_tracks_csv(csv_path)
    if not len(tracks):
        raise UsageError(f"{csv_path}: holds no tracked frame to plot")
    out_dir = Path(out_dir) if out_dir is not None else csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    video = Path(video) if video is not None else _video_of(csv_path)
    background = None
    if video is not None:
        frames = VideoFrames(video)
        try:
            background = frames.rgb(int(tracks.frame[len(tracks) // 2]))
        except IndexError:  # the CSV does not belong to this video, or the frame does not decode
            background = None
        finally:
            frames.close()
    stem = csv_path.stem
    return [
        plot_trajectories(tracks, out_dir / f"{stem}.trajectories.png", background),
        plot_confidence(tracks, out_dir / f"{stem}.confidence.png"),
        plot_speed(tracks, out_dir / f"{stem}.speed.png"),
    ]
