"""The adapted engine file: prompts as safetensors tensors, everything else as JSON metadata in the same file.

The header also holds ``sha256``: a checksum over the file kind, the metadata and every tensor (name, dtype,
shape, bytes), checked on every read, so a file damaged after it was written (a flipped byte on a disk or
in a copy) is refused instead of silently giving other tracks. Tensors holding NaN or infinity are never
written and never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ppmtrack.engine.atomic import atomic_path
from ppmtrack.engine.errors import PpmtrackError

FORMAT = "ppmtrack-engine"
FORMAT_VERSION = 1

logger = logging.getLogger("ppmtrack")


class EngineFileError(PpmtrackError, ValueError):
    """An engine file is unreadable, from an incompatible version, or for another model."""


def write_engine_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict, kind: str = FORMAT) -> None:
    """Write tensors and metadata atomically (temp file, then rename), so a crash never leaves half a file.

    `kind` names the file's content: ``ppmtrack-engine`` (an adapted engine) or ``ppmtrack-foreground``
    (a foreground prompt pre-trained on a base set).
    """
    from safetensors.torch import save_file

    path = Path(path)
    what = _what(kind)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    bad = non_finite(tensors)
    if bad:
        raise EngineFileError(f"refusing to write the {what} file {path}: {bad}; the adaptation did not converge; "
                              f"adapt again with a lower learning rate")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": kind, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta, sort_keys=True)}
    header["sha256"] = tensor_checksum(kind, header["meta"], tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        umask = os.umask(0)  # safetensors creates the file 0600; give it the mode every other output gets
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)


@dataclass(frozen=True)
class EngineFileContent:
    """An engine (or foreground-prompt) file as read once: its tensors, its metadata and the SHA-256 of its bytes."""

    tensors: dict[str, torch.Tensor]
    meta: dict
    sha256: str


def read_engine_file(path: str | Path, kind: str = FORMAT) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an engine (or foreground-prompt) file; raise EngineFileError saying why if this version cannot."""
    content = load_engine_file(path, kind)
    return content.tensors, content.meta


def load_engine_file(path: str | Path, kind: str = FORMAT) -> EngineFileContent:
    """Read an engine (or foreground-prompt) file once: tensors, metadata and the SHA-256 of the same bytes (what
    a run's summary records), so that nothing reads the file again; EngineFileError saying why if this version
    cannot read it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    what = _what(kind)
    if not path.is_file():
        raise EngineFileError(f"{path}: no such {what} file")
    try:
        data = path.read_bytes()
        header = _safetensors_metadata(data)
        tensors = load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise EngineFileError(f"{path}: not a ppmtrack {what} file, or a damaged one ({e})") from None
    if header.get("format") != kind:
        raise EngineFileError(f"{path}: not a ppmtrack {what} file (no '{kind}' header)")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        raise EngineFileError(f"{path}: the {what} file's format version {header.get('format_version')!r} is not "
                              "a number (was the file edited?); adapt again") from None
    if version > FORMAT_VERSION:
        raise EngineFileError(f"{path}: engine file format {version} is newer than this ppmtrack understands "
                              f"({FORMAT_VERSION}); upgrade ppmtrack")
    if version < 1:
        raise EngineFileError(f"{path}: engine file format {version} is no longer supported; adapt again")
    stored = header.get("sha256")
    if stored is None:
        logger.warning("%s: written by an older ppmtrack without a checksum; its integrity cannot be verified "
                       "(save it again to add one)", path)
    elif stored != tensor_checksum(kind, header.get("meta", ""), tensors):
        raise EngineFileError(f"{path}: the {what} file is damaged (its checksum does not match its content: it "
                              f"changed after it was written); copy it again from a good copy or adapt again")
    bad = non_finite(tensors)
    if bad:
        raise EngineFileError(f"{path}: unusable {what} file: {bad}; adapt again (with a lower learning rate)")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, ValueError) as e:
        raise EngineFileError(f"{path}: the {what} file's metadata is unreadable ({e}); adapt again") from None
    if kind == FORMAT:
        problem = engine_meta_problem(meta, tensors)
        if problem:
            raise EngineFileError(f"{path}: the engine file's metadata is not what ppmtrack writes: {problem} (was "
                                  "it edited by hand?); adapt again, or restore the file from a good copy")
    return EngineFileContent(tensors, meta, hashlib.sha256(data).hexdigest())


def _safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's bytes (an 8-byte little-endian header length, then the JSON
    header); ValueError if the bytes do not start so."""
    if len(data) < 8:
        raise ValueError("the file is shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError(f"the header claims {size} bytes, the file holds {len(data) - 8} after the size")
    header = json.loads(data[8:8 + size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header.get("__metadata__") or {}


def engine_meta_problem(meta, tensors: dict[str, torch.Tensor]) -> str:
    """What is wrong with an engine file's metadata ("" when the fields every reader relies on are sound)."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    names = meta.get("keypoints")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        return "'keypoints' must be a non-empty list of names"
    if len(set(names)) != len(names):
        return "'keypoints' names a keypoint twice"
    prompts = tensors.get("keypoint_prompts")
    if prompts is None or tensors.get("foreground_prompt") is None:
        return "the prompt tensors are missing"
    if prompts.ndim != 2 or prompts.shape[0] != len(names):
        return f"{len(names)} keypoints but {tuple(prompts.shape)} keypoint prompts"
    model = meta.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(model.get("fingerprint"),
                                                                                            dict)):
        return "'model' must name the model and hold its fingerprint"
    if model.get("revision") is not None and not isinstance(model["revision"], str):
        return "'model.revision' must be text"
    for key in ("adapt_config", "fgar", "info"):
        if key in meta and not isinstance(meta[key], dict):
            return f"{key!r} must be a JSON object"
    if not isinstance(meta.get("adapt_config"), dict):
        return "'adapt_config' is missing"
    for key in ("skeleton", "flip_pairs"):
        pairs = meta.get(key, [])
        if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and all(n in names for n in p)
                                                for p in pairs)):
            return f"{key!r} must be pairs of the keypoint names"
    return ""


def _what(kind: str) -> str:
    return "engine" if kind == FORMAT else "foreground-prompt"


def tensor_checksum(kind: str, meta: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the file kind, the metadata JSON and each tensor's name, dtype, shape and bytes (by name)."""
    h = hashlib.sha256()
    for part in (kind, meta):
        h.update(part.encode())
        h.update(b"\0")
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).replace('torch.', '')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def non_finite(tensors: dict[str, torch.Tensor]) -> str:
    """A description of the tensors holding NaN or infinite values ("" when all are finite)."""
    bad = []
    for name in sorted(tensors):
        n = int((~torch.isfinite(tensors[name].float())).sum())
        if n:
            bad.append(f"'{name}' holds {n} non-finite value{'s' if n > 1 else ''} (NaN or infinity)")
    return "; ".join(bad)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), e.g. to trace results to the engine file that made them."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
