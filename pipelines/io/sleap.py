"""SLEAP: user-labelled frames from ``.slp`` files in, analysis HDF5 (``.analysis.h5``) out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import MissingExtraError
from ppmtrack.pipelines.io.files import FORMATS_EXTRA_HINT, TrackFileOptions
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError
from ppmtrack.tracker.track import Tracks


def _resolve_media(path: Path, filename: str) -> Path:
    """A video or image path stored in a .slp file: as stored if it exists, else by name next to the .slp."""
    stored = Path(filename)
    if stored.is_absolute() and stored.exists():
        return stored
    for candidate in (path.parent / stored, path.parent / Path(filename.replace("\\", "/")).name):
        if candidate.exists():
            return candidate
    return stored if stored.is_absolute() else path.parent / stored


def _frame_ref(path: Path, lf) -> FrameRef:
    video = lf.video
    backend = getattr(video, "backend", None)
    if getattr(backend, "has_embedded_images", False) or str(video.filename).endswith(".slp"):
        try:
            image = np.asarray(lf.image)
        except Exception as e:  # sleap-io raises backend-specific errors for broken embedded data
            raise LabelsError(
                f"{path}: cannot read the embedded image of frame {lf.frame_idx} ({e})"
            ) from None
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
        source = getattr(video, "source_video", None)  # the video the embedded frames were taken from
        name = getattr(source, "filename", None)
        return FrameRef(pixels=image.astype(np.uint8), frame=int(lf.frame_idx),
                        video=Path(str(name)) if isinstance(name, str) else None)
    if isinstance(video.filename, list):
        if not 0 <= lf.frame_idx < len(video.filename):
            raise LabelsError(
                f"{path}: frame {lf.frame_idx} is outside the image sequence of {len(video.filename)} images"
            )
        return FrameRef(image=_resolve_media(path, video.filename[lf.frame_idx]))
    return FrameRef(video=_resolve_media(path, video.filename), frame=int(lf.frame_idx))


def read_sleap(path: str | Path, track: str | None = None) -> Labels:
    """Read the user-labelled instances of a SLEAP ``.slp`` (or ``.pkg.slp``) file into Labels.

    Parameters
    ----------
    path : str or Path
        The labels file.
    track : str, optional
        Name of the track (animal) to read. By default every user-labelled instance of each frame is read:
        with several in some frame, ``Labels.instances`` holds them all (adaptation trains on all of them)
        and ``Labels.individuals`` names them by track (``instance_<i>`` for untracked instances).

    Returns
    -------
    Labels
        One frame per labelled frame that has a (matching) user instance; predicted instances are ignored.
        Node names, skeleton edges and symmetries (as flip pairs) are kept. Frames embedded in the file become
        in-memory pixels; otherwise the frame refers to the video (looked up as stored, then by file name next
        to the ``.slp``).
    """
    path = Path(path)
    sl = _load_slp(path, open_videos=True, what="SLEAP labels file")
    if track is not None and track not in [t.name for t in sl.tracks]:
        raise LabelsError(
            f"{path}: has no track {track!r}; tracks: {', '.join(t.name for t in sl.tracks) or 'none'}"
        )
    chosen = []
    for lf in sl.labeled_frames:
        users = [
            i for i in lf.user_instances if track is None or (i.track is not None and i.track.name == track)
        ]
        if users:
            chosen.append((lf, users[0]))
    if not chosen:
        which = f" of track {track!r}" if track is not None else ""
        raise LabelsError(
            f"{path}: no user-labelled instances{which} (only predictions or nothing); label some "
            "frames in SLEAP first"
        )
    skeleton = chosen[0][1].skeleton
    if any(
        inst.skeleton is not skeleton and inst.skeleton.node_names != skeleton.node_names
        for _, inst in chosen
    ):
        raise LabelsError(f"{path}: the labelled instances use more than one skeleton; ppmtrack needs one")
    names, edges, flip_pairs = _skeleton_parts(skeleton)
    keypoints = np.stack([inst.numpy(invisible_as_nan=True) for _, inst in chosen]).astype(np.float64)
    individuals, instances = _all_user_instances(chosen) if track is None else ([], None)
    return Labels(
        names=names,
        frames=[_frame_ref(path, lf) for lf, _ in chosen],
        keypoints=keypoints,
        skeleton=edges,
        flip_pairs=flip_pairs,
        source=path,
        individuals=individuals,
        instances=instances,
    )


def _skeleton_parts(skeleton) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """Node names, edges and symmetries (as sorted flip pairs) of a sleap-io Skeleton."""
    flip_pairs = []
    for sym in getattr(skeleton, "symmetries", []):
        a, b = sorted(n.name for n in sym.nodes)
        if (a, b) not in flip_pairs:
            flip_pairs.append((a, b))
    return list(skeleton.node_names), [(e.source.name, e.destination.name) for e in skeleton.edges], flip_pairs


def _load_slp(path: Path, open_videos: bool, what: str):
    """``sleap_io.load_slp`` with the errors a user can act on (missing package, missing or malformed file)."""
    try:
        import sleap_io
    except ImportError:
        raise MissingExtraError(f"{path}: reading SLEAP files needs sleap-io; {FORMATS_EXTRA_HINT}") from None
    if not path.is_file():
        raise LabelsError(f"{path}: no such {what}")
    try:
        return sleap_io.load_slp(str(path), open_videos=open_videos)
    except Exception as e:  # sleap-io and h5py raise many types for malformed files
        raise LabelsError(f"{path}: not a readable SLEAP .slp file ({type(e).__name__}: {e})") from None


def read_sleap_skeleton(path: str | Path) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """Node names, edges and flip pairs of the first skeleton of a SLEAP file, labelled or not (e.g. predictions)."""
    path = Path(path)
    sl = _load_slp(path, open_videos=False, what="SLEAP file")
    if not sl.skeletons:
        raise LabelsError(f"{path}: defines no skeleton")
    return _skeleton_parts(sl.skeletons[0])


def _all_user_instances(chosen) -> tuple[list[str], np.ndarray | None]:
    """Every user instance of the chosen frames, by track name (else by position): (names, (F, N, K, 2))."""
    per_frame = [[i for i in lf.user_instances] for lf, _ in chosen]
    if max(len(users) for users in per_frame) < 2:
        return [], None
    names: list[str] = []
    placed = []
    for users in per_frame:
        row = {}
        for j, inst in enumerate(users):
            name = inst.track.name if inst.track is not None else f"instance_{j}"
            while name in row:  # two untracked or same-track instances in one frame
                name += "_"
            row[name] = inst.numpy(invisible_as_nan=True)
            if name not in names:
                names.append(name)
        placed.append(row)
    k = len(chosen[0][1].skeleton.node_names)
    instances = np.full((len(chosen), len(names), k, 2), np.nan)
    for f, row in enumerate(placed):
        for name, xy in row.items():
            instances[f, names.index(name)] = xy
    return names, instances


def write_sleap_analysis(
    tracks: Tracks,
    path: str | Path,
    *,
    engine_name: str,
    video_path: str | Path | None = None,
    fps: float | None = None,
    raw: bool = False,
) -> Path:
    """Write tracks as a SLEAP analysis HDF5 file, laid out as SLEAP's own export (the "matlab" ordering).

    Parameters
    ----------
    tracks : Tracks
        The trajectories; the smoothed ``xy`` is written, ``confidence`` becomes ``point_scores``.
    path : str or Path
        Output file, conventionally ``<video stem>.analysis.h5``.
    engine_name : str
        The engine's name, stored in ``provenance``.
    video_path : str or Path, optional
        The tracked video, stored as ``video_path``.
    fps : float, optional
        Frame rate, stored in ``provenance``.
    raw : bool
        Write the engine's raw measurements (``raw_xy``, before smoothing) instead of the smoothed ``xy``
        (conventionally to ``<video stem>.raw.analysis.h5``); ``provenance`` says which.

    Returns
    -------
    Path
        The file written. Datasets: ``tracks`` (1, 2, n_nodes, n_frames), ``track_occupancy`` (n_frames, 1),
        ``point_scores`` (1, n_nodes, n_frames), ``instance_scores`` and ``tracking_scores`` (1, n_frames),
        ``node_names``, ``track_names``, ``edge_names``, ``edge_inds``, ``video_path``, ``video_ind``,
        ``labels_path`` and ``provenance``. Frames run from 0 to the last tracked frame (column N is video
        frame N); untracked frames and lost keypoints are NaN.
    """
    path = Path(path)
    try:
        import h5py
    except ImportError:
        raise MissingExtraError(f"{path}: writing SLEAP analysis files needs h5py; {FORMATS_EXTRA_HINT}") from None
    n_frames = int(tracks.frame.max()) + 1 if len(tracks) else 0
    names = list(tracks.names)
    xy = np.full((n_frames, len(names), 2), np.nan)
    xy[tracks.frame] = tracks.raw_xy if raw else tracks.xy
    scores = np.full((n_frames, len(names)), np.nan)
    scores[tracks.frame] = tracks.confidence
    present = np.isfinite(xy).all(axis=2)
    occupied = present.any(axis=1)
    instance_scores = np.full(n_frames, np.nan)
    instance_scores[occupied] = [scores[f][present[f]].mean() for f in np.flatnonzero(occupied)]
    index = {n: k for k, n in enumerate(names)}
    edges = [(a, b) for a, b in tracks.skeleton]
    provenance = {"software": "ppmtrack", "engine": engine_name, "fps": fps,
                  "positions": "raw" if raw else "smoothed"}
    datasets = {
        "tracks": (xy.transpose(2, 1, 0)[np.newaxis], '["track", "xy", "node", "frame"]'),
        "track_occupancy": (occupied.astype(np.uint8)[:, np.newaxis], '["frame", "track"]'),
        "point_scores": (scores.T[np.newaxis], '["track", "node", "frame"]'),
        "instance_scores": (instance_scores[np.newaxis], '["track", "frame"]'),
        "tracking_scores": (np.full((1, n_frames), np.nan), '["track", "frame"]'),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, (data, dims) in datasets.items():
            f.create_dataset(key, data=data, compression="gzip", compression_opts=9).attrs["dims"] = dims
        f.create_dataset("track_names", data=np.array([b"track_0"]))
        f.create_dataset("node_names", data=np.array([n.encode() for n in names]))
        f.create_dataset(
            "edge_names",
            data=np.array([(a.encode(), b.encode()) for a, b in edges], dtype="S").reshape(len(edges), 2),
        )
        f.create_dataset(
            "edge_inds",
            data=np.array([(index[a], index[b]) for a, b in edges], dtype=np.int64).reshape(
                len(edges), 2
            ),
        )
        f.create_dataset("video_path", data=str(video_path) if video_path is not None else "")
        f.create_dataset("video_ind", data=0)
        f.create_dataset("labels_path", data="")
        f.create_dataset("provenance", data=json.dumps(provenance))
        f.attrs["preset"] = "matlab"
        f.attrs["format"] = "analysis"
    return path


def write_sleap_analysis_multi(tracks: dict[str, Tracks], path: str | Path, *, engine_name: str,
                               video_path: str | Path | None = None, fps: float | None = None) -> Path:
    """Write several animals' tracks (individual name → Tracks, one frame axis) as one SLEAP analysis HDF5.

    The file is :func:`write_sleap_analysis`'s with one track per animal: ``tracks`` (n_tracks, 2, n_nodes,
    n_frames), ``track_occupancy`` (n_frames, n_tracks), ``point_scores``, ``instance_scores``,
    ``tracking_scores`` and ``track_names`` (the individuals' names).
    """
    import h5py

    path = Path(path)
    names = list(tracks)
    first = tracks[names[0]]
    with atomic_path(path) as tmp:
        write_sleap_analysis(first, tmp, engine_name=engine_name, video_path=video_path, fps=fps)
        n_frames = int(first.frame.max()) + 1 if len(first) else 0
        xy = np.full((len(names), n_frames, len(first.names), 2), np.nan)
        scores = np.full((len(names), n_frames, len(first.names)), np.nan)
        for a, animal in enumerate(tracks.values()):
            xy[a, animal.frame], scores[a, animal.frame] = animal.xy, animal.confidence
        present = np.isfinite(xy).all(axis=3)
        with np.errstate(invalid="ignore"):
            instance = np.where(present.any(axis=2), np.nansum(np.where(present, scores, 0), axis=2)
                                / present.sum(axis=2), np.nan)
        data = {"tracks": xy.transpose(0, 3, 2, 1), "track_occupancy": present.any(axis=2).T.astype(np.uint8),
                "point_scores": scores.transpose(0, 2, 1), "instance_scores": instance,
                "tracking_scores": np.full((len(names), n_frames), np.nan)}
        with h5py.File(tmp, "r+") as f:
            for key, values in data.items():
                dims = f[key].attrs["dims"]
                del f[key]
                f.create_dataset(key, data=values, compression="gzip", compression_opts=9).attrs["dims"] = dims
            del f["track_names"]
            f.create_dataset("track_names", data=np.array([n.encode() for n in names]))
    return path


def write_sleap_files(tracks: Tracks, out_dir: str | Path, stem: str, options: TrackFileOptions,
                      raw: bool = False) -> list[Path]:
    """The registry's writer of one animal: :func:`write_sleap_analysis` to ``<stem>.analysis.h5``
    (``<stem>.raw.analysis.h5`` with ``raw``)."""
    tag = ".raw" if raw else ""
    return [write_sleap_analysis(tracks, Path(out_dir) / f"{stem}{tag}.analysis.h5", engine_name=options.engine_name,
                                 video_path=options.video_path, fps=options.fps, raw=raw)]


def write_sleap_files_multi(tracks: dict[str, Tracks], out_dir: str | Path, stem: str,
                            options: TrackFileOptions) -> list[Path]:
    """The registry's writer of several animals: :func:`write_sleap_analysis_multi` to ``<stem>.analysis.h5``."""
    return [write_sleap_analysis_multi(tracks, Path(out_dir) / f"{stem}.analysis.h5", engine_name=options.engine_name,
                                       video_path=options.video_path, fps=options.fps)]
