"""Inference optimisation switches (engine.speed, engine.encoders, engine.feature_reuse), bench scripts.

Each switch must give the plain engine's predictions (or differ by design, as the tiny encoder and feature
reuse do, checked by their own invariants); the bench scripts must run on tiny sizes and print their tables.
GPU-only checks skip without CUDA.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

RES = 64
K = 4


def make_engine(speed=None, layers="up", device=None, dtype=None):
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    model = load_model("tiny", device=device, dtype=dtype)  # fresh: switches change modules in place
    g = torch.Generator().manual_seed(5)
    prompts = torch.randn(K, 768, generator=g)
    fg = torch.randn(768, generator=g)
    return Engine(model, [f"k{i}" for i in range(K)], prompts, fg, AdaptConfig(resolution=RES, layers=layers),
                  speed=speed)


@pytest.fixture(scope="module")
def frames(sample_frames):
    return sample_frames[1][:2]


@pytest.fixture(scope="module")
def reference(frames):
    return make_engine().predict(frames, return_maps=True)


def _same(pred, ref, px=1e-2, maps=1e-4):
    assert np.abs(pred.keypoints - ref.keypoints).max() < px
    assert np.abs(pred.maps - ref.maps).max() < maps


@pytest.mark.parametrize("switch", [dict(prompt_kv_cache=False), dict(truncate=False),
                                    dict(channels_last=True), dict(compile=True, compile_backend="eager")],
                         ids=["no-kv-cache", "no-truncation", "channels-last", "compile-graph-capture"])
def test_each_switch_predicts_what_the_plain_engine_predicts(switch, frames, reference):
    from ppmtrack.engine.speed import SpeedConfig

    engine = make_engine(SpeedConfig(**switch))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile fallback would warn: not here
        _same(engine.predict(frames, return_maps=True), reference)


def test_compile_failure_warns_and_falls_back_to_eager(frames, reference):
    from ppmtrack.engine.speed import SpeedConfig

    def broken_backend(graph, inputs):
        raise RuntimeError("no C++ compiler on this machine")

    engine = make_engine(SpeedConfig(compile=True, compile_backend=broken_backend))
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*running eagerly"):
        pred = engine.predict(frames, return_maps=True)
    _same(pred, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same(engine.predict(frames, return_maps=True), reference)  # warned once; eager from now on


def test_cuda_graphs_without_cuda_warn_and_still_predict(frames, reference):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from ppmtrack.engine.speed import SpeedConfig

    with pytest.warns(UserWarning, match="cuda_graphs needs a CUDA device"):
        engine = make_engine(SpeedConfig(cuda_graphs=True))
    _same(engine.predict(frames, return_maps=True), reference)


@pytest.mark.parametrize("branch", [None, 2, 1])
def test_feature_reuse_on_a_repeated_frame_equals_the_full_forward(branch, frames):
    """Reusing the deep features of an identical frame must change nothing: checks the shallow branch."""
    from ppmtrack.engine.speed import SpeedConfig

    same = np.stack([frames[0]] * 3)
    ref = make_engine().predict(same, return_maps=True)
    engine = make_engine(SpeedConfig(reuse_every=3, reuse_branch=branch))
    pred = engine.predict(same, return_maps=True)
    assert engine.map_runner.key_frames == 1
    _same(pred, ref, px=0.05, maps=1e-4)


def test_feature_reuse_counts_key_frames_across_batches_and_resets(frames):
    from ppmtrack.engine.speed import SpeedConfig

    engine = make_engine(SpeedConfig(reuse_every=2))
    five = np.concatenate([frames, frames, frames[:1]])
    pred = np.concatenate([engine.predict(five[s:s + 2]).keypoints for s in range(0, 5, 2)])
    assert engine.map_runner.key_frames == 3  # frames 0, 2, 4
    assert np.isfinite(pred).all()
    engine.map_runner.reset()
    engine.predict(five[1:3])
    assert engine.map_runner.key_frames == 4  # the first frame after a reset is a key frame


def test_feature_reuse_refuses_settings_it_cannot_honour():
    from ppmtrack.engine.speed import SpeedConfig

    with pytest.raises(ValueError, match="at least 1"):
        SpeedConfig(reuse_every=0)
    with pytest.raises(ValueError, match="CUDA graphs"):
        SpeedConfig(reuse_every=2, cuda_graphs=True)
    with pytest.raises(ValueError, match="up-block layers"):
        make_engine(SpeedConfig(reuse_every=2), layers="down")


def test_untrained_tiny_encoder_keeps_the_encode_contract(frames, reference):
    from ppmtrack.engine.encoders import encoder_effect, load_tiny_encoder
    from ppmtrack.engine.speed import SpeedConfig

    enc = load_tiny_encoder("untrained")
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    z = enc(x)
    assert z.shape == (2, 4, RES // 8, RES // 8)
    assert 0.3 < float(z.std()) < 3.0  # scaled to about unit spread, like SD latents
    again = load_tiny_encoder("untrained")
    assert torch.equal(again(x), z)  # fixed seed

    engine = make_engine(SpeedConfig(encoder="untrained"))
    pred = engine.predict(frames)
    assert pred.keypoints.shape == reference.keypoints.shape and np.isfinite(pred.keypoints).all()
    engine = make_engine()
    effect = encoder_effect(engine, frames, enc)
    assert effect["latent_correlation"] < 0.9  # an untrained encoder's latents are not the VAE's

    class SameAsVae(torch.nn.Module):
        def forward(self, images):
            return engine.model.vae.encode(images).latent_dist.mean * engine.model.scaling_factor

    same = encoder_effect(engine, frames, SameAsVae())
    assert same["latent_correlation"] > 0.9999 and same["map_correlation"] > 0.999
    assert same["keypoint_shift_px"]["p90"] < 1e-3


def test_missing_tiny_autoencoder_gives_an_error_that_says_what_to_do(tmp_path):
    from ppmtrack.engine.encoders import EncoderLoadError, load_tiny_encoder

    with pytest.raises(EncoderLoadError, match="huggingface-cli download madebyollin/taesd"):
        load_tiny_encoder(str(tmp_path / "no-taesd-here"))


def test_tiny_autoencoder_loads_from_a_saved_folder(tmp_path):
    from ppmtrack.engine.encoders import TINY_TAESD_CONFIG, build_untrained_autoencoder, load_tiny_encoder

    build_untrained_autoencoder(TINY_TAESD_CONFIG).save_pretrained(tmp_path / "taesd")
    enc = load_tiny_encoder(str(tmp_path / "taesd"))
    assert enc.scale == 1.0 and enc(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 8, 8)


# ---- bench scripts ----------------------------------------------------------------------------------------
def _table(out: str, heading: str) -> dict[str, list[str]]:
    """The rows of the markdown table under ``heading`` in a bench's output: first cell → the other cells."""
    lines = out[out.index(heading):].splitlines()[1:]
    rows, started = {}, False
    for line in lines:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= set("-") and cells[0] not in ("stage", "variant", "batch", "phase"):
                rows[cells[0]] = cells[1:]
        elif started:
            break
    return rows


