"""NWB: tracks out as ndx-pose ``PoseEstimation`` in the "behavior" processing module."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import MissingExtraError
from ppmtrack.pipelines.io.files import FORMATS_EXTRA_HINT, TrackFileOptions
from ppmtrack.tracker.track import Tracks

DEFAULT_SUBJECT_ID = "individual_0"  # movement's name for the one animal of a single-animal file
# Where (0, 0) lies: the code's convention (engine.localize, pipelines.labels): pixel centres at integers.
REFERENCE_FRAME = ("(0, 0) is the centre of the top-left pixel of the video frame (so the frame spans "
                   "-0.5 to width - 0.5); x to the right, y down.")


def write_nwb(
    tracks: Tracks,
    path: str | Path,
    *,
    engine_name: str,
    video_path: str | Path | None = None,
    fps: float | None = None,
    session_start_time: datetime.datetime | None = None,
    subject_id: str | None = None,
    species: str | None = None,
    raw: bool = False,
) -> Path:
    """Write tracks as an NWB file with the ndx-pose extension, readable by pynwb, movement and sleap-io.

    Parameters
    ----------
    tracks : Tracks
        The trajectories: one ``PoseEstimationSeries`` per keypoint, with the smoothed ``xy`` as data (T, 2)
        in pixels (NaN where lost; ``raw_xy`` with ``raw=True``), ``confidence`` (T,) and the tracks'
        ``time`` as timestamps in seconds.
    path : str or Path
        Output ``.nwb`` file.
    engine_name : str
        The engine's name; the scorer is ``ppmtrack_<engine_name>``.
    video_path : str or Path, optional
        The tracked video. With ``fps`` it is linked as the ``source_video`` (an external-file ImageSeries in
        acquisition); it is always named in the descriptions.
    fps : float, optional
        The video's frame rate, for the ImageSeries (its frame count is taken as the last tracked frame + 1).
    session_start_time : datetime, optional
        When the recording started (timezone-aware). ppmtrack cannot know it; by default the video file's
        modification time is used, or the current time when there is no video file. Set it for DANDI.
    subject_id : str, optional
        The animal's ID, written as the NWB ``Subject.subject_id`` and as the file's ``identifier``, which
        movement uses as the individual's name (as movement's own NWB export does). Default
        ``"individual_0"``, the name movement gives the animal of a single-animal DeepLabCut file.
    species : str, optional
        ``Subject.species``, e.g. "Mus musculus" (DANDI asks for the Latin binomial or an NCBI taxonomy link).
    raw : bool
        Write the engine's raw measurements (``Tracks.raw_xy``, before smoothing) instead of the smoothed
        positions; the series descriptions say which.

    Returns
    -------
    Path
        The file written: an NWBFile with a ``Subject`` and a "behavior" processing module holding a
        ``Skeletons`` container (one ``Skeleton`` named "subject", linked to the Subject) and a
        ``PoseEstimation`` named "PoseEstimation".
    """
    path = Path(path)
    try:
        import ndx_pose
        import pynwb
    except ImportError as e:
        raise MissingExtraError(
            f"{path}: writing NWB needs pynwb and ndx-pose ({e.name} is missing); {FORMATS_EXTRA_HINT}"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        ppmtrack_version = version("ppmtrack")
    except PackageNotFoundError:
        ppmtrack_version = "unknown"
    scorer = "ppmtrack_" + re.sub(r"[^A-Za-z0-9._-]", "_", engine_name)
    video = Path(video_path) if video_path is not None else None
    if session_start_time is None:
        stamp = video.stat().st_mtime if video is not None and video.is_file() else None
        session_start_time = (
            datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
            if stamp is not None
            else datetime.datetime.now(datetime.timezone.utc)
        )
    what = f"video {video.name}" if video is not None else "a video"
    positions = "raw measurements (not smoothed)" if raw else "smoothed positions"
    individual = subject_id or DEFAULT_SUBJECT_ID
    subject = pynwb.file.Subject(subject_id=individual, species=species,
                                 description="The animal tracked by ppmtrack.")
    nwbfile = pynwb.NWBFile(
        session_description=f"Keypoint tracks ({positions}) of {what}, estimated by ppmtrack ({scorer}).",
        identifier=individual,
        session_start_time=session_start_time,
        subject=subject,
    )
    source_video = None
    if video is not None and fps:
        source_video = pynwb.image.ImageSeries(
            name="video",
            description=f"The tracked video {video}",
            external_file=[str(video)],
            format="external",
            starting_frame=[0],
            rate=float(fps),
            unit="n.a.",
            num_samples=int(tracks.frame.max()) + 1 if len(tracks) else 0,
        )
        nwbfile.add_acquisition(source_video)
    index = {n: k for k, n in enumerate(tracks.names)}
    skeleton = ndx_pose.Skeleton(
        name="subject",
        nodes=list(tracks.names),
        edges=np.array([(index[a], index[b]) for a, b in tracks.skeleton], dtype=np.uint8).reshape(-1, 2),
        subject=subject,
    )
    data = tracks.raw_xy if raw else tracks.xy
    series = [
        ndx_pose.PoseEstimationSeries(
            name=name,
            description=(f"Position of {name} (the engine's raw measurement, before smoothing)." if raw else
                         f"Position of {name} (smoothed; NaN where ppmtrack lost it)."),
            data=data[:, k, :],
            unit="pixels",
            reference_frame=REFERENCE_FRAME,
            timestamps=tracks.time,
            confidence=tracks.confidence[:, k],
            confidence_definition="ppmtrack engine confidence in [0, 1].",
        )
        for k, name in enumerate(tracks.names)
    ]
    pose = ndx_pose.PoseEstimation(
        name="PoseEstimation",
        pose_estimation_series=series,
        description=f"Keypoints {', '.join(tracks.names)} tracked in {what} by ppmtrack ({positions}).",
        scorer=scorer,
        source_software="ppmtrack",
        source_software_version=ppmtrack_version,
        skeleton=skeleton,
        source_video=source_video,
    )
    behavior = nwbfile.create_processing_module(name="behavior", description="processed behavioral data")
    behavior.add(ndx_pose.Skeletons(skeletons=[skeleton]))
    behavior.add(pose)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, pynwb.NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwbfile)
    return path


def write_nwb_multi(tracks: dict[str, Tracks], out_dir: str | Path, stem: str, *, engine_name: str,
                    video_path: str | Path | None = None, fps: float | None = None,
                    session_start_time: datetime.datetime | None = None, species: str | None = None) -> list[Path]:
    """Write several animals' tracks as NWB: one file ``<stem>.<individual>.nwb`` per animal.

    NWB has one ``Subject`` per file, so (as movement's own NWB export does) each animal gets its own file made
    by :func:`write_nwb`: its ``Subject.subject_id`` and the file's ``identifier`` are the individual's name,
    its ``Skeleton`` links to that Subject and its ``PoseEstimation`` holds the animal's keypoints. All files
    share ``session_start_time`` (so they describe one session) and the scorer. movement reads them back as one
    dataset with ``individuals`` of size N::

        xr.merge([load_poses.from_nwb_file(p) for p in paths], join="outer", compat="no_conflicts")

    Parameters
    ----------
    tracks : dict of str to Tracks
        Each individual's name → its Tracks (all on one frame axis).
    out_dir, stem : str or Path, str
        Folder and file-name stem of the outputs.
    engine_name, video_path, fps, session_start_time, species
        As for :func:`write_nwb`; the session start defaults to the video file's modification time (else now)
        once for all files.

    Returns
    -------
    list of Path
        The files written, in the order of ``tracks``.
    """
    if session_start_time is None:
        video = Path(video_path) if video_path is not None else None
        stamp = video.stat().st_mtime if video is not None and video.is_file() else None
        session_start_time = (datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc) if stamp is not None
                              else datetime.datetime.now(datetime.timezone.utc))
    return [write_nwb(animal, Path(out_dir) / f"{stem}.{name}.nwb", engine_name=engine_name, video_path=video_path,
                      fps=fps, session_start_time=session_start_time, subject_id=name, species=species)
            for name, animal in tracks.items()]


def write_nwb_files(tracks: Tracks, out_dir: str | Path, stem: str, options: TrackFileOptions,
                    raw: bool = False) -> list[Path]:
    """The registry's writer of one animal: :func:`write_nwb` to ``<stem>.nwb`` (``<stem>.raw.nwb`` with ``raw``)."""
    tag = ".raw" if raw else ""
    return [write_nwb(tracks, Path(out_dir) / f"{stem}{tag}.nwb", engine_name=options.engine_name,
                      video_path=options.video_path, fps=options.fps, subject_id=options.subject_id,
                      species=options.species, raw=raw)]


def write_nwb_files_multi(tracks: dict[str, Tracks], out_dir: str | Path, stem: str,
                          options: TrackFileOptions) -> list[Path]:
    """The registry's writer of several animals: :func:`write_nwb_multi` (one ``<stem>.<individual>.nwb`` each)."""
    return write_nwb_multi(tracks, out_dir, stem, engine_name=options.engine_name, video_path=options.video_path,
                           fps=options.fps, species=options.species)
