"""Identity corrections of a several-animal run: "swap A and B from frame N on", "A from frame N is a new animal",
"A from frame N is the same animal as B" (``ppmtrack identities``, and the review page's API).

Corrections are kept in ``<stem>.corrections.json`` beside the results, in the order they were made; the tracks
CSV the run wrote is never changed. Every correction (and every undo) re-exports the corrected tracks to
``<stem>.corrected.csv`` and to each extra format the run wrote (``--output-format dlc|sleap|nwb``: the same
writers, stem ``<stem>.corrected``), always from the original CSV with all corrections applied in order. An undo
moves the last correction to the file's ``undone`` list (redo takes it back); with no correction left the
corrected files are removed, so nothing stale stays.

Candidate swap points (:func:`swap_candidates`) are the frames to check first: where keeping two identities
costs more motion than swapping them (the keypoint distance from the frame before, both ways), where an
identity's keypoints jump by more than its own size, and the assignments the tracker itself recorded as
uncertain (the run summary's ``identities.uncertain``: appearance and motion).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import UsageError
from ppmtrack.pipelines.io.csv import read_multi_tracks_csv, write_multi_tracks_csv
from ppmtrack.tracker import Tracks
from ppmtrack.tracker.identity import animal_size, mean_keypoint_distance

OPS = ("swap", "new", "same_as")
CORRECTIONS_VERSION = 1


class CorrectionError(UsageError):
    """A correction that does not fit the tracks (unknown animal, frame outside the run)."""


def corrections_path(csv: Path) -> Path:
    return csv.with_name(f"{csv.stem}.corrections.json")


def corrected_stem(csv: Path) -> str:
    return f"{csv.stem}.corrected"


def read_corrections(csv: Path) -> dict:
    """The corrections document of a run's CSV (an empty one when there is none yet)."""
    path = corrections_path(csv)
    if not path.is_file():
        return {"ppmtrack_corrections": CORRECTIONS_VERSION, "csv": csv.name, "corrections": [], "undone": []}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorrectionError(f"{path}: not a readable corrections file ({e}); move it away to start afresh") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("corrections"), list):
        raise CorrectionError(f"{path}: not a ppmtrack corrections file")
    doc.setdefault("undone", [])
    return doc


def check_correction(c: dict, names: list[str], frames: np.ndarray) -> dict:
    """A correction as stored: ``{"op", "animal", ["other"], "from_frame"}``, checked against the tracks."""
    if not isinstance(c, dict) or c.get("op") not in OPS:
        raise CorrectionError(f"a correction needs op one of {', '.join(OPS)}, got {c!r}")
    try:
        start = int(c["from_frame"])
    except (KeyError, TypeError, ValueError):
        raise CorrectionError(f"a correction needs a frame number from_frame, got {c!r}") from None
    if not len(frames) or start < frames.min() or start > frames.max():
        span = f"{int(frames.min())}–{int(frames.max())}" if len(frames) else "none"
        raise CorrectionError(f"from_frame {start} is outside the tracked frames ({span})")
    animal = c.get("animal")
    if animal not in names:
        raise CorrectionError(f"no animal {animal!r} in the tracks; choose among {', '.join(names)}")
    out = {"op": c["op"], "animal": animal, "from_frame": start}
    if c["op"] in ("swap", "same_as"):
        other = c.get("other")
        if other not in names or other == animal:
            raise CorrectionError(f"{c['op']} needs another animal 'other' among {', '.join(names)}, got {other!r}")
        out["other"] = other
    elif c.get("other"):
        out["other"] = str(c["other"])  # the new animal's name
    return out


def _empty_rows(t: Tracks, rows: np.ndarray) -> Tracks:
    xy, raw = t.xy.copy(), t.raw_xy.copy()
    conf, vis = t.confidence.copy(), t.visible.copy()
    xy[rows], raw[rows], conf[rows], vis[rows] = np.nan, np.nan, 0.0, False
    return dataclasses.replace(t, xy=xy, raw_xy=raw, confidence=conf, visible=vis)


def _take_rows(target: Tracks, source: Tracks, rows: np.ndarray) -> Tracks:
    xy, raw = target.xy.copy(), target.raw_xy.copy()
    conf, vis = target.confidence.copy(), target.visible.copy()
    xy[rows], raw[rows], conf[rows], vis[rows] = source.xy[rows], source.raw_xy[rows], source.confidence[rows], \
        source.visible[rows]
    return dataclasses.replace(target, xy=xy, raw_xy=raw, confidence=conf, visible=vis)


