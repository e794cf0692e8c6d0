"""What the browser pages work on: the labeller's annotation file and the reviewer's results, kept apart from HTTP.

Both check what the page sends (:class:`WebInputError`, shown in the page) and save with the project's writer
(:func:`pipelines.io.annotation.write_annotation`, atomic) on every change.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.io.annotation import read_annotation, write_annotation
from ppmtrack.pipelines.io.csv import HEADER, read_tracks_csv
from ppmtrack.pipelines.labels import FrameRef, Labels, LabelsError
from ppmtrack.pipelines.video_frames import VideoFrames

LOWEST_CONFIDENCE_FRAMES = 20
OVERVIEW_BINS = 1000
"""Points of the review page's confidence and trajectory plots: the whole run, binned (the page never holds it all)."""
MAX_PAGE_FRAMES = 5000
"""The most video frames one ``/api/tracks`` request covers; the page asks for what it shows."""
MAX_GAPS_LISTED = 500


class WebInputError(PpmtrackError, ValueError):
    """What a page sent cannot be used (unknown keypoint, point outside the frame, ...)."""


class StaleWriteError(WebInputError):
    """The page's copy of the labels is older than the file (another tab or program saved since): not saved."""


def is_int(value) -> bool:
    """True for a JSON integer (``true``/``false`` are not numbers, although Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """True for a finite JSON number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def file_revision(path: Path) -> str:
    """What the page must send back to save over ``path``: a hash of its content (``"none"``: no file yet)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return "none"


def _same_file(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def keypoints_from(path: str | Path) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """Keypoint names, skeleton and flip pairs of an annotation, labels file or DeepLabCut ``config.yaml``."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        from ppmtrack.pipelines.io.dlc import read_dlc_config

        names, skeleton = read_dlc_config(path)
        return names, skeleton, []
    if path.suffix.lower() == ".slp":  # the skeleton alone: a file of predictions has no labelled frame
        from ppmtrack.pipelines.io.sleap import read_sleap_skeleton

        return read_sleap_skeleton(path)
    from ppmtrack.pipelines.io.formats import read_labels

    labels = read_labels(path)
    return list(labels.names), list(labels.skeleton), list(labels.flip_pairs)


def _check_names(names, skeleton) -> tuple[list[str], list[tuple[str, str]]]:
    if not (isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names)):
        raise WebInputError("keypoint names must be a list of non-empty names")
    names = [n.strip() for n in names]
    if len(set(names)) != len(names):
        raise WebInputError("keypoint names must differ from each other")
    edges = []
    for edge in skeleton or []:
        if not (isinstance(edge, list | tuple) and len(edge) == 2 and all(n in names for n in edge)):
            raise WebInputError(f"skeleton edge {edge!r} must join two of the keypoints {', '.join(names)}")
        edges.append((edge[0], edge[1]))
    return names, edges


def _check_points(points, names: list[str], width: int, height: int, where: str) -> np.ndarray:
    """(K, 2) array from ``{name: [x, y] | None}``; a point must lie inside the frame."""
    if not isinstance(points, dict):
        raise WebInputError(f"{where}: points must map keypoint names to [x, y] or null")
    out = np.full((len(names), 2), np.nan)
    for name, xy in points.items():
        if name not in names:
            raise WebInputError(f"{where}: unknown keypoint {name!r}")
        if xy is None:
            continue
        if not (isinstance(xy, list) and len(xy) == 2 and all(is_number(v) for v in xy)):
            raise WebInputError(f"{where}: keypoint {name!r} must be [x, y] or null, got {xy!r}")
        if not (-0.5 <= xy[0] <= width - 0.5 and -0.5 <= xy[1] <= height - 0.5):
            raise WebInputError(f"{where}: keypoint {name!r} at {xy} lies outside the {width}x{height} frame")
        out[names.index(name)] = xy
    return out


def _points(row: np.ndarray, names: list[str]) -> dict:
    return {n: (None if np.isnan(row[k]).any() else [round(float(v), 3) for v in row[k]]) for k, n in
            enumerate(names)}


def _nested(a: np.ndarray, decimals: int) -> list:
    """Rows of a (N, ...) array as lists of rounded numbers, NaN as None (JSON null)."""
    if not len(a):
        return []
    return [[None if math.isnan(v) else round(float(v), decimals) for v in row] for row in a.reshape(len(a), -1)]


