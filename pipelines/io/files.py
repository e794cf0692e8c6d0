"""What the format readers and writers share: the hint for a missing optional package, reading a JSON file, and
what a track writer records besides the tracks (:class:`TrackFileOptions`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ppmtrack.pipelines.labels import LabelsError

FORMATS_EXTRA_HINT = "install the format extras: pip install 'ppmtrack[formats]'"


def read_json_file(path: Path, what: str):
    """The JSON document in `path` (a UTF-8 byte-order mark is accepted), or a LabelsError naming `what`
    (e.g. ``"annotation file"``) when the file is missing or is not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelsError(f"{path}: not a readable JSON {what} ({e})") from None


@dataclass(frozen=True)
class TrackFileOptions:
    """What every track-format writer of the registry (:data:`pipelines.io.formats.TRACK_FORMAT_REGISTRY`) is
    given besides the tracks; each format records the fields it has a place for.

    Parameters
    ----------
    engine_name : str
        The engine's name: the DeepLabCut scorer / NWB scorer ``ppmtrack_<engine_name>``, SLEAP provenance.
    video_path : str or Path, optional
        The tracked video (SLEAP, NWB); None for a stream.
    fps : float, optional
        The video's frame rate (SLEAP, NWB).
    subject_id, species : str, optional
        The NWB ``Subject`` (one animal; several animals: ``subject_id`` is each individual's name).
    """

    engine_name: str
    video_path: str | Path | None = None
    fps: float | None = None
    subject_id: str | None = None
    species: str | None = None