def _new_name(names: list[str], wanted: str | None) -> str:
    if wanted and wanted not in names:
        return wanted
    i = len(names) + 1
    while f"animal{i}" in names:
        i += 1
    return f"animal{i}"


def apply_corrections(tracks: dict[str, Tracks], corrections: list[dict]) -> dict[str, Tracks]:
    """The tracks with the corrections applied in order (the input is not changed).

    - ``swap``: from ``from_frame`` on, ``animal`` and ``other`` exchange every per-frame value;
    - ``new``: from ``from_frame`` on, ``animal``'s values go to a new animal (named ``other`` when given, else
      the next free ``animalN``), ``animal`` is empty (lost) there;
    - ``same_as``: from ``from_frame`` on, ``other`` takes ``animal``'s values in the frames where ``animal`` has
      any keypoint, and ``animal`` is empty there.
    """
    out = dict(tracks)
    for c in corrections:
        names = list(out)
        first = next(iter(out.values()))
        c = check_correction(c, names, first.frame)
        rows = np.flatnonzero(first.frame >= c["from_frame"])
        a = out[c["animal"]]
        if c["op"] == "swap":
            b = out[c["other"]]
            out[c["animal"]], out[c["other"]] = _take_rows(a, b, rows), _take_rows(b, a, rows)
        elif c["op"] == "new":
            name = _new_name(names, c.get("other"))
            out[name] = _take_rows(_empty_rows(a, np.arange(len(a.frame))), a, rows)
            out[c["animal"]] = _empty_rows(a, rows)
        else:
            present = rows[np.isfinite(a.xy[rows]).all(axis=-1).any(axis=-1)]
            out[c["other"]] = _take_rows(out[c["other"]], a, present)
            out[c["animal"]] = _empty_rows(a, present)
    return out


class Corrections:
    """The corrections of one several-animal run: add, undo, redo, candidates; every change re-exports.

    Parameters
    ----------
    csv : Path
        The run's tracks CSV (with an ``individual`` column); its ``<stem>.summary.json`` names the extra
        formats to re-export.
    """

    def __init__(self, csv: Path):
        self.csv = Path(csv)
        self.original = read_multi_tracks_csv(self.csv)
        if not self.original:
            raise CorrectionError(f"{self.csv}: holds no animal")
        summary = self.csv.with_name(f"{self.csv.stem}.summary.json")
        self.summary = json.loads(summary.read_text()) if summary.is_file() else {}
        self.doc = read_corrections(self.csv)
        apply_corrections(self.original, self.doc["corrections"])  # a hand-edited file fails now, clearly

    @property
    def frames(self) -> np.ndarray:
        return next(iter(self.original.values())).frame

    def corrected(self) -> dict[str, Tracks]:
        return apply_corrections(self.original, self.doc["corrections"])

    def add(self, correction: dict) -> list[str]:
        current = self.corrected()
        checked = check_correction(correction, list(current), self.frames)
        self.doc["corrections"].append(checked)
        self.doc["undone"] = []
        return self._save()

    def undo(self) -> list[str]:
        if not self.doc["corrections"]:
            raise CorrectionError("no correction to undo")
        self.doc["undone"].append(self.doc["corrections"].pop())
        return self._save()

    def redo(self) -> list[str]:
        if not self.doc["undone"]:
            raise CorrectionError("no undone correction to redo")
        self.doc["corrections"].append(self.doc["undone"].pop())
        return self._save()

    def _save(self) -> list[str]:
        path = corrections_path(self.csv)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.doc, indent=1) + "\n", encoding="utf-8")
        return self.export()

    def outputs(self) -> list[Path]:
        """The corrected files this run's outputs map to (written or not)."""
        folder, stem = self.csv.parent, corrected_stem(self.csv)
        formats = (self.summary.get("settings") or {}).get("output_formats") or ["csv"]
        paths = [folder / f"{stem}.csv"]
        if "sleap" in formats:
            paths.append(folder / f"{stem}.analysis.h5")
        if "dlc" in formats:
            paths += sorted(folder.glob(f"{stem}*.h5")) + sorted(folder.glob(f"{stem}*.csv"))
        if "nwb" in formats:
            paths += sorted(folder.glob(f"{stem}.*.nwb"))
        return list(dict.fromkeys(p for p in paths if p.name != f"{stem}.analysis.h5" or "sleap" in formats))

    def export(self) -> list[str]:
        """Write the corrected tracks to every format the run wrote; with no correction, remove them."""
        if not self.doc["corrections"]:
            for p in self.outputs():
                p.unlink(missing_ok=True)
            return []
        tracks = self.corrected()
        folder, stem = self.csv.parent, corrected_stem(self.csv)
        formats = (self.summary.get("settings") or {}).get("output_formats") or ["csv"]
        engine_name = (self.summary.get("engine") or {}).get("name") or "engine"
        fps = (self.summary.get("input") or {}).get("fps")
        video = (self.summary.get("input") or {}).get("source")
        for p in self.outputs():  # animals may have come or gone: no file of an earlier export stays
            if p.suffix == ".nwb":
                p.unlink(missing_ok=True)
        written = [folder / f"{stem}.csv"]
        write_multi_tracks_csv(tracks, written[0])
        if "dlc" in formats:
            from ppmtrack.pipelines.io.dlc import write_dlc_multi

            written += write_dlc_multi(tracks, folder, stem, engine_name=engine_name)
        if "sleap" in formats:
            from ppmtrack.pipelines.io.sleap import write_sleap_analysis_multi

            written.append(write_sleap_analysis_multi(tracks, folder / f"{stem}.analysis.h5",
                                                      engine_name=engine_name, video_path=video, fps=fps))
        if "nwb" in formats:
            from ppmtrack.pipelines.io.nwb import write_nwb_multi

            written += write_nwb_multi(tracks, folder, stem, engine_name=engine_name, video_path=video, fps=fps)
        return [str(p) for p in written]

    def candidates(self, limit: int = 50) -> list[dict]:
        return swap_candidates(self.corrected(), self.summary, limit)

    def document(self) -> dict:
        """The state for the review page: animals, corrections, undone, candidates, corrected files."""
        tracks = self.corrected()
        return {"csv": str(self.csv), "animals": list(tracks), "corrections": self.doc["corrections"],
                "undone": self.doc["undone"], "candidates": self.candidates(),
                "outputs": [str(p) for p in self.outputs() if p.exists()]}