def _read_existing(path: Path) -> Labels | None:
    """The annotation file to continue, or None if there is none; one saved before any frame was labelled
    (``frames: []``) gives its keypoint names and skeleton."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelsError(f"{path}: exists but is not a readable annotation file ({e}); name another -o") from None
    if isinstance(doc, dict) and doc.get("frames") == [] and isinstance(doc.get("keypoints"), list):
        names, skeleton = _check_names(doc["keypoints"], doc.get("skeleton"))
        return Labels(names=names, frames=[], keypoints=np.zeros((0, len(names), 2)), skeleton=skeleton,
                      source=path)
    return read_annotation(path)


class LabelSession:
    """The labeller's state: videos, keypoint names and skeleton, and the labelled frames of ``output``.

    Parameters
    ----------
    videos : list of Path
        The videos to label (the videos an existing ``output`` refers to are added).
    output : Path
        The annotation file, written atomically after every change; reopened to continue when it exists.
    names, skeleton, flip_pairs
        Keypoint definitions for a new file (an existing file's own win when both are given and agree).
    """

    def __init__(self, videos: list[Path], output: Path, names=None, skeleton=None, flip_pairs=None):
        self.output = Path(output)
        existing = _read_existing(self.output)
        self.names, self.skeleton = _check_names(list(names or []), list(skeleton or []))
        self.flip_pairs = list(flip_pairs or [])
        self.other_frames: list[tuple[FrameRef, np.ndarray]] = []  # image frames: kept, not shown
        labelled: list[tuple[Path, int, np.ndarray]] = []
        if existing is not None:
            if names and list(names) != existing.names:
                raise LabelsError(f"{self.output} has keypoints {', '.join(existing.names)}, not the ones asked "
                                  f"for ({', '.join(names)}); name another -o or leave out the keypoint options")
            self.names, self.skeleton = list(existing.names), list(existing.skeleton)
            self.flip_pairs = list(existing.flip_pairs)
            for ref, kp in zip(existing.frames, existing.keypoints, strict=True):
                if ref.video is not None:
                    labelled.append((Path(ref.video), int(ref.frame), kp))
                else:
                    self.other_frames.append((ref, kp))
        paths = list(dict.fromkeys([Path(v) for v in videos] + [v for v, _, _ in labelled]))
        unique: list[Path] = []
        for p in paths:
            if not any(_same_file(p, q) for q in unique):
                unique.append(p)
        if not unique:
            raise LabelsError("name at least one video to label")
        self.videos = [VideoFrames(p) for p in unique]
        self.frames: dict[tuple[int, int], np.ndarray] = {}
        self.lock = threading.Lock()  # one save at a time (the server answers requests on several threads)
        for video, frame, kp in labelled:
            vid = next(i for i, v in enumerate(self.videos) if _same_file(v.path, video))
            self.frames[(vid, frame)] = kp

    def document(self) -> dict:
        """Everything the page shows, as JSON."""
        return {
            "mode": "label",
            "output": str(self.output),
            "keypoints": self.names,
            "skeleton": [list(e) for e in self.skeleton],
            "videos": [dict(v.info(), id=i) for i, v in enumerate(self.videos)],
            "frames": [{"video": vid, "frame": frame, "points": _points(kp, self.names)}
                       for (vid, frame), kp in sorted(self.frames.items())],
            "other_frames": len(self.other_frames),
            "revision": file_revision(self.output),
        }

    def update(self, doc: dict) -> dict:
        """Replace the keypoints, skeleton and labels with what the page sends, and save; returns a status.

        ``doc["revision"]``, when given, must be the file's current revision (from :meth:`document` or the last
        save): a page that loaded an older state (another tab saved since, or another program changed the file)
        gets :class:`StaleWriteError` and nothing is written. The answer holds the new revision."""
        with self.lock:
            return self._update(doc)

    def _update(self, doc: dict) -> dict:
        if not isinstance(doc, dict):
            raise WebInputError("expected a JSON object with keypoints, skeleton and frames")
        if "revision" in doc and doc["revision"] != file_revision(self.output):
            raise StaleWriteError(
                f"{self.output} was saved by another tab or program after this page loaded it; not saved, so that "
                "no labels are lost. Reload the page to see the file as it is now, then redo the last change"
            )
        names, skeleton = _check_names(doc.get("keypoints"), doc.get("skeleton"))
        if not names:
            raise WebInputError("define at least one keypoint")
        frames = {}
        for i, f in enumerate(doc.get("frames") or []):
            where = f"frames[{i}]"
            if not isinstance(f, dict) or not is_int(f.get("video")) or not is_int(f.get("frame")):
                raise WebInputError(f"{where} needs an integer video id and frame number")
            if not 0 <= f["video"] < len(self.videos):
                raise WebInputError(f"{where}: no video {f['video']}")
            video = self.videos[f["video"]]
            if not 0 <= f["frame"] < video.n_frames:
                raise WebInputError(f"{where}: {video.path.name} has no frame {f['frame']}")
            frames[(f["video"], f["frame"])] = _check_points(f.get("points", {}), names, video.width,
                                                             video.height, where)
        renamed = [[kp[self.names.index(n)] if n in self.names else (math.nan, math.nan) for n in names]
                   for _, kp in self.other_frames]
        self.other_frames = [(ref, np.array(kp, dtype=float).reshape(len(names), 2))
                             for (ref, _), kp in zip(self.other_frames, renamed, strict=True)]
        self.names, self.skeleton, self.frames = names, skeleton, frames
        self.flip_pairs = [p for p in self.flip_pairs if all(n in names for n in p)]
        write_annotation(self.labels(), self.output)
        return {"saved": str(self.output), "frames": len(self.frames) + len(self.other_frames),
                "revision": file_revision(self.output)}

    def labels(self) -> Labels:
        """The labels as the project's data type (video frames first, then kept image frames)."""
        refs = [FrameRef(video=self.videos[vid].path, frame=frame) for vid, frame in sorted(self.frames)]
        refs += [ref for ref, _ in self.other_frames]
        keypoints = [self.frames[key] for key in sorted(self.frames)] + [kp for _, kp in self.other_frames]
        return Labels(names=self.names, frames=refs,
                      keypoints=np.array(keypoints).reshape(len(refs), len(self.names), 2),
                      skeleton=self.skeleton, flip_pairs=self.flip_pairs, source=self.output)

    def export_dlc(self, scorer: str) -> list[str]:
        """Write DeepLabCut labelled data next to the annotation file (``<stem>_dlc/labeled-data/...``)."""
        from ppmtrack.pipelines.io.dlc import write_dlc_labels

        if not scorer or not scorer.replace("_", "").replace("-", "").isalnum():
            raise WebInputError("the scorer name must be letters, digits, '-' or '_'")
        if not self.frames and not self.other_frames:
            raise WebInputError("label a frame before exporting")
        project = self.output.with_name(f"{self.output.stem}_dlc")
        return [str(p) for p in write_dlc_labels(self.labels(), project, scorer)]

    def close(self) -> None:
        """Close the videos."""
        for v in self.videos:
            v.close()


