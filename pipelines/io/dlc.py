"""DeepLabCut: labelled data (CollectedData_<scorer>.csv / .h5) in, pose tables (.h5 + .csv) out."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path, PureWindowsPath

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import MissingExtraError
from ppmtrack.pipelines.io.files import FORMATS_EXTRA_HINT, TrackFileOptions
from ppmtrack.pipelines.io.pandas_hdf5 import NotAPandasTable, PickledTableError, read_pandas_hdf5
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError
from ppmtrack.tracker.track import Tracks

LEVELS_SINGLE = ("scorer", "bodyparts", "coords")
LEVELS_MULTI = ("scorer", "individuals", "bodyparts", "coords")


def _import_pandas(path: Path):
    try:
        import pandas as pd
        import tables  # noqa: F401  (pandas needs PyTables for DLC's HDF5 tables)
    except ImportError as e:
        raise MissingExtraError(
            f"{path}: DeepLabCut .h5 files need pandas and PyTables ({e.name} is missing); "
            f"{FORMATS_EXTRA_HINT}, or use the CollectedData_*.csv file"
        ) from None
    return pd


def _import_h5py(path: Path):
    try:
        import h5py
    except ImportError:
        raise MissingExtraError(
            f"{path}: reading DeepLabCut .h5 files needs h5py; {FORMATS_EXTRA_HINT}, or use the "
            "CollectedData_*.csv file"
        ) from None
    return h5py


def _find_collected_data(folder: Path) -> Path:
    candidates = sorted(folder.glob("CollectedData_*.h5")) + sorted(folder.glob("CollectedData_*.csv"))
    if not candidates:
        raise LabelsError(f"{folder}: no CollectedData_<scorer>.csv or .h5 file in this folder")
    h5 = [c for c in candidates if c.suffix == ".h5"]
    if h5:
        try:
            _import_h5py(h5[0])
            return h5[0]
        except ImportError:
            pass
    return candidates[-1] if candidates[-1].suffix == ".csv" else candidates[0]


def _table_from_csv(path: Path) -> tuple[list[str], list[list[str]], list[tuple[str, ...]], list[list[str]]]:
    """Split a DLC CSV into header level names, header rows, row index parts and value cells."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such DeepLabCut labels file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LabelsError(f"{path}: not a readable DeepLabCut CSV file ({e})") from None
    if not rows or rows[0][0].strip() != "scorer":
        raise LabelsError(
            f"{path}: the first header row must start with 'scorer' (DeepLabCut CSVs have header rows "
            "scorer, [individuals,] bodyparts, coords)"
        )
    n_header = 0
    while n_header < len(rows) and rows[n_header][0].strip() in LEVELS_MULTI:
        n_header += 1
    levels = [r[0].strip() for r in rows[:n_header]]
    n_index = next((j for j, c in enumerate(rows[0]) if j > 0 and c.strip()), len(rows[0]))
    header = [[c.strip() for c in r[n_index:]] for r in rows[:n_header]]
    index, values = [], []
    width = len(rows[0])
    for i, r in enumerate(rows[n_header:], start=n_header + 1):
        if len(r) != width:
            raise LabelsError(f"{path}: line {i} has {len(r)} cells, the header has {width}")
        index.append(tuple(c.strip() for c in r[:n_index]))
        values.append(r[n_index:])
    return levels, header, index, values


def _table_from_h5(path: Path) -> tuple[list[str], list[list[str]], list[tuple[str, ...]], np.ndarray]:
    """The table of a DeepLabCut ``.h5`` read with h5py: numbers and labels only, never unpickled."""
    _import_h5py(path)
    if not path.is_file():
        raise LabelsError(f"{path}: no such DeepLabCut labels file")
    try:
        names, columns, rows, values = read_pandas_hdf5(path)
    except PickledTableError as e:
        raise LabelsError(
            f"{path}: refused: {e}. Opening such a file with pandas would unpickle it, which can run code. "
            "Use the CollectedData_*.csv that DeepLabCut saves beside it, or re-save the labels from "
            "DeepLabCut with numeric coordinates"
        ) from None
    except (OSError, NotAPandasTable, KeyError, ValueError, TypeError) as e:
        raise LabelsError(f"{path}: not a readable DeepLabCut HDF5 table ({e})") from None
    levels = [str(n) for n in names]
    header = [[str(c[j]) for c in columns] for j in range(len(levels))]
    index = [tuple(str(p) for p in row) for row in rows]
    return levels, header, index, values


