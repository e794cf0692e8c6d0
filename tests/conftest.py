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
    from ppmtrack.engine.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def sample_support():
    from ppmtrack.pipelines.io.annotation import read_annotation

    return read_annotation(SAMPLES / "support.json").to_support()


@pytest.fixture(scope="session")
def sample_truth():
    from ppmtrack.pipelines.io.annotation import read_annotation

    return read_annotation(SAMPLES / "truth.json")


@pytest.fixture(scope="session")
def sample_frames():
    """Every 10th frame of the sample video with its index."""
    from ppmtrack.pipelines.sources import read_frames_at

    idx = list(range(0, 200, 10))
    frames = read_frames_at(SAMPLES / "sample.mp4", idx)
    return idx, np.stack([frames[i] for i in idx])


@pytest.fixture(scope="session")
def adapted_engine(tiny_model, sample_support):
    """The engine adapted on the sample with the default settings (the settings the README's demo uses)."""
    from ppmtrack.engine import AdaptConfig, Engine

    return Engine.adapt(sample_support, tiny_model, AdaptConfig(), validation="off")


@pytest.fixture(scope="module")
def one_torch_thread():
    """On a small shared CPU torch's thread team stalls when other processes compete; one thread is steady.
    Modules that run the pipeline's own threads beside torch opt in with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def relay():
    """A running RTSP relay on 127.0.0.1 (Debian's Perl RTSP::Server) publishing index-coded frames."""
    from rtsp_server import RtspRelay, server_installed

    if not server_installed():
        pytest.skip("RTSP relay not installed (Perl RTSP::Server, Debian librtsp-server-perl); "
                    "run .ci/install-rtsp.sh")
    with RtspRelay(fps=25) as running:
        running.start()
        yield running


@pytest.fixture(scope="session")
def quick_engine_file(tiny_model, tmp_path_factory):
    """An engine file of the tiny model with seeded random prompts (no adaptation: seconds, not minutes), at
    64 px, for tests of the run's plumbing (batches, clusters, streams), not of accuracy."""
    from ppmtrack.engine import AdaptConfig, Engine

    generator = torch.Generator().manual_seed(0)
    dim = tiny_model.unet.config.cross_attention_dim
    engine = Engine(tiny_model, ["nose", "tail"], torch.randn(2, dim, generator=generator),
                    torch.randn(dim, generator=generator), AdaptConfig(resolution=64))
    path = tmp_path_factory.mktemp("engine") / "quick.engine"
    engine.save(path)
    return path
