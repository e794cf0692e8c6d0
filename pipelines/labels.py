"""Labels: keypoint annotations of some frames, read from any supported format, before images are loaded."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.engine.support import SupportSet

logger = logging.getLogger("ppmtrack")


class LabelsError(PpmtrackError, ValueError):
    """An annotation file is malformed; the message names the file and the entry."""


@dataclass
class FrameRef:
    """Where a labelled frame's pixels come from: an image file, a video frame, or an in-memory array."""

    image: Path | None = None
    video: Path | None = None
    frame: int | None = None
    pixels: np.ndarray | None = None  # RGB uint8, e.g. frames embedded in a SLEAP file

    def describe(self) -> str:
        if self.image is not None:
            return str(self.image)
        if self.video is not None:
            return f"{self.video} frame {self.frame}"
        return "embedded frame"


@dataclass
class Labels:
    """Keypoint labels for a set of frames.

    Parameters
    ----------
    names : list of str
        Keypoint names (K).
    frames : list of FrameRef
        The labelled frames (F).
    keypoints : np.ndarray
        (F, K, 2) pixel coordinates; NaN where a keypoint is missing (not visible or not labelled).
    skeleton, flip_pairs : list of (str, str)
        Edges for drawing; left/right pairs for flip augmentation.
    source : Path
        The file the labels came from, for error messages.
    display : dict
        Drawing settings of the labelling tool, kept for the annotated video: a DeepLabCut project's
        ``config.yaml`` ``dotsize``, ``pcutoff`` and ``colormap`` (only those present).
    individuals : list of str
        Names of the N animals of a multi-animal file (empty for one animal).
    instances : np.ndarray, optional
        (F, N, K, 2) every individual's keypoints, NaN where an individual is absent; ``keypoints`` is then
        the first individual's. Adaptation trains on all instances.
    """

    names: list[str]
    frames: list[FrameRef]
    keypoints: np.ndarray
    skeleton: list[tuple[str, str]] = field(default_factory=list)
    flip_pairs: list[tuple[str, str]] = field(default_factory=list)
    source: Path = Path("<memory>")
    display: dict = field(default_factory=dict)
    individuals: list[str] = field(default_factory=list)
    instances: np.ndarray | None = None

    def __post_init__(self):
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64)
        expected = (len(self.frames), len(self.names), 2)
        if self.keypoints.shape != expected:
            raise LabelsError(f"{self.source}: keypoints have shape {self.keypoints.shape}, expected {expected}")
        if self.instances is not None:
            self.instances = np.asarray(self.instances, dtype=np.float64)
            shape = (len(self.frames), len(self.individuals), len(self.names), 2)
            if self.instances.shape != shape:
                raise LabelsError(f"{self.source}: instances have shape {self.instances.shape}, expected {shape}")
        for a, b in list(self.skeleton) + list(self.flip_pairs):
            for n in (a, b):
                if n not in self.names:
                    raise LabelsError(f"{self.source}: skeleton/flip pair names unknown keypoint {n!r}")
        self._check_duplicate_frames()

    def _check_duplicate_frames(self) -> None:
        """Raise LabelsError if one frame is labelled twice with different coordinates; identical copies of one
        entry (same image or video frame, same coordinates) are kept once, with a warning."""
        first_entry: dict[tuple, int] = {}
        copies: dict[int, int] = {}
        for i, ref in enumerate(self.frames):
            if ref.image is not None:
                key: tuple = ("image", str(Path(ref.image).resolve()))
            elif ref.video is not None:
                key = ("video", str(Path(ref.video).resolve()), ref.frame)
            else:
                continue
            j = first_entry.setdefault(key, i)
            if j != i and not np.array_equal(self.keypoints[i], self.keypoints[j], equal_nan=True):
                differs = np.flatnonzero(~np.all((self.keypoints[i] == self.keypoints[j])
                                                 | (np.isnan(self.keypoints[i]) & np.isnan(self.keypoints[j])),
                                                 axis=1))
                name = self.names[int(differs[0])]
                raise LabelsError(
                    f"{self.source}: {ref.describe()} is labelled twice (entries {j} and {i}) with different "
                    f"coordinates, e.g. {name!r} at {_xy(self.keypoints[j, differs[0]])} and "
                    f"{_xy(self.keypoints[i, differs[0]])}; keep one of them"
                )
            if j != i and self._same_instances(i, j):
                copies[i] = j
        self._drop_copies(copies, "the same frame")

    def _same_instances(self, i: int, j: int) -> bool:
        return self.instances is None or np.array_equal(self.instances[i], self.instances[j], equal_nan=True)

    def _drop_copies(self, copies: dict[int, int], what: str) -> list[int]:
        """Remove the entries ``copies`` maps to an earlier identical entry; warn once per copy; return the kept."""
        if not copies:
            return list(range(len(self.frames)))
        for i, j in copies.items():
            logger.warning("%s: entry %d (%s) is a copy of entry %d (%s, same labels); counted once",
                           self.source, i, self.frames[i].describe(), j, what)
        keep = [i for i in range(len(self.frames)) if i not in copies]
        self.frames = [self.frames[i] for i in keep]
        self.keypoints = self.keypoints[keep]
        if self.instances is not None:
            self.instances = self.instances[keep]
        return keep

    def load_images(self) -> list[np.ndarray]:
        """Read every labelled frame as an RGB uint8 array, checking that its keypoints lie inside it."""
        from ppmtrack.pipelines.sources import read_frames_at

        images: list[np.ndarray | None] = [None] * len(self.frames)
        by_video: dict[Path, list[int]] = {}
        for i, ref in enumerate(self.frames):
            if ref.pixels is not None:
                images[i] = np.ascontiguousarray(ref.pixels[..., :3]).astype(np.uint8)
            elif ref.image is not None:
                bgr = _read_image(Path(ref.image))
                if bgr is None:
                    raise LabelsError(f"{self.source}: frame {i}: cannot read image {ref.image} (missing, or "
                                      "not an image file)")
                images[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            elif ref.video is not None and ref.frame is not None:
                by_video.setdefault(ref.video, []).append(i)
            else:
                raise LabelsError(f"{self.source}: frame {i} names neither an image nor a video frame")
        for video, idx in by_video.items():
            wanted = sorted({self.frames[i].frame for i in idx})
            try:
                got = read_frames_at(video, wanted)
            except (OSError, ValueError) as e:
                raise LabelsError(f"{self.source}: cannot read frames of {video}: {e}") from e
            for i in idx:
                f = self.frames[i].frame
                if f not in got:
                    raise LabelsError(f"{self.source}: frame {i}: {video} has no frame {f} (it is past the end "
                                      "of the video, or damaged)")
                images[i] = got[f]
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            kp = self.keypoints[i] if self.instances is None else self.instances[i].reshape(-1, 2)
            ok = np.isnan(kp[:, 0]) | ((kp[:, 0] >= -0.5) & (kp[:, 0] <= w - 0.5) & (kp[:, 1] >= -0.5)
                                       & (kp[:, 1] <= h - 0.5))
            if not ok.all():
                bad = self.names[int(np.flatnonzero(~ok)[0])]
                raise LabelsError(
                    f"{self.source}: frame {i} ({self.frames[i].describe()}): keypoint {bad!r} at "
                    f"{_xy(kp[~ok][0])} lies outside the {w}x{h} image"
                )
        return images

    def to_support(self) -> SupportSet:
        """Load the images and return the engine's support set (with every individual's instances)."""
        images = self.load_images()
        seen: dict[tuple, int] = {}
        copies: dict[int, int] = {}
        for i, img in enumerate(images):  # identical pixels and labels under two names (a copied image file)
            key = (img.shape, hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
            j = seen.setdefault(key, i)
            if j != i and np.array_equal(self.keypoints[i], self.keypoints[j], equal_nan=True) \
                    and self._same_instances(i, j):
                copies[i] = j
        images = [images[i] for i in self._drop_copies(copies, "identical pixels")]
        every = self.keypoints if self.instances is None else self.instances
        if not np.isfinite(every).any():
            raise LabelsError(f"{self.source}: no keypoint is labelled in any frame")
        never = [n for k, n in enumerate(self.names) if not np.isfinite(every[..., k, :]).any()]
        if never:
            logger.warning("%s: never labelled in any frame: %s. The engine has nothing to learn these keypoints "
                           "from, so their tracks would be meaningless; label each in at least one frame or "
                           "remove it", self.source, ", ".join(never))
        return SupportSet(
            names=list(self.names),
            images=images,
            keypoints=self.keypoints,
            other_instances=None if self.instances is None else self.instances[:, 1:],
            skeleton=list(self.skeleton),
            flip_pairs=list(self.flip_pairs),
            labels=[f"{self.source} frame {i} ({r.describe()})" for i, r in enumerate(self.frames)],
            display=dict(self.display),
        )


def _xy(point) -> str:
    """A point as plain numbers for messages: ``(12.3, 45.6)``."""
    return f"({float(point[0]):.1f}, {float(point[1]):.1f})"


def _read_image(path: Path) -> np.ndarray | None:
    """Read an image as BGR, or None if it is missing or not an image (without OpenCV's own warnings)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)
