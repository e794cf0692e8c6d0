"""engine.load_engine(path, backend="auto"): the backend chosen in engine/, and an engine file read once per run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ppmtrack.engine import Engine, EngineFileError, EngineLike, load_engine
from ppmtrack.engine.errors import UsageError
from ppmtrack.engine.loading import engine_backend
from ppmtrack.pipelines.track import track_video

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sample.mp4"


def test_backend_is_chosen_by_the_file_unless_named():
    assert engine_backend("lizard.engine") == "torch"
    assert engine_backend("exports/lizard.ONNX") == "onnx"
    assert engine_backend(None) == "torch"  # adapted now, from --support
    assert engine_backend("lizard.onnx", "torch") == "torch"
    with pytest.raises(UsageError, match="unknown engine backend 'tensorrt'"):
        engine_backend("lizard.engine", "tensorrt")


def test_load_engine_gives_an_engine_like_with_the_hash_of_the_bytes_it_read(quick_engine_file, tiny_model):
    engine = load_engine(quick_engine_file, model=tiny_model)
    assert isinstance(engine, Engine) and isinstance(engine, EngineLike)
    assert engine.path == quick_engine_file
    assert engine.sha256 == hashlib.sha256(quick_engine_file.read_bytes()).hexdigest()


def test_a_damaged_engine_file_is_refused_by_the_one_read(tmp_path):
    broken = tmp_path / "broken.engine"
    broken.write_bytes(b"\xff" * 64)
    with pytest.raises(EngineFileError, match="not a ppmtrack engine file, or a damaged one"):
        load_engine(broken)


def test_a_run_records_the_hash_of_the_engine_it_ran_without_reading_the_file_again(
        quick_engine_file, tiny_model, tmp_path):
    path = tmp_path / "quick.engine"
    shutil.copyfile(quick_engine_file, path)
    engine = load_engine(path, model=tiny_model)
    loaded = engine.sha256
    path.write_bytes(path.read_bytes() + b" ")  # the file changes after loading: the run used what was loaded
    track_video(SAMPLE, engine, tmp_path / "out", stop=2, write_video=False, progress=False, flow="off")
    doc = json.loads((tmp_path / "out" / "sample.summary.json").read_text())
    assert doc["engine"]["sha256"] == loaded != hashlib.sha256(path.read_bytes()).hexdigest()