def _num(cell: str) -> float:
    return float(cell.replace("%", "").replace(",", "").strip())


def test_bench_inference_tables_add_up(capsys):
    import bench_inference

    bench_inference.main(["--resolution", "64", "--keypoints", "2", "--frames", "2", "--batch-size", "2",
                          "--batch-sizes", "1", "--variants", "eager,reuse-2", "--repeats", "1",
                          "--no-video"])
    out = capsys.readouterr().out
    assert "machine:" in out and "torch" in out
    stages = _table(out, "### Stages")
    names = ["decode", "preprocess", "VAE encode", "UNet", "map capture + FGAR", "localisation", "smoothing",
             "writing"]
    assert list(stages)[:len(names)] == names
    ms = {k: _num(v[0]) for k, v in stages.items()}
    assert all(v > 0 for v in ms.values()), ms
    for stage, (ms_cell, fps_cell, _share) in stages.items():  # frames/s is 1000 / ms/frame (3 digits shown)
        assert _num(fps_cell) == pytest.approx(1000 / _num(ms_cell), rel=0.02), stage
    total = ms.pop("total (serial)")
    assert total == pytest.approx(sum(ms.values()), rel=0.02)
    assert sum(_num(v[2]) for k, v in stages.items() if k != "total (serial)") == pytest.approx(100, abs=0.5)
    variants = _table(out, "### Variants")
    assert _num(variants["eager"][2]) == 1 and _num(variants["eager"][4]) == 0  # the reference: no shift
    speedup = _num(variants["eager"][0]) / _num(variants["reuse-2"][0])
    assert _num(variants["reuse-2"][2]) == pytest.approx(speedup, rel=0.02)
    sweep = _table(out, "### Batch sweep")
    assert list(sweep) == ["1"] and _num(sweep["1"][1]) == pytest.approx(1000 / _num(sweep["1"][0]), rel=0.02)