def swap_candidates(tracks: dict[str, Tracks], summary: dict | None = None, limit: int = 50) -> list[dict]:
    """Frames where an identity swap is likely, most likely first (module docstring).

    Each entry: ``frame``, ``animals`` (the two, or one for a jump), ``reason`` ("motion" — swapping would
    move the animals less; "jump" — an identity moved more than its size; "uncertain" — the tracker's own
    record) and ``score`` (higher = check sooner).
    """
    names = list(tracks)
    found: dict[tuple, dict] = {}

    def add(frame, animals, reason, score):
        key = (int(frame), tuple(sorted(animals)))
        if key not in found or found[key]["score"] < score:
            found[key] = {"frame": int(frame), "animals": list(key[1]), "reason": reason,
                          "score": round(float(score), 3)}

    first = next(iter(tracks.values()))
    frames = first.frame
    for t in range(1, len(frames)):
        for i, a in enumerate(names):
            pa, ca = tracks[a].xy[t - 1], tracks[a].xy[t]
            used = np.isfinite(pa).all(axis=1)
            size = max(animal_size(pa, used), 4.0)
            own = mean_keypoint_distance(pa, ca)
            if np.isfinite(own) and own > size:
                add(frames[t], [a], "jump", own / size)
            for b in names[i + 1:]:
                pb, cb = tracks[b].xy[t - 1], tracks[b].xy[t]
                kept = mean_keypoint_distance(pa, ca) + mean_keypoint_distance(pb, cb)
                swapped = mean_keypoint_distance(pa, cb) + mean_keypoint_distance(pb, ca)
                if np.isfinite(kept) and np.isfinite(swapped) and swapped < kept:
                    add(frames[t], [a, b], "motion", kept / max(swapped, 1e-6))
    for d in ((summary or {}).get("identities") or {}).get("uncertain") or []:
        individuals = (summary.get("identities") or {}).get("individuals") or []
        pair = [individuals[i] for i in d.get("tracks", []) if i < len(individuals)]
        if len(pair) == 2:
            add(d["frame"], pair, "uncertain", 1.0 + max(0.0, 0.3 - float(d.get("margin", 0.3))))
    return sorted(found.values(), key=lambda c: (-c["score"], c["frame"]))[:limit]
