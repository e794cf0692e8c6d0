"""Shared fixtures: the tiny model and one adapted engine on the bundled sample, built once per session."""

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_model():
    from engine.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def sample_support():
    from pipelines.io.annotation import read_annotation

    return read_annotation(SAMPLES / "support.json").to_support()


@pytest.fixture(scope="session")
def sample_truth():
    from pipelines.io.annotation import read_annotation

    return read_annotation(SAMPLES / "truth.json")


@pytest.fixture(scope="session")
def sample_frames():
    """Every 10th frame of the sample video with its index."""
    from pipelines.sources import read_frames_at

    idx = list(range(0, 200, 10))
    frames = read_frames_at(SAMPLES / "sample.mp4", idx)
    return idx, np.stack([frames[i] for i in idx])


@pytest.fixture(scope="session")
def adapted_engine(tiny_model, sample_support):
    """The engine adapted on the sample with the default settings (the settings the README's demo uses)."""
    from engine import AdaptConfig, Engine

    return Engine.adapt(sample_support, tiny_model, AdaptConfig())
