"""Run an exported engine (`engine.onnx_export.export_onnx`) with onnxruntime, in place of `Engine.predict`.

Only the ``.onnx`` file is needed: keypoint names, skeleton, resolution and model name are in its metadata.
Frames are letterboxed on the CPU with `engine.geometry.engine_input` (the mapping of `Engine.predict`),
the graph returns keypoints in engine-input pixels, and they are mapped back to frame pixels here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine.api import Prediction
from ppmtrack.engine.engine_file import EngineFileError, file_sha256
from ppmtrack.engine.geometry import engine_input
from ppmtrack.engine.onnx_export import ONNX_FORMAT, ONNX_FORMAT_VERSION

# fastest first; each used only when the installed onnxruntime offers it (onnxruntime-gpu: the first two)
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxFileError(EngineFileError):
    """An ONNX file is missing, unreadable, or not a ppmtrack export this version understands."""


@dataclass
class OnnxModelInfo:
    """What a pipeline reads from `Engine.model`: the diffusion model's name and revision, and the device."""

    name: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype = torch.float32


@dataclass
class OnnxEngine:
    """An exported engine in an onnxruntime session; like `engine.Engine`, an `engine.interface.EngineLike`.

    Attributes
    ----------
    names, skeleton, flip_pairs, resolution, layers, info, model
        As on `engine.Engine`; ``model`` is an `OnnxModelInfo` (``name``, ``revision``, ``device``,
        ``dtype``).
    providers : list of str
        The execution providers the session uses, in priority order.
    with_maps : bool
        Whether the graph also outputs the fused and foreground maps (``predict(..., return_maps=True)``).
    batch_size : int or None
        The exported fixed batch size, or None for a dynamic batch.
    metadata : dict
        The raw ``metadata_props`` of the file.
    """

    path: Path
    session: object
    names: list[str]
    skeleton: list[tuple]
    flip_pairs: list[tuple]
    resolution: int
    layers: list[str]
    model: OnnxModelInfo
    providers: list[str]
    with_maps: bool
    batch_size: int | None
    info: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    sha256: str | None = None  # of the .onnx file's bytes

    @classmethod
    def load(cls, path: str | Path, providers: list | None = None) -> OnnxEngine:
        """Open an exported engine.

        Parameters
        ----------
        path : str or Path
            The ``.onnx`` file written by `export_onnx` (``<path>.data`` beside it for models over 2 GiB).
        providers : list, optional
            onnxruntime execution providers, as names or ``(name, options)`` pairs, e.g.
            ``[("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider"]``.
            Default: TensorRT, then CUDA, when the installed onnxruntime (``onnxruntime-gpu``) offers them,
            and the CPU last. If a GPU provider fails to start, the CPU is used and a warning is printed.
        """
        path = Path(path)
        if not path.is_file():
            raise OnnxFileError(f"{path}: no such ONNX file; write one with `ppmtrack export-onnx ENGINE -o "
                                f"{path.name}` or engine.onnx_export.export_onnx")
        chosen = list(providers) if providers else default_providers()
        try:
            session = _open_session(path, chosen)
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types)
            raise OnnxFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:300]}); "
                                f"export it again") from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if meta.get("format") != ONNX_FORMAT:
            raise OnnxFileError(f"{path}: an ONNX model, but not a ppmtrack engine export (no "
                                f"'{ONNX_FORMAT}' metadata); export the engine with `ppmtrack export-onnx`")
        version = int(meta.get("format_version", "0"))
        if version != ONNX_FORMAT_VERSION:
            raise OnnxFileError(f"{path}: ppmtrack ONNX format {version}, but this ppmtrack reads format "
                                f"{ONNX_FORMAT_VERSION}; export the engine again with this version")
        used = session.get_providers()
        model = json.loads(meta["model"])
        batch = session.get_inputs()[0].shape[0]
        info = json.loads(meta.get("info", "{}"))
        info["onnx"] = {"path": str(path), "providers": used, "name": meta.get("name"),
                        "ppmtrack_version": meta.get("ppmtrack_version")}
        return cls(
            path=path,
            session=session,
            names=json.loads(meta["keypoints"]),
            skeleton=[tuple(e) for e in json.loads(meta.get("skeleton", "[]"))],
            flip_pairs=[tuple(e) for e in json.loads(meta.get("flip_pairs", "[]"))],
            resolution=int(meta["resolution"]),
            layers=json.loads(meta.get("layers", "[]")),
            model=OnnxModelInfo(model["name"], model.get("revision"),
                                torch.device("cuda" if used[0] in GPU_PROVIDERS else "cpu")),
            providers=used,
            with_maps=json.loads(meta.get("with_maps", "false")),
            batch_size=batch if isinstance(batch, int) else None,
            info=info,
            metadata=meta,
            sha256=file_sha256(path),
        )

    @property
    def name(self) -> str:
        """The engine name given at export (by default the ONNX file's stem)."""
        return self.metadata.get("name", self.path.stem)

    def predict(self, frames, return_maps: bool = False, boxes=None, crop_size: int | None = None,
                return_foreground: bool = False) -> Prediction:
        """Keypoints, confidences (and maps) for a batch of same-size RGB uint8 frames, as `Engine.predict`.

        `frames`: (B, H, W, 3) array or tensor, or a list of (H, W, 3) arrays of equal size. Keypoints come
        back in original-frame pixels. ``return_maps`` needs a graph exported with ``with_maps=True``;
        ``return_foreground`` gives the foreground map only where the graph has it (else None). ``boxes``:
        crops as in `Engine.predict`, at the graph's resolution (``crop_size`` may only repeat it).
        """
        if crop_size not in (None, self.resolution):
            raise ValueError(f"{self.path} takes {self.resolution}² inputs only; a crop size of {crop_size} needs "
                             "the engine file (--backend torch)")
        if return_maps and not self.with_maps:
            raise ValueError(f"{self.path} was exported without maps; export again with with_maps=True "
                             f"(`ppmtrack export-onnx --with-maps`) to get them")
        x, box = engine_input(frames, self.resolution, torch.device("cpu"), boxes)
        out = self._run(x.numpy())
        return Prediction(
            keypoints=box.to_frame(out["keypoints"].astype(np.float64)),
            confidence=out["confidence"].astype(np.float64),
            sharpness=out["sharpness"].astype(np.float64),
            maps=out["maps"] if return_maps else None,
            foreground=out["foreground"] if return_maps or (return_foreground and self.with_maps) else None,
        )

    def reset_stream(self) -> None:
        """Nothing to forget: every frame runs the whole exported graph (part of `engine.interface.EngineLike`)."""

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph; a fixed-batch export gets the frames in chunks of its size, the last one padded."""
        names = [o.name for o in self.session.get_outputs()]
        n = self.batch_size or len(images)
        parts = []
        for start in range(0, len(images), n):
            chunk = images[start:start + n]
            pad = n - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            res = self.session.run(names, {"images": np.ascontiguousarray(chunk, dtype=np.float32)})
            parts.append([r[: n - pad] for r in res])
        return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(names)}


def default_providers() -> list[str]:
    """TensorRT, CUDA and CPU execution providers, those the installed onnxruntime offers, fastest first."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def _open_session(path: Path, providers: list):
    import warnings

    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as e:
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if not any(p in GPU_PROVIDERS for p in names) or "CPUExecutionProvider" not in names:
            raise
        warnings.warn(f"onnxruntime could not start {names[0]} ({type(e).__name__}: {str(e)[:200]}); "
                      f"running {path.name} on the CPU", RuntimeWarning, stacklevel=3)
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


__all__ = ["OnnxEngine", "OnnxFileError", "OnnxModelInfo", "default_providers"]
