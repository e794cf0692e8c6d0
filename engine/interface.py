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
    """

    names: list[str]
    skeleton: list[tuple]
    flip_pairs: list[tuple]
    resolution: int
    layers: list[str]
    info: dict
    model: Any
    path: Path | None

    def predict(self, frames, return_maps: bool = False) -> Prediction:
        """Keypoints (frame pixels), confidences (and maps) for a batch of same-size RGB uint8 frames."""
        ...

    def reset_stream(self) -> None:
        """Forget what is carried from frame to frame; called at each new source and after a gap."""
        ...
