"""Engine and foreground-prompt files: a checksum over their content, no non-finite prompts, the model revision
kept on load, foreground files checked against the settings in use, and no import cycle api <-> foreground.

Engines here are built directly from prompts (no adaptation), so the module runs in seconds.
"""

import ast
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine, EngineFileError
from ppmtrack.engine.engine_file import FORMAT, FORMAT_VERSION, read_engine_file, tensor_checksum
from ppmtrack.engine.foreground import load_foreground, save_foreground

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # steady on a small, shared CPU (see conftest)

ENGINE_DIR = Path(__file__).resolve().parents[1] / "engine"
NAMES = ["nose", "tail"]


def small_engine(model, prompts=None) -> Engine:
    gen = torch.Generator().manual_seed(1)
    if prompts is None:
        prompts = torch.randn(len(NAMES), model.cross_attention_dim, generator=gen)
    fg = torch.randn(model.cross_attention_dim, generator=gen)
    return Engine(model, NAMES, prompts, fg, AdaptConfig(resolution=64))


def flip_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def test_engine_file_stores_a_checksum_of_its_tensors(tiny_model, tmp_path):
    path = tmp_path / "a.engine"
    small_engine(tiny_model).save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert header["sha256"] == tensor_checksum(FORMAT, header["meta"], tensors)
    assert len(header["sha256"]) == 64


def test_flipped_byte_in_a_prompt_is_reported_as_damaged(tiny_model, tmp_path):
    path = tmp_path / "a.engine"
    engine = small_engine(tiny_model)
    engine.save(path)
    assert Engine.load(path, model=tiny_model).names == NAMES  # intact: loads
    flip_byte(path, 5)  # the data section closes the file: this byte is inside a prompt tensor
    with pytest.raises(EngineFileError, match=r"a\.engine: the engine file is damaged"):
        Engine.load(path, model=tiny_model)


def test_flipped_byte_in_a_foreground_prompt_file_is_reported_as_damaged(tiny_model, tmp_path):
    path = tmp_path / "b.fg"
    save_foreground(path, torch.randn(tiny_model.cross_attention_dim), tiny_model, AdaptConfig(resolution=64), {})
    load_foreground(path, tiny_model)
    flip_byte(path, 9)
    with pytest.raises(EngineFileError, match=r"b\.fg: the foreground-prompt file is damaged"):
        load_foreground(path, tiny_model)


def _write_raw(path: Path, tensors: dict, meta: dict, with_checksum: bool) -> None:
    """An engine file as an older ppmtrack (no checksum) or a faulty tool (valid checksum, bad content) writes it."""
    from safetensors.torch import save_file

    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta, sort_keys=True)}
    if with_checksum:
        header["sha256"] = tensor_checksum(FORMAT, header["meta"], tensors)
    save_file(tensors, str(path), metadata=header)


def test_file_without_checksum_loads_with_a_warning(tiny_model, tmp_path, caplog):
    good = tmp_path / "good.engine"
    small_engine(tiny_model).save(good)
    tensors, meta = read_engine_file(good)
    old = tmp_path / "old.engine"
    _write_raw(old, tensors, meta, with_checksum=False)
    with caplog.at_level(logging.WARNING, logger="ppmtrack"):
        engine = Engine.load(old, model=tiny_model)
    assert engine.names == NAMES
    assert any("without a checksum" in r.getMessage() and "old.engine" in r.getMessage() for r in caplog.records)


def test_non_finite_prompts_are_never_written(tiny_model, tmp_path):
    prompts = torch.zeros(len(NAMES), tiny_model.cross_attention_dim)
    prompts[1, 3] = float("nan")
    path = tmp_path / "nan.engine"
    with pytest.raises(EngineFileError, match="refusing to write.*'keypoint_prompts' holds 1 non-finite value"):
        small_engine(tiny_model, prompts).save(path)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing written, no temporary file left


def test_non_finite_prompts_in_a_file_are_refused_on_load(tiny_model, tmp_path):
    good = tmp_path / "good.engine"
    small_engine(tiny_model).save(good)
    tensors, meta = read_engine_file(good)
    tensors["foreground_prompt"][7] = float("inf")
    bad = tmp_path / "inf.engine"
    _write_raw(bad, tensors, meta, with_checksum=True)  # the checksum matches: only the finiteness check can fail
    with pytest.raises(EngineFileError, match=r"inf\.engine: unusable engine file: 'foreground_prompt' holds 1"):
        Engine.load(bad, model=tiny_model)