def test_bench_pipeline_overhead_is_measured(capsys):
    import bench_pipeline

    bench_pipeline.main(["--resolution", "64", "--keypoints", "2", "--batch-size", "4", "--stop", "8",
                         "--repeats", "1", "--live-frames", "3", "--no-video"])
    out = capsys.readouterr().out
    assert "pipeline overhead (decode + smoothing + writing) / inference" in out
    assert "| inference |" in out and "### Live latency" in out
    ratio = out.split("pipeline overhead (decode + smoothing + writing) / inference")[1].split("\n")[0]
    value = float("".join(c for c in ratio.split("%")[0] if c.isdigit() or c == "."))
    assert 0 < value < 1000, ratio
    latency = {k: _num(v[0]) for k, v in _table(out, "### Live latency").items() if k != "measure"}
    assert 0 < latency["median"] <= latency["p95"] <= latency["max"] and latency["frames"] >= 1


def test_bench_adapt_prints_phases_that_add_up(capsys):
    import bench_adapt

    bench_adapt.main(["--resolution", "64", "--keypoints", "12", "--support-frames", "2", "--fg-steps", "1",
                      "--steps", "1", "--views-per-frame", "1", "--batch", "2"])
    out = capsys.readouterr().out
    phases = {k: v[0] for k, v in _table(out, "| phase |").items()}
    parts = [_num(phases[k]) for k in phases if k.startswith(("views", "foreground", "keypoint"))]
    assert len(parts) == 3 and parts[0] > 0 and parts[1] > 0  # one keypoint step: its first and last marks coincide
    assert _num(phases["total"]) == pytest.approx(sum(parts), rel=0.05, abs=1.5)


def test_bench_adapt_pads_keypoints_with_edge_midpoints():
    import bench_adapt

    support = bench_adapt.support_set(20)
    assert support.keypoints.shape == (5, 20, 2) and np.isfinite(support.keypoints).all()


# ---- GPU --------------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("switch", [dict(cuda_graphs=True), dict(compile=True),
                                    dict(compile=True, cuda_graphs=True), dict(channels_last=True)],
                         ids=["graphs", "compile", "compile+graphs", "nhwc"])
def test_gpu_switches_predict_what_the_plain_engine_predicts(switch, frames, monkeypatch):
    from ppmtrack.engine.speed import SpeedConfig

    # True float32 on both sides: with TF32 (cuDNN's default for convolutions) the two sides' different kernels
    # (channels-last, inductor) round differently, and that is not what this test is about.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ref = make_engine(device="cuda", dtype="float32").predict(frames, return_maps=True)
    engine = make_engine(SpeedConfig(**switch), device="cuda", dtype="float32")
    for _ in range(2):  # the second call replays the recorded graph
        pred = engine.predict(frames, return_maps=True)
        _same(pred, ref, px=0.05, maps=1e-3)


@pytest.mark.gpu
@gpu
def test_gpu_half_precision_stays_close_to_float32(frames):
    ref = make_engine(device="cuda", dtype="float32").predict(frames, return_maps=True)
    pred = make_engine(device="cuda", dtype="float16").predict(frames, return_maps=True)
    assert np.abs(pred.maps - ref.maps).max() < 2e-2
