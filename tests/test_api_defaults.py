"""The Python API behaves like the command line: same default model, engine files readable by lab-mates."""

import inspect
import os
import stat

import numpy as np
import pytest

from ppmtrack.engine import DEFAULT_MODEL, Engine
from ppmtrack.engine.engine_file import write_engine_file


def test_engine_adapt_defaults_to_the_cli_default_model_not_the_untrained_one():
    from ppmtrack.pipelines.cli import build_parser

    default = inspect.signature(Engine.adapt).parameters["model"].default
    assert default == DEFAULT_MODEL != "tiny"
    args = build_parser().parse_args(["adapt", "support.json", "-o", "x.engine"])
    assert (args.model or DEFAULT_MODEL) == default


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_engine_files_respect_the_umask(tmp_path, umask):
    import torch

    before = os.umask(umask)
    try:
        path = tmp_path / f"u{umask:o}.engine"
        write_engine_file(path, {"p": torch.zeros(2)}, {"k": 1})
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    from safetensors.torch import load_file

    assert np.array_equal(load_file(str(path))["p"].numpy(), np.zeros(2))
