"""Model loading: the tiny preset, a local diffusers folder, and a clear error for a hub id offline."""

import os
import subprocess
import sys

import pytest
import torch

from ppmtrack.engine.models import ModelLoadError, load_model, resolve_dtype, same_model, save_model


def test_tiny_preset_is_deterministic(tiny_model):
    again = load_model("tiny")
    assert same_model(tiny_model.fingerprint(), again.fingerprint())
    for a, b in zip(tiny_model.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert tiny_model.vae_scale == 8 and tiny_model.cross_attention_dim == 768


def test_local_folder_round_trip(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    assert same_model(tiny_model.fingerprint(), loaded.fingerprint())
    assert torch.allclose(loaded.alphas_cumprod, tiny_model.alphas_cumprod)


def test_fingerprint_tolerates_half_precision_but_not_other_weights(tiny_model):
    fp = tiny_model.fingerprint()
    half = load_model("tiny", dtype="float16")
    assert same_model(fp, half.fingerprint())
    other = load_model("tiny")
    with torch.no_grad():
        other.unet.conv_in.weight.mul_(1.5)
    assert not same_model(fp, other.fingerprint())


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_hub_id_offline_fails_with_clear_message(tmp_path):
    code = ("from ppmtrack.engine.models import load_model, ModelLoadError\n"
            "try:\n    load_model('stable-diffusion-v1-5/stable-diffusion-v1-5')\n"
            "except ModelLoadError as e:\n    print('ERR', e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    msg = out.stdout
    assert msg.startswith("ERR"), out.stderr[-2000:]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg
    assert str(tmp_path / "hf") in msg  # where it looked
    assert "--model tiny" in msg and "HF_HUB_OFFLINE" in msg


def test_dtype_defaults():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("float8", torch.device("cpu"))
