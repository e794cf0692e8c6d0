"""Dispatch: recognise a labels file's format and read it; the registry of track output formats, and writing
tracks in the formats the user asks for.

A track output format is its own module (``pipelines/io/<format>.py``, with a writer of one animal and, where the
format holds several, one of several animals) plus one line of :data:`TRACK_FORMAT_REGISTRY`: the CLI's choices,
the check that its packages are installed, the files that make up an output set (:func:`pipelines.outputs.stem_files`)
and both tracking runs (one animal: :func:`write_tracks`; several: :func:`write_tracks_multi`) read it from there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ppmtrack.engine.errors import MissingExtraError, UsageError
from ppmtrack.pipelines.io.annotation import FORMAT_KEY, read_annotation
from ppmtrack.pipelines.io.coco import read_coco
from ppmtrack.pipelines.io.dlc import read_dlc, write_dlc_files, write_dlc_files_multi
from ppmtrack.pipelines.io.files import TrackFileOptions
from ppmtrack.pipelines.io.nwb import write_nwb_files, write_nwb_files_multi
from ppmtrack.pipelines.io.sleap import read_sleap, write_sleap_files, write_sleap_files_multi
from ppmtrack.pipelines.labels import Labels, LabelsError
from ppmtrack.tracker.track import Tracks

LABEL_FORMATS = {
    "ppmtrack": "ppmtrack annotation JSON (.json)",
    "dlc": "DeepLabCut CollectedData_<scorer>.csv/.h5 or its labeled-data/<video> folder",
    "sleap": "SLEAP labels (.slp, .pkg.slp)",
    "coco": "COCO keypoints JSON (.json)",
}


@dataclass(frozen=True)
class TrackFormat:
    """One track output format: what it needs, which files it makes, and its writers.

    Parameters
    ----------
    name : str
        The name users give (``track --output-format NAME``).
    packages : tuple of str
        The Python modules it needs (checked before a run starts), installed by the package extra ``extra``.
    extra : str
        The ``ppmtrack[EXTRA]`` that installs ``packages``.
    file_patterns : tuple of str
        Glob patterns of the files it writes for a stem, ``{stem}`` standing for the (glob-escaped) stem; an
        output set (:func:`pipelines.outputs.stem_files`) is these files. Files named after the individuals of a
        several-animal run are found through the run's summary instead.
    write : callable
        ``write(tracks, out_dir, stem, options: TrackFileOptions, raw=False) -> list[Path]``: one animal's files
        (``raw``: the engine's raw measurements instead of the smoothed positions, in the ``.raw`` files).
    write_multi : callable, optional
        ``write_multi(tracks_by_individual, out_dir, stem, options) -> list[Path]``: several animals' files; None
        where the format does not hold several animals yet.
    """

    name: str
    packages: tuple[str, ...]
    extra: str
    file_patterns: tuple[str, ...]
    write: Callable[..., list[Path]]
    write_multi: Callable[..., list[Path]] | None = None


TRACK_FORMAT_REGISTRY: dict[str, TrackFormat] = {f.name: f for f in (
    TrackFormat("dlc", ("pandas", "tables"), "formats", ("{stem}ppmtrack_*.h5", "{stem}ppmtrack_*.csv"),
                write_dlc_files, write_dlc_files_multi),
    TrackFormat("sleap", ("h5py",), "formats", ("{stem}.analysis.h5", "{stem}.raw.analysis.h5"),
                write_sleap_files, write_sleap_files_multi),
    TrackFormat("nwb", ("pynwb", "ndx_pose"), "formats", ("{stem}.nwb", "{stem}.raw.nwb"),
                write_nwb_files, write_nwb_files_multi),
)}
TRACK_FORMATS = tuple(TRACK_FORMAT_REGISTRY)
"""The formats written beside the tracks CSV on request."""
OUTPUT_FORMATS = ("csv", *TRACK_FORMATS)
"""What ``--output-format`` accepts: the tracks CSV (always written) and the registry's formats."""
MULTI_FORMATS = tuple(name for name, f in TRACK_FORMAT_REGISTRY.items() if f.write_multi is not None)
"""The formats written for several animals."""
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _unsupported(path: Path, why: str) -> LabelsError:
    listing = "; ".join(f"{k}: {v}" for k, v in LABEL_FORMATS.items())
    return LabelsError(f"{path}: {why}. Supported label formats are {listing}")


def detect_labels_format(path: str | Path) -> str:
    """Tell which labels format a file (or DeepLabCut labeled-data folder) is in, by extension and content.

    Returns
    -------
    str
        One of "ppmtrack", "dlc", "sleap", "coco". Raises LabelsError listing the supported formats otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise LabelsError(f"{path}: no such file or folder")
    if path.is_dir():
        if any(path.glob("CollectedData_*.csv")) or any(path.glob("CollectedData_*.h5")):
            return "dlc"
        raise _unsupported(path, "this folder holds no DeepLabCut CollectedData_<scorer>.csv/.h5 file")
    suffix = path.suffix.lower()
    if suffix == ".slp":
        return "sleap"
    if suffix == ".csv":
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = f.readline()
        if first.split(",")[0].strip() == "scorer":
            return "dlc"
        raise _unsupported(path, "a CSV file whose first cell is not 'scorer' (not a DeepLabCut file)")
    if suffix in (".h5", ".hdf5"):
        with open(path, "rb") as f:
            if f.read(8) != HDF5_SIGNATURE:
                raise _unsupported(path, "not an HDF5 file")
        if path.name.startswith("CollectedData_"):
            return "dlc"
        try:
            import h5py
        except ImportError:
            raise _unsupported(
                path, "an HDF5 file not named CollectedData_*; install h5py to look inside"
            ) from None
        with h5py.File(path, "r") as f:
            if "df_with_missing" in f:
                return "dlc"
            if "track_occupancy" in f:
                raise _unsupported(
                    path, "a SLEAP analysis file holds predictions, not labels; use the .slp file"
                )
        raise _unsupported(path, "an HDF5 file that is neither DeepLabCut labels nor a SLEAP file")
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LabelsError(f"{path}: not a readable JSON file ({e})") from None
        if isinstance(doc, dict) and (FORMAT_KEY in doc or ("keypoints" in doc and "frames" in doc)):
            return "ppmtrack"
        if isinstance(doc, dict) and all(k in doc for k in ("images", "annotations", "categories")):
            return "coco"
        raise _unsupported(path, "a JSON file that is neither a ppmtrack annotation nor COCO keypoints")
    raise _unsupported(path, f"unrecognised file type {suffix or '(no extension)'!r}")


def read_labels(path: str | Path, fmt: str | None = None, individual: str | None = None) -> Labels:
    """Read labels in any supported format into Labels.

    Parameters
    ----------
    path : str or Path
        The labels file (or DeepLabCut labeled-data folder).
    fmt : {"ppmtrack", "dlc", "sleap", "coco"}, optional
        The format; detected with :func:`detect_labels_format` when left out.
    individual : str, optional
        Which animal to read: a DeepLabCut multi-animal individual, a SLEAP track name or one of the
        ``individuals`` of a ppmtrack JSON file. Not used by COCO files (one annotation per image, see
        :func:`pipelines.io.coco.read_coco`).
    """
    path = Path(path)
    fmt = fmt or detect_labels_format(path)
    if fmt not in LABEL_FORMATS:
        raise _unsupported(path, f"unknown format {fmt!r}")
    if individual is not None and fmt not in ("dlc", "sleap", "ppmtrack"):
        raise LabelsError(f"{path}: individual= applies to DeepLabCut, SLEAP and ppmtrack files, not to {fmt} files")
    if fmt == "dlc":
        return read_dlc(path, individual=individual)
    if fmt == "sleap":
        return read_sleap(path, track=individual)
    if fmt == "coco":
        return read_coco(path)
    labels = read_annotation(path)
    if individual is None:
        return labels
    if individual not in labels.individuals:
        raise LabelsError(f"{path}: has no individual {individual!r}; choose one with individual= among: "
                          f"{', '.join(labels.individuals) or '(none: the file labels one animal)'}")
    return dataclasses.replace(labels, keypoints=labels.instances[:, labels.individuals.index(individual)],
                               individuals=[], instances=None)


def check_output_formats(formats) -> list[str]:
    """Validate requested output formats (``csv`` always written) and that their packages are installed.

    Returns the formats beyond csv, in order, without duplicates. Raises UsageError for an unknown format and
    MissingExtraError (naming the packages and the extra that installs them) for one whose packages are missing.
    """
    formats = [f.strip().lower() for f in formats if f.strip()]
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise UsageError(f"unknown output format {unknown[0]!r}; choose among {', '.join(OUTPUT_FORMATS)}")
    extra = [f for f in dict.fromkeys(formats) if f != "csv"]
    for fmt in extra:
        spec = TRACK_FORMAT_REGISTRY[fmt]
        missing = [m for m in spec.packages if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingExtraError(f"output format {fmt!r} needs the Python package(s) {', '.join(missing)}; "
                                    f"install them with: pip install 'ppmtrack[{spec.extra}]'")
    return extra


def write_tracks(
    tracks: Tracks,
    out_dir: str | Path,
    stem: str,
    formats: list[str],
    *,
    engine_name: str,
    video_path: str | Path | None,
    fps: float | None,
    with_raw: bool = False,
    subject_id: str | None = None,
    species: str | None = None,
) -> list[Path]:
    """Write tracks in each of the requested formats; each file is written atomically.

    Parameters
    ----------
    tracks : Tracks
        The trajectories.
    out_dir : str or Path
        Output folder.
    stem : str
        File name start, usually the video's stem.
    formats : list of str
        Among "dlc" (``<stem>ppmtrack_<engine>.h5`` + ``.csv``), "sleap" (``<stem>.analysis.h5``) and "nwb"
        (``<stem>.nwb``).
    engine_name : str
        The engine's name, recorded as the DeepLabCut scorer / NWB scorer ``ppmtrack_<engine_name>``.
    video_path : str or Path, optional
        The tracked video, recorded in the SLEAP and NWB files.
    fps : float, optional
        The video's frame rate, recorded in the SLEAP and NWB files.
    with_raw : bool
        Also write the engine's raw measurements (before smoothing) in each format, as a second file:
        ``<stem><scorer>.raw.h5`` + ``.raw.csv``, ``<stem>.raw.analysis.h5``, ``<stem>.raw.nwb``.
    subject_id, species : str, optional
        The NWB ``Subject`` (see :func:`pipelines.io.nwb.write_nwb`).

    Returns
    -------
    list of Path
        The files written, in the order of ``formats`` (each format's raw file after its smoothed one).
    """
    unknown = [f for f in formats if f not in TRACK_FORMATS]
    if unknown:
        raise ValueError(
            f"unknown track output format {unknown[0]!r}; choose among {', '.join(TRACK_FORMATS)}"
        )
    options = TrackFileOptions(engine_name=engine_name, video_path=video_path, fps=fps, subject_id=subject_id,
                               species=species)
    written: list[Path] = []
    for fmt in dict.fromkeys(formats):
        for raw in (False, True) if with_raw else (False,):
            written += TRACK_FORMAT_REGISTRY[fmt].write(tracks, Path(out_dir), stem, options, raw=raw)
    return written


def write_tracks_multi(tracks: dict[str, Tracks], out_dir: str | Path, stem: str, formats: list[str],
                       options: TrackFileOptions) -> list[Path]:
    """Write several animals' tracks (individual name → Tracks, one frame axis) in each requested format.

    Returns the files written, in the order of ``formats``; a format without a several-animal writer (not in
    :data:`MULTI_FORMATS`) raises UsageError.
    """
    unsupported = [f for f in formats if f not in MULTI_FORMATS]
    if unsupported:
        raise UsageError(f"output format {unsupported[0]!r} is not written for several animals yet; "
                         f"choose among csv, {', '.join(MULTI_FORMATS)}")
    written: list[Path] = []
    for fmt in dict.fromkeys(formats):
        written += TRACK_FORMAT_REGISTRY[fmt].write_multi(tracks, Path(out_dir), stem, options)
    return written