def find_tracks_csv(results: Path) -> Path:
    """The tracks CSV of a results folder (or the CSV itself); an error names the choices when there are several."""
    results = Path(results)
    if results.is_file():
        return results
    if not results.is_dir():
        raise LabelsError(f"{results}: no such results folder")
    found = []
    for path in sorted(results.glob("*.csv")):
        with open(path, encoding="utf-8", errors="replace") as f:
            if f.readline().rstrip("\r\n") == HEADER:
                found.append(path)
    if not found:
        raise LabelsError(f"{results}: holds no tracks CSV (written by 'ppmtrack track')")
    if len(found) > 1:
        raise LabelsError(f"{results}: holds several tracks CSVs ({', '.join(p.name for p in found)}); "
                          "name the one to review")
    return found[0]


def low_confidence_frames(confidence: np.ndarray, frames: np.ndarray, n: int = LOWEST_CONFIDENCE_FRAMES) -> list:
    """The ``n`` frames whose least confident keypoint is least confident, lowest first."""
    with np.errstate(invalid="ignore"):
        worst = np.where(np.isnan(confidence), 0.0, confidence).min(axis=1) if confidence.size else np.array([])
    order = np.argsort(worst, kind="stable")[:n]
    return [{"frame": int(frames[t]), "confidence": round(float(worst[t]), 4)} for t in order]


def gaps(visible: np.ndarray, frames: np.ndarray, names: list[str]) -> list[dict]:
    """Runs of frames where a keypoint is not visible, and runs of frames that were not tracked at all."""
    out = []
    for k, name in enumerate(names):
        hidden = np.concatenate([[False], ~visible[:, k], [False]])
        starts, ends = np.flatnonzero(~hidden[:-1] & hidden[1:]), np.flatnonzero(hidden[:-1] & ~hidden[1:])
        out += [{"keypoint": name, "start": int(frames[s]), "end": int(frames[e - 1])}
                for s, e in zip(starts, ends, strict=True)]
    step = int(np.median(np.diff(frames))) if len(frames) > 1 else 1
    for a, b in zip(frames[:-1], frames[1:], strict=True):
        if b - a > step:
            out.append({"keypoint": None, "start": int(a) + 1, "end": int(b) - 1})
    return sorted(out, key=lambda g: (g["start"], g["keypoint"] or ""))


