"""The adapted engine file: prompts as safetensors tensors, everything else as JSON metadata in the same file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ppmtrack.engine.errors import PpmtrackError

FORMAT = "ppmtrack-engine"
FORMAT_VERSION = 1


class EngineFileError(PpmtrackError, ValueError):
    """An engine file is unreadable, from an incompatible version, or for another model."""


def write_engine_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict, kind: str = FORMAT) -> None:
    """Write tensors and metadata atomically (temp file, then rename), so a crash never leaves half a file.

    `kind` names the file's content: ``ppmtrack-engine`` (an adapted engine) or ``ppmtrack-foreground``
    (a foreground prompt pre-trained on a base set).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": kind, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta, sort_keys=True)}
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp),
              metadata=header)
    umask = os.umask(0)  # safetensors creates the file 0600; give it the mode every other output gets
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def read_engine_file(path: str | Path, kind: str = FORMAT) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an engine (or foreground-prompt) file; raise EngineFileError saying why if this version cannot."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    what = "engine" if kind == FORMAT else "foreground-prompt"
    if not path.is_file():
        raise EngineFileError(f"{path}: no such {what} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise EngineFileError(f"{path}: not a ppmtrack {what} file ({e})") from None
    if header.get("format") != kind:
        raise EngineFileError(f"{path}: not a ppmtrack {what} file (no '{kind}' header)")
    version = int(header.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise EngineFileError(f"{path}: engine file format {version} is newer than this ppmtrack understands "
                              f"({FORMAT_VERSION}); upgrade ppmtrack")
    if version < 1:
        raise EngineFileError(f"{path}: engine file format {version} is no longer supported; adapt again")
    return tensors, json.loads(header["meta"])
