"""Clear errors instead of misleading or noisy ones (issue 19, item 11): an engine for other weights under the
same model name, hand-edited engine metadata, a list file naming a missing video, a model that is neither cached
nor reachable (no hub retries), a cached model loaded without the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ppmtrack.engine import AdaptConfig, Engine, EngineFileError
from ppmtrack.engine.engine_file import FORMAT, tensor_checksum
from ppmtrack.pipelines.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"


def _engine(model, path: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    dim = model.cross_attention_dim
    Engine(model, ["nose", "tail"], torch.randn(2, dim, generator=generator), torch.randn(dim, generator=generator),
           AdaptConfig(resolution=64)).save(path)
    return path


def _edit_meta(path: Path, edit) -> None:
    """Change an engine file's metadata as a hand edit would, with a checksum that matches again."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(header["meta"])
    edit(meta)
    header["meta"] = json.dumps(meta, sort_keys=True)
    header["sha256"] = tensor_checksum(FORMAT, header["meta"], tensors)
    save_file(tensors, str(path), metadata=header)


def test_engine_for_other_weights_under_the_same_name_does_not_advise_that_name(tiny_model, tmp_path):
    path = _engine(tiny_model, tmp_path / "a.engine")
    _edit_meta(path, lambda meta: meta["model"]["fingerprint"]["weight_stats"].__setitem__(0, 1.0))
    with pytest.raises(EngineFileError, match="weights loaded now under that name differ") as failure:
        Engine.load(path, model=tiny_model)
    assert "--model tiny" not in str(failure.value) and "adapt the engine again" in str(failure.value)


@pytest.mark.parametrize("edit, says", [
    (lambda m: m.pop("keypoints"), "'keypoints' must be a non-empty list"),
    (lambda m: m.__setitem__("keypoints", ["nose", "tail", "ear"]), "3 keypoints but (2, "),
    (lambda m: m.__setitem__("model", "tiny"), "'model' must name the model"),
    (lambda m: m["adapt_config"].__setitem__("no_such_setting", 1), "settings are not what this ppmtrack writes"),
    (lambda m: m.__setitem__("skeleton", [["nose", "paw"]]), "'skeleton' must be pairs"),
])
def test_hand_edited_engine_metadata_is_a_clear_error_not_a_traceback(tiny_model, tmp_path, capsys, edit, says):
    path = _engine(tiny_model, tmp_path / "a.engine")
    _edit_meta(path, edit)
    with pytest.raises(EngineFileError, match="edited by hand") as failure:
        Engine.load(path, model=tiny_model)
    assert says in str(failure.value)
    assert main(["track", str(SAMPLE), "--engine", str(path), "-o", str(tmp_path / "out"), "--stop", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "edited by hand" in err and len(err.strip().splitlines()) == 1


def test_list_file_naming_a_missing_video_names_the_list_file_and_line(tmp_path, capsys):
    listing = tmp_path / "sessions.txt"
    listing.write_text(f"# day 1\n{SAMPLE}\n\nday2/cam1.mp4\n")
    code = main(["track", str(listing), "--engine", str(tmp_path / "none.engine"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{listing}, line 4: " in err and "day2/cam1.mp4: no such file or folder" in err


LOAD = textwrap.dedent("""
    import json, sys, time
    from ppmtrack.engine.models import ModelLoadError, load_model
    t = time.monotonic()
    try:
        model = load_model(sys.argv[1], device="cpu", dtype="float32")
        result = {"loaded": model.name, "revision": model.revision}
    except ModelLoadError as e:
        result = {"error": str(e)}
    result["seconds"] = time.monotonic() - t
    print(json.dumps(result))
""")


def _load_in_subprocess(model: str, env: dict) -> tuple[dict, str]:
    run = subprocess.run([sys.executable, "-c", LOAD, model], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_model_neither_cached_nor_reachable_fails_fast_and_a_cached_one_loads_without_the_hub(tiny_model, tmp_path):
    from rtsp_server import free_tcp_port

    from ppmtrack.engine.models import save_model

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--lab--tiny-sd"
    save_model(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    nowhere = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": f"http://127.0.0.1:{free_tcp_port()}",
               "HF_HUB_OFFLINE": "0", "HTTPS_PROXY": "", "HTTP_PROXY": "", "ALL_PROXY": ""}
    missing, stderr = _load_in_subprocess("lab/not-downloaded", nowhere)
    assert "not in the Hugging Face cache" in missing["error"] and "127.0.0.1 cannot be reached" in missing["error"]
    assert missing["seconds"] < 5 and "Retrying" not in stderr
    offline, stderr = _load_in_subprocess("lab/not-downloaded", {**nowhere, "HF_HUB_OFFLINE": "1"})
    assert "HF_HUB_OFFLINE is set" in offline["error"] and offline["seconds"] < 5
    cached, stderr = _load_in_subprocess("lab/tiny-sd", nowhere)  # the hub is unreachable: read from the cache
    assert cached.get("loaded") == "lab/tiny-sd", (cached, stderr[-2000:])