def test_load_keeps_the_stored_model_revision(tmp_path, monkeypatch):
    """The hub cannot be reached here: the loader of pretrained models is replaced by one that records what it
    is asked for and returns the tiny model's parts."""
    from ppmtrack.engine import models

    asked = []

    def fake_pretrained(model, revision):
        asked.append((model, revision))
        vae, unet = models.build_tiny()
        return vae, unet, dict(models.SD_SCHEDULER_CONFIG), revision or "main-now"

    monkeypatch.setattr(models, "_load_pretrained", fake_pretrained)
    pinned = models.load_model("lab/pinned-model", device="cpu", revision="0123abcd")
    path = tmp_path / "pinned.engine"
    small_engine(pinned).save(path)
    assert read_engine_file(path)[1]["model"]["revision"] == "0123abcd"
    asked.clear()
    engine = Engine.load(path)
    assert asked == [("lab/pinned-model", "0123abcd")]
    assert engine.model.revision == "0123abcd"
    asked.clear()
    Engine.load(path, model="lab/pinned-model")  # the same model named explicitly: still the stored revision
    assert asked == [("lab/pinned-model", "0123abcd")]
    asked.clear()
    Engine.load(path, model="lab/other-model")  # another model: its own default revision (same fake weights)
    assert asked == [("lab/other-model", None)]


def test_foreground_file_with_other_settings_is_refused_naming_the_difference(tiny_model, tmp_path):
    path = tmp_path / "base.fg"
    trained = AdaptConfig(resolution=128, layers="up", timestep=10)
    save_foreground(path, torch.randn(tiny_model.cross_attention_dim), tiny_model, trained, {})
    load_foreground(path, tiny_model, trained)  # same settings: accepted
    with pytest.raises(EngineFileError, match="resolution 128 there, 64 here") as err:
        load_foreground(path, tiny_model, AdaptConfig(resolution=64))
    assert "layers" not in str(err.value) and "timestep" not in str(err.value)
    with pytest.raises(EngineFileError, match="layers up there, down here"):
        load_foreground(path, tiny_model, AdaptConfig(resolution=128, layers="down"))
    with pytest.raises(EngineFileError, match="timestep 10 there, 50 here"):
        load_foreground(path, tiny_model, AdaptConfig(resolution=128, timestep=50))
    # the default resolution is the model's own (256 for tiny)
    with pytest.raises(EngineFileError, match="resolution 128 there, 256 here"):
        load_foreground(path, tiny_model, AdaptConfig())


def test_adapt_refuses_a_foreground_file_with_another_resolution(tiny_model, sample_support, tmp_path):
    path = tmp_path / "base.fg"
    save_foreground(path, torch.randn(tiny_model.cross_attention_dim), tiny_model, AdaptConfig(resolution=128), {})
    support = type(sample_support)(sample_support.names, sample_support.images[:1], sample_support.keypoints[:1])
    with pytest.raises(EngineFileError, match="resolution 128 there, 64 here"):
        Engine.adapt(support, tiny_model, AdaptConfig(resolution=64, steps=1, fg_steps=1, views_per_frame=1),
                     foreground=path)


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_foreground_does_not_import_the_engine_api():
    """api.py imports foreground.py (for `Engine.adapt(..., foreground=FILE)`); the reverse would be a cycle."""
    assert "ppmtrack.engine.api" not in _imported_modules(ENGINE_DIR / "foreground.py")
    assert "ppmtrack.engine.api" not in _imported_modules(ENGINE_DIR / "models.py")


def test_foreground_module_imports_first_in_a_fresh_interpreter():
    import subprocess
    import sys

    code = ("import ppmtrack.engine.foreground as f; from ppmtrack.engine.models import load_model; "
            "print(load_model('tiny').native_resolution, callable(f.pretrain_foreground))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["256", "True"]


def test_native_resolution_is_a_property_of_the_model(tiny_model):
    assert tiny_model.native_resolution == 256
    assert np.isclose(small_engine(tiny_model).resolution, 64)