def _number(cell) -> float:
    """A CSV cell or table value as a float; an empty cell is a missing keypoint (NaN)."""
    if isinstance(cell, str):
        return float(cell) if cell.strip() else math.nan
    return float(cell)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _config_for(path: Path) -> dict:
    """The project's config.yaml (two folders above labeled-data/<video>/), or {} if absent or unreadable."""
    config = path.resolve().parents[2] / "config.yaml" if len(path.resolve().parents) > 2 else None
    if config is None or not config.is_file():
        return {}
    try:
        import yaml

        doc = yaml.safe_load(config.read_text())
    except (ImportError, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _image_ref(path: Path, index: tuple[str, ...]) -> FrameRef:
    """Resolve a row index (a relative/absolute path string or the parts of one) to an image file."""
    parts = [p for p in index if p]
    if len(parts) == 1:
        parts = list(PureWindowsPath(parts[0]).parts) if "\\" in parts[0] else list(Path(parts[0]).parts)
    rel = Path(*parts)
    here = path.resolve().parent
    candidates = [rel] if rel.is_absolute() else []
    candidates += [here.parents[1] / rel] if len(here.parents) > 1 and not rel.is_absolute() else []
    candidates += [here / rel.name, path.parent / rel]
    for c in candidates:
        if c.is_file():
            return FrameRef(image=c)
    return FrameRef(image=candidates[0])


def read_dlc(path: str | Path, individual: str | None = None) -> Labels:
    """Read DeepLabCut labelled data (``CollectedData_<scorer>.csv`` or ``.h5``) into Labels.

    Parameters
    ----------
    path : str or Path
        The CollectedData file, or the ``labeled-data/<video>`` folder holding it (the ``.h5`` is preferred
        there when pandas and PyTables are installed, else the ``.csv``).
    individual : str, optional
        For multi-animal projects (header rows scorer/individuals/bodyparts/coords): the individual to read.
        Left out, every individual is read (``Labels.individuals`` / ``Labels.instances``; adaptation then
        trains on all of them).

    Returns
    -------
    Labels
        One frame per row. Images are looked up relative to the project folder (two folders above the file),
        then by file name next to the file. Empty cells become NaN. The skeleton comes from the project's
        ``config.yaml`` when it is there (edges naming unknown bodyparts are dropped); a bodypart that the
        config does not list is an error. The config's ``dotsize``, ``pcutoff`` and ``colormap`` are kept in
        ``Labels.display`` and become the annotated video's defaults.
    """
    path = Path(path)
    if path.is_dir():
        path = _find_collected_data(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        levels, header, index, values = _table_from_h5(path)
    else:
        levels, header, index, values = _table_from_csv(path)
    for level in ("bodyparts", "coords"):
        if level not in levels:
            raise LabelsError(
                f"{path}: header row {level!r} is missing (found {', '.join(levels) or 'none'}); "
                "DeepLabCut files have header rows scorer, [individuals,] bodyparts, coords"
            )
    by_level = dict(zip(levels, header, strict=True))
    coords, bodyparts = by_level["coords"], by_level["bodyparts"]
    keep = list(range(len(coords)))
    owner = by_level.get("individuals", [""] * len(coords))
    individuals = list(dict.fromkeys(owner))
    if "individuals" in by_level and individual is not None:
        if individual not in individuals:
            raise LabelsError(f"{path}: has no individual {individual!r}; choose one with individual= among: "
                              f"{', '.join(individuals)}")
        individuals = [individual]
    keep = [j for j in keep if owner[j] in individuals]
    likelihoods = [_number(row[j]) for row in values for j in keep if coords[j] == "likelihood"
                   if not (isinstance(row[j], str) and not _is_number(row[j]))]
    if np.isfinite(likelihoods).any():  # labels saved by other tools may carry empty likelihood columns
        raise LabelsError(
            f"{path}: this is a DeepLabCut predictions table (it has likelihood values), not labelled data; "
            "use the CollectedData_<scorer>.csv or .h5 of a labeled-data/<video> folder, or refine the "
            "predictions in DeepLabCut and use the labels it saves"
        )
    names = list(dict.fromkeys(bodyparts[j] for j in keep))
    column = {}
    for j in keep:
        if coords[j] in ("x", "y"):
            column[(owner[j], bodyparts[j], coords[j])] = j
        elif coords[j] != "likelihood":
            raise LabelsError(f"{path}: column {j + 1} has coords {coords[j]!r}, expected x, y or likelihood")
    for animal in individuals:
        for name in dict.fromkeys(bodyparts[j] for j in keep if owner[j] == animal):
            for c in ("x", "y"):
                if (animal, name, c) not in column:
                    raise LabelsError(f"{path}: bodypart {name!r} has no {c!r} column")
    config = _config_for(path)
    known = [
        str(b)
        for key in ("bodyparts", "multianimalbodyparts", "uniquebodyparts")
        if isinstance(config.get(key), list)
        for b in config[key]
    ]
    if known:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LabelsError(
                f"{path}: bodypart {unknown[0]!r} is not listed in the project's config.yaml "
                f"(bodyparts: {', '.join(known)}); fix the file or the config"
            )
    if not index:
        raise LabelsError(f"{path}: no labelled rows under the header")
    keypoints = np.full((len(index), len(individuals), len(names), 2), np.nan)
    for i, row in enumerate(values):
        for a, animal in enumerate(individuals):
            for k, name in enumerate(names):
                for d, c in enumerate(("x", "y")):
                    if (animal, name, c) not in column:
                        continue
                    cell = row[column[(animal, name, c)]]
                    try:
                        keypoints[i, a, k, d] = _number(cell)
                    except ValueError:
                        raise LabelsError(
                            f"{path}: row {'/'.join(index[i])!r}, bodypart {name!r}: {c} = {cell!r} "
                            "is not a number"
                        ) from None
    keypoints[np.isnan(keypoints).any(axis=-1)] = np.nan
    several = len(individuals) > 1
    skeleton = []
    for edge in config.get("skeleton") or []:
        if isinstance(edge, list) and len(edge) == 2 and all(n in names for n in edge):
            skeleton.append((str(edge[0]), str(edge[1])))
    return Labels(
        names=names,
        frames=[_image_ref(path, ix) for ix in index],
        keypoints=keypoints[:, 0],
        skeleton=skeleton,
        source=path,
        display=_display_settings(config),
        individuals=individuals if several else [],
        instances=keypoints if several else None,
    )


def _display_settings(config: dict) -> dict:
    """The project's plotting settings that the annotated video uses: ``dotsize``, ``pcutoff``, ``colormap``."""
    display = {}
    for key, kind in (("dotsize", int), ("pcutoff", float), ("colormap", str)):
        try:
            value = kind(config[key]) if config.get(key) is not None else None
        except (TypeError, ValueError):
            value = None
        if value is not None and (kind is str or value >= 0):
            display[key] = value
    return display


def write_dlc(tracks: Tracks, out_dir: str | Path, stem: str, *, engine_name: str, raw: bool = False
              ) -> list[Path]:
    """Write tracks as a DeepLabCut pose-estimation table: ``<stem><scorer>.h5`` and the matching ``.csv``.

    Parameters
    ----------
    tracks : Tracks
        The trajectories; the smoothed ``xy`` is written, ``confidence`` becomes ``likelihood``.
    out_dir : str or Path
        Folder for the two files (created if needed).
    stem : str
        File name start, usually the video's stem (DeepLabCut names its output ``<video stem><scorer>.h5``).
    engine_name : str
        The engine's name; the scorer is ``ppmtrack_<engine_name>`` (characters other than letters, digits,
        ``.``, ``-`` and ``_`` become ``_``).
    raw : bool
        Write the engine's raw measurements (``raw_xy``, before smoothing) instead of the smoothed ``xy``, to
        ``<stem><scorer>.raw.h5`` and ``.raw.csv``.

    Returns
    -------
    list of Path
        The ``.h5`` file (key ``df_with_missing``, format ``table``) and the ``.csv`` (three header rows).

    Notes
    -----
    Rows are indexed by video frame number and run from 0 to the last tracked frame, one per frame as
    DeepLabCut writes them, so that row N is frame N; frames that were not tracked are all NaN. Lost
    keypoints have NaN x and y and keep the engine's confidence as likelihood.
    """
    pd = _import_pandas(Path(out_dir) / stem)
    scorer = "ppmtrack_" + re.sub(r"[^A-Za-z0-9._-]", "_", engine_name)
    n_rows = int(tracks.frame.max()) + 1 if len(tracks) else 0
    data = np.full((n_rows, len(tracks.names), 3), np.nan)
    data[tracks.frame, :, :2] = tracks.raw_xy if raw else tracks.xy
    data[tracks.frame, :, 2] = tracks.confidence
    columns = pd.MultiIndex.from_product(
        [[scorer], list(tracks.names), ["x", "y", "likelihood"]], names=list(LEVELS_SINGLE)
    )
    df = pd.DataFrame(data.reshape(n_rows, -1), index=np.arange(n_rows, dtype=np.int64), columns=columns)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".raw.h5", ".raw.csv") if raw else (".h5", ".csv"):
        written.append(_write_table(df, out_dir / f"{stem}{scorer}{suffix}"))
    return written


def _write_table(df, path: Path) -> Path:
    """Write a DeepLabCut table as ``.h5`` (key ``df_with_missing``) or ``.csv`` atomically (temp file, rename)."""
    with atomic_path(path) as tmp:
        if path.suffix == ".h5":
            df.to_hdf(tmp, key="df_with_missing", format="table", mode="w")
        else:
            df.to_csv(tmp)
    return path


def read_dlc_config(path: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Keypoint names and skeleton of a DeepLabCut project's ``config.yaml``.

    The names are ``bodyparts`` (single-animal projects) or ``multianimalbodyparts`` then
    ``uniquebodyparts``; skeleton edges naming an unknown bodypart are dropped.
    """
    path = Path(path)
    try:
        import yaml
    except ImportError:
        raise MissingExtraError(f"{path}: reading a DeepLabCut config.yaml needs PyYAML; "
                                f"{FORMATS_EXTRA_HINT}") from None
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such DeepLabCut config file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LabelsError(f"{path}: not a readable DeepLabCut config.yaml ({e})") from None
    doc = doc if isinstance(doc, dict) else {}
    names = doc.get("bodyparts")
    if not isinstance(names, list) or names == ["MULTI!"]:
        names = (doc.get("multianimalbodyparts") or []) + (doc.get("uniquebodyparts") or [])
    names = [str(n) for n in names]
    if not names:
        raise LabelsError(f"{path}: lists no bodyparts (expected 'bodyparts' or 'multianimalbodyparts')")
    skeleton = [(str(e[0]), str(e[1])) for e in doc.get("skeleton") or []
                if isinstance(e, list) and len(e) == 2 and all(str(n) in names for n in e)]
    return names, skeleton


def write_dlc_labels(labels: Labels, project_dir: str | Path, scorer: str) -> list[Path]:
    """Write labels as DeepLabCut labelled data: ``labeled-data/<video>/CollectedData_<scorer>.csv`` + PNGs.

    Parameters
    ----------
    labels : Labels
        The labels; their frames are read (``Labels.load_images``) and saved as ``img<NNNNN>.png`` (the
        video frame number, or the frame's position for image files), grouped by video (images without a
        video go to ``labeled-data/images``).
    project_dir : str or Path
        The DeepLabCut project folder (created if needed) that holds ``labeled-data``.
    scorer : str
        The scorer name of the header and file name.

    Returns
    -------
    list of Path
        The CSV files written (each atomically), one per video. The CSV has the three header rows scorer,
        bodyparts, coords and three index columns (``labeled-data``, the video folder, the image name), as
        DeepLabCut 2.2+ writes them; an unlabelled keypoint is an empty cell.
    """
    import cv2

    images = labels.load_images()
    by_video: dict[Path | None, list[int]] = {}
    for i, ref in enumerate(labels.frames):
        by_video.setdefault(Path(ref.video).resolve() if ref.video is not None else None, []).append(i)
    groups: dict[str, list[int]] = {}
    for video, members in by_video.items():
        folder_name = video.stem if video is not None else "images"
        while folder_name in groups:  # two videos with the same name in different folders
            folder_name += "_"
        groups[folder_name] = members
    written = []
    for folder_name, members in groups.items():
        folder = Path(project_dir) / "labeled-data" / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        rows = [["scorer", "", ""] + [scorer] * (2 * len(labels.names)),
                ["bodyparts", "", ""] + [n for n in labels.names for _ in (0, 1)],
                ["coords", "", ""] + ["x", "y"] * len(labels.names)]
        for i in members:
            ref = labels.frames[i]
            image_name = f"img{ref.frame if ref.video is not None else i:05d}.png"
            cv2.imwrite(str(folder / image_name), cv2.cvtColor(images[i], cv2.COLOR_RGB2BGR))
            cells = ["" if math.isnan(v) else f"{v:.3f}" for v in labels.keypoints[i].ravel()]
            rows.append(["labeled-data", folder_name, image_name] + cells)
        path = folder / f"CollectedData_{scorer}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
        written.append(path)
    return written


def write_dlc_multi(tracks: dict[str, Tracks], out_dir: str | Path, stem: str, *, engine_name: str) -> list[Path]:
    """Write several animals' tracks as a DeepLabCut multi-animal table (``<stem><scorer>.h5`` and ``.csv``).

    ``tracks`` maps each individual's name to its Tracks (all on one frame axis). The columns have DeepLabCut's
    four levels scorer/individuals/bodyparts/coords; rows are video frame numbers as in :func:`write_dlc`.
    """
    pd = _import_pandas(Path(out_dir) / stem)
    scorer = "ppmtrack_" + re.sub(r"[^A-Za-z0-9._-]", "_", engine_name)
    first = next(iter(tracks.values()))
    n_rows = int(first.frame.max()) + 1 if len(first) else 0
    data = np.full((n_rows, len(tracks), len(first.names), 3), np.nan)
    for a, animal in enumerate(tracks.values()):
        data[animal.frame, a, :, :2] = animal.xy
        data[animal.frame, a, :, 2] = animal.confidence
    columns = pd.MultiIndex.from_product([[scorer], list(tracks), list(first.names), ["x", "y", "likelihood"]],
                                         names=list(LEVELS_MULTI))
    df = pd.DataFrame(data.reshape(n_rows, -1), index=np.arange(n_rows, dtype=np.int64), columns=columns)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".h5", ".csv"):
        written.append(_write_table(df, out_dir / f"{stem}{scorer}{suffix}"))
    return written


def write_dlc_files(tracks: Tracks, out_dir: str | Path, stem: str, options: TrackFileOptions,
                    raw: bool = False) -> list[Path]:
    """The registry's writer of one animal: :func:`write_dlc` (``<stem><scorer>.h5`` + ``.csv``)."""
    return write_dlc(tracks, out_dir, stem, engine_name=options.engine_name, raw=raw)


def write_dlc_files_multi(tracks: dict[str, Tracks], out_dir: str | Path, stem: str,
                          options: TrackFileOptions) -> list[Path]:
    """The registry's writer of several animals: :func:`write_dlc_multi`."""
    return write_dlc_multi(tracks, out_dir, stem, engine_name=options.engine_name)