class ReviewSession:
    """The reviewer's state: a run's tracks, its video, and the support file that corrected frames go to.

    Parameters
    ----------
    results : Path
        A folder written by ``ppmtrack track`` (or its tracks CSV).
    video : Path, optional
        The tracked video; by default the source recorded in ``<stem>.summary.json``.
    support : Path, optional
        The support set the engine was adapted on: its frames are copied into ``output`` when that is new.
    output : Path, optional
        Where corrected frames are saved (default ``<results>/<stem>.support.json``); continued if it exists.
    """

    def __init__(self, results: Path, video: Path | None = None, support: Path | None = None,
                 output: Path | None = None):
        self.csv = find_tracks_csv(Path(results))
        self.results = self.csv.parent
        self.stem = self.csv.stem
        self.tracks = read_tracks_csv(self.csv)
        if not len(self.tracks):
            raise LabelsError(f"{self.csv}: holds no tracked frame")
        summary_path = self.results / f"{self.stem}.summary.json"
        self.summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if video is None:
            source = (self.summary.get("input") or {}).get("source")
            if source is None or self.summary.get("input", {}).get("live"):
                raise LabelsError(f"{self.results}: no video recorded for this run; name it with --video")
            video = Path(source)
            if not video.is_file():
                raise LabelsError(f"{self.csv}: the tracked video {source} is not there; name it with --video")
        self.output = Path(output) if output else self.results / f"{self.stem}.support.json"
        if output is not None and support is not None and _same_file(self.output, support):
            raise LabelsError(f"{self.output}: -o names the --support file, which review never writes; leave out -o "
                              f"(corrected frames then go to {self.results / f'{self.stem}.support.json'}) or name "
                              "another file")
        self.video = VideoFrames(video)
        self.labels = _read_existing(self.output)
        if self.labels is None and support is not None:
            from ppmtrack.pipelines.io.formats import read_labels

            self.labels = read_labels(support)
        if self.labels is None:
            self.labels = Labels(names=list(self.tracks.names), frames=[],
                                 keypoints=np.zeros((0, len(self.tracks.names), 2)), source=self.output)
        if list(self.labels.names) != list(self.tracks.names):
            raise LabelsError(f"{self.labels.source}: keypoints {', '.join(self.labels.names)} differ from the "
                              f"tracked ones ({', '.join(self.tracks.names)})")
        self.model = (self.summary.get("engine") or {}).get("model")
        self.lock = threading.Lock()
        self.adapting: subprocess.Popen | None = None
        self.adapt_log: Path | None = None
        self.adapt_engine: str | None = None

    def document(self) -> dict:
        """What the page shows first, as JSON (NaN as null): the run's extent, a binned overview of confidence and
        positions for the plots, the weakest frames and the gaps — not the tracks themselves, which the page asks
        for by frame range (:meth:`tracks_page`), so that an hour-long run opens at once."""
        t = self.tracks
        found = gaps(t.visible, t.frame, list(t.names))
        return {
            "mode": "review",
            "csv": str(self.csv),
            "output": str(self.output),
            "keypoints": list(t.names),
            "skeleton": [list(e) for e in self.labels.skeleton],
            "videos": [dict(self.video.info(), id=0)],
            "tracked": {"count": len(t), "first": int(t.frame[0]), "last": int(t.frame[-1]),
                        "page_limit": MAX_PAGE_FRAMES},
            "overview": self.overview(),
            "lowest": low_confidence_frames(t.confidence, t.frame),
            "gaps": found[:MAX_GAPS_LISTED],
            "gaps_total": len(found),
            "support_frames": [r.frame for r in self.labels.frames if r.video is not None
                               and _same_file(r.video, self.video.path)],
            "adapt_command": self.adapt_command(),
        }

    def overview(self, bins: int = OVERVIEW_BINS) -> dict:
        """The run in at most ``bins`` spans of frames: each span's first frame, lowest confidence and mean x, y
        per keypoint (null where nothing was tracked or visible) — enough for a plot as wide as a screen."""
        t = self.tracks
        first, last = int(t.frame[0]), int(t.frame[-1])
        width = max(1, math.ceil((last - first + 1) / bins))
        which = (t.frame - first) // width
        starts, index = np.unique(which, return_inverse=True)
        n, k = len(starts), len(t.names)
        low = np.full((n, k), np.inf)
        np.minimum.at(low, index, np.where(np.isnan(t.confidence), np.inf, t.confidence))
        sums, counts = np.zeros((n, k, 2)), np.zeros((n, k, 1))
        finite = np.isfinite(t.xy).all(axis=-1, keepdims=True)
        np.add.at(sums, index, np.where(finite, t.xy, 0.0))
        np.add.at(counts, index, finite.astype(float))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / counts
        low[np.isinf(low)] = np.nan
        return {"frame": [int(first + b * width) for b in starts], "width": width,
                "confidence": _nested(low, 3), "x": _nested(mean[..., 0], 1), "y": _nested(mean[..., 1], 1)}

    def tracks_page(self, start: int, stop: int) -> dict:
        """The tracked frames in ``[start, stop)`` (at most :data:`MAX_PAGE_FRAMES` video frames): their numbers,
        positions, confidences and visibility, as JSON (NaN as null)."""
        if stop <= start:
            raise WebInputError("stop must be after start")
        if stop - start > MAX_PAGE_FRAMES:
            raise WebInputError(f"ask for at most {MAX_PAGE_FRAMES} frames at a time")
        t = self.tracks
        lo, hi = np.searchsorted(t.frame, [start, stop])
        return {"start": start, "stop": stop, "frame": [int(f) for f in t.frame[lo:hi]],
                "xy": _nested(t.xy[lo:hi], 2), "confidence": _nested(t.confidence[lo:hi], 3),
                "visible": [[int(v) for v in row] for row in t.visible[lo:hi]]}

    def adapt_argv(self) -> list[str]:
        """The arguments of ``ppmtrack adapt`` on the extended support file, to an engine file not there yet."""
        engine = self.results / f"{self.stem}.refined.engine"
        n = 1
        while engine.exists():
            n += 1
            engine = self.results / f"{self.stem}.refined-{n}.engine"
        return ["adapt", str(self.output), "-o", str(engine)] + (["--model", self.model] if self.model else [])

    def adapt_command(self) -> str:
        """The command line that re-adapts an engine on the extended support file."""
        return "ppmtrack " + " ".join(shlex.quote(a) for a in self.adapt_argv())

    def start_adapt(self) -> dict:
        """Run ``ppmtrack adapt`` on the support file in the background; its output goes to a log file."""
        if self.adapting is not None and self.adapting.poll() is None:
            raise WebInputError("an adaptation is already running")
        if not self.labels.frames:
            raise WebInputError("add a corrected frame to the support set first")
        argv = self.adapt_argv()
        self.adapt_log = self.results / f"{self.stem}.adapt.log"
        with open(self.adapt_log, "w") as log:
            self.adapting = subprocess.Popen([sys.executable, "-m", "ppmtrack.pipelines.cli", *argv],
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.adapt_engine = argv[3]
        return self.adapt_status()

    def adapt_status(self) -> dict:
        """Whether the background adaptation runs, its exit status and the end of its log."""
        if self.adapting is None:
            return {"running": False, "returncode": None, "log": "", "engine": None, "command": self.adapt_command()}
        log = self.adapt_log.read_text(errors="replace")[-3000:] if self.adapt_log.exists() else ""
        code = self.adapting.poll()
        return {"running": code is None, "returncode": code, "log": log.replace("\r", "\n"),
                "engine": self.adapt_engine, "command": self.adapt_command()}

    def add_support_frame(self, doc: dict) -> dict:
        """Add (or replace) one frame of the video with the page's points in the support file, and save it."""
        with self.lock:  # two tabs adding frames at once both keep theirs
            return self._add_support_frame(doc)

    def _add_support_frame(self, doc: dict) -> dict:
        if not isinstance(doc, dict) or not is_int(doc.get("frame")):
            raise WebInputError("expected {frame: N, points: {name: [x, y] | null}}")
        frame = doc["frame"]
        if not 0 <= frame < self.video.n_frames:
            raise WebInputError(f"{self.video.path.name} has no frame {frame}")
        names = list(self.labels.names)
        kp = _check_points(doc.get("points", {}), names, self.video.width, self.video.height, f"frame {frame}")
        if np.isnan(kp).all():
            raise WebInputError(f"frame {frame}: no keypoint placed")
        keep = [i for i, r in enumerate(self.labels.frames)
                if not (r.video is not None and r.frame == frame and _same_file(r.video, self.video.path))]
        self.labels = Labels(
            names=names, frames=[self.labels.frames[i] for i in keep] + [FrameRef(video=self.video.path,
                                                                                  frame=frame)],
            keypoints=np.concatenate([self.labels.keypoints[keep], kp[None]]),
            skeleton=self.labels.skeleton, flip_pairs=self.labels.flip_pairs, source=self.output)
        write_annotation(self.labels, self.output)
        return {"saved": str(self.output), "frames": len(self.labels.frames), "adapt_command": self.adapt_command()}

    def close(self) -> None:
        """Close the video; a running adaptation goes on (its log and engine file are written as usual)."""
        self.video.close()
