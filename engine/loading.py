"""`load_engine(path, backend="auto")`: the one way to open an adapted engine, whichever backend runs it.

As DeepLabCut-live's runner factory: the caller names a file and, if it wants, a backend; the factory picks
the class (`engine.api.Engine` for PyTorch, `engine.onnx_runtime.OnnxEngine` for an ONNX export) and returns
an object that satisfies `engine.interface.EngineLike` completely. Nothing outside `engine/` tests a file's
suffix.
"""

from __future__ import annotations

from pathlib import Path

from ppmtrack.engine.errors import UsageError
from ppmtrack.engine.interface import EngineLike

BACKENDS = ("auto", "torch", "onnx")
"""``auto`` (by the file: ``.onnx`` is an ONNX export, anything else an engine file), ``torch``, ``onnx``."""


def engine_backend(path: str | Path | None, backend: str = "auto") -> str:
    """The backend that runs the engine at ``path``: ``backend`` itself, or for ``"auto"`` ``"onnx"`` for a
    ``.onnx`` file and ``"torch"`` otherwise (also when no path is given: an engine adapted now)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown engine backend {backend!r}; choose among {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "onnx" if path is not None and Path(path).suffix.lower() == ".onnx" else "torch"


def load_engine(path: str | Path, backend: str = "auto", *, model=None, device: str | None = None,
                dtype: str | None = None, speed=None, providers: list | None = None) -> EngineLike:
    """Open the adapted engine at ``path`` with the backend :func:`engine_backend` picks.

    Parameters
    ----------
    path : str or Path
        An engine file (``ppmtrack adapt``) or an ONNX export of one (``ppmtrack export-onnx``).
    backend : {"auto", "torch", "onnx"}
        Which runtime; ``auto`` decides by the file (see :func:`engine_backend`).
    model, device, dtype, speed
        PyTorch backend only, as for :meth:`engine.api.Engine.load`: the diffusion model (default: the one the
        engine was adapted on), the device, the weights' dtype and the inference optimisations
        (`engine.speed.SpeedConfig`).
    providers : list, optional
        ONNX backend only: onnxruntime execution providers (:meth:`engine.onnx_runtime.OnnxEngine.load`).

    Returns
    -------
    EngineLike
        The engine; ``engine.path`` is the file and ``engine.sha256`` the SHA-256 of its bytes, taken from the
        read that loaded it (runs record it without reading the file again).
    """
    if engine_backend(path, backend) == "onnx":
        from ppmtrack.engine.onnx_runtime import OnnxEngine  # onnxruntime is optional: imported when asked for

        return OnnxEngine.load(path, providers=providers)
    from ppmtrack.engine.api import Engine

    return Engine.load(path, model=model, device=device, dtype=dtype, speed=speed)
