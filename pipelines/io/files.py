"""What the format readers and writers share: the hint for a missing optional package, reading a JSON file."""

from __future__ import annotations

import json
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
