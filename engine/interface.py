"""`EngineLike`: what a pipeline may use of an engine, satisfied by `Engine` (PyTorch) and `OnnxEngine`.

Pipelines type their engine parameters with it, so either backend can be passed and neither is reached into.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ppmtrack.engine.api import Prediction


@runtime_checkable
class EngineLike(Protocol):
    """An adapted engine as the pipelines see it.

    Attributes
    ----------
    names : list of str
        Keypoint names, in output order.
    skeleton, flip_pairs : list of (str, str)
        Edges drawn between keypoints; left/right keypoint pairs.
    resolution : int
        Side of the square engine input, in pixels.
    layers : list of str
        The cross-attention layers whose maps are fused.
    info : dict
        Adaptation record (``display`` settings, ``adaptation`` timings, ...).
    model
        The diffusion model or its description: ``name``, ``revision``, ``device``, ``dtype``.
    path : Path or None
        The file the engine came from (None for an engine never saved).
    sha256 : str or None
        SHA-256 of that file's bytes, from the read that loaded it (None for an engine never saved).
    """

    names: list[str]
    skeleton: list[tuple]
    flip_pairs: list[tuple]
    resolution: int
    layers: list[str]
    info: dict
    model: Any
    path: Path | None
    sha256: str | None

    def predict(self, frames, return_maps: bool = False, boxes=None, crop_size: int | None = None,
                return_foreground: bool = False) -> Prediction:
        """Keypoints (frame pixels), confidences (and maps) for a batch of same-size RGB uint8 frames.

        ``boxes`` (N, 4) reads each frame's box (x0, y0, x1, y1) at ``crop_size`` pixels instead of the
        letterboxed frame (what :mod:`pipelines.crops` uses); ``return_foreground`` adds the foreground map.
        """
        ...

    def reset_stream(self) -> None:
        """Forget what is carried from frame to frame; called at each new source and after a gap."""
        ...


@runtime_checkable
class MultiAnimalEngineLike(EngineLike, Protocol):
    """An engine that also finds several animals per frame (``track --animals``): `Engine` (PyTorch); an ONNX
    export holds one animal's graph and does not."""

    def predict_animals(self, frames, max_animals: int, exact: bool = True, appearance: bool = True,
                        threshold: float = 0.5, crops: bool = False) -> list:
        """Per frame, the animals found: each one's keypoints, confidences and appearance vector."""
        ...

