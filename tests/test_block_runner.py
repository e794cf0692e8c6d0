"""One UNet block runner, one map stacking, one read-out, and the engine's hooks as objects.

Small tiny-model engines at 64 px built here (no adaptation), so the file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
RES = 64
K = 3


def random_prompts(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 768) keypoint prompts and a (768,) foreground prompt drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, 768, generator=g), torch.randn(768, generator=g)


def make_engine(speed=None, seed=5, model=None):
    """A 64 px engine with random prompts; a fresh tiny model unless `model` is given (speed switches change
    modules in place, so engines with switches get their own)."""
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model

    return Engine(model or load_model("tiny"), [f"k{i}" for i in range(K)], *random_prompts(seed),
                  AdaptConfig(resolution=RES), speed=speed)


@pytest.fixture(scope="module")
def frames(sample_frames):
    return sample_frames[1][:3]


@pytest.fixture(scope="module")
def unet_inputs(tiny_model):
    """Noisy latents (2, 4, 8, 8), the timestep, a random (2, 77, c) conditioning."""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor(10),
            torch.randn(2, 77, tiny_model.cross_attention_dim, generator=g))


# ---- the block runner -------------------------------------------------------------------------------------
def test_a_run_stopped_and_resumed_equals_the_whole_forward(tiny_model, unet_inputs):
    from ppmtrack.engine.unet_blocks import block_positions, finish_unet, run_blocks, start_unet, unet_forward_until

    unet = tiny_model.unet
    x, t, cond = unet_inputs
    positions = block_positions(unet)
    assert positions[0] == ("down_blocks", 0) and ("mid_block", 0) in positions and positions[-1][0] == "up_blocks"
    with torch.no_grad():
        whole = unet_forward_until(unet, x, t, cond)
        run = start_unet(unet, x, t)
        for a, b in ((None, ("down_blocks", 1)), (("down_blocks", 2), ("up_blocks", 0)), (("up_blocks", 1), None)):
            run = run_blocks(unet, run, cond, start=a, stop=b)
        assert run.residuals == ()  # every skip connection consumed
        assert torch.allclose(finish_unet(unet, run), whole, atol=1e-6)
        # stopping early gives that block's output
        mid = run_blocks(unet, start_unet(unet, x, t), cond, stop=("mid_block", 0))
        assert torch.equal(unet_forward_until(unet, x, t, cond, ("mid_block", 0)), mid.hidden)
    with pytest.raises(ValueError, match="no UNet block"):
        run_blocks(unet, run, cond, start=("up_blocks", 9))


def test_the_up_path_can_resume_from_hidden_state_computed_elsewhere(tiny_model, unet_inputs):
    """Feature reuse's shallow branch: only the first residuals, deep features from another run."""
    from ppmtrack.engine.unet_blocks import run_blocks, start_unet

    unet = tiny_model.unet
    x, t, cond = unet_inputs
    last = len(unet.up_blocks) - 1
    need = len(unet.up_blocks[last].resnets)
    with torch.no_grad():
        full = run_blocks(unet, start_unet(unet, x, t), cond, stop=("up_blocks", last - 1))
        ref = run_blocks(unet, full, cond, start=("up_blocks", last))
        shallow = run_blocks(unet, start_unet(unet, x, t), cond, stop=("down_blocks", 0))
        resumed = run_blocks(unet, shallow.keep_residuals(need).with_hidden(full.hidden), cond,
                             start=("up_blocks", last))
    assert torch.allclose(resumed.hidden, ref.hidden, atol=1e-6)


def test_blocks_can_be_replaced_by_other_callables(tiny_model, unet_inputs):
    from ppmtrack.engine.unet_blocks import unet_blocks, unet_forward_until

    unet = tiny_model.unet
    x, t, cond = unet_inputs
    calls = []

    def counting(block):
        def call(*args, **kwargs):
            calls.append(type(block).__name__)
            return block(*args, **kwargs)
        return call

    with torch.no_grad():
        ref = unet_forward_until(unet, x, t, cond, ("up_blocks", 1))
        out = unet_forward_until(unet, x, t, cond, ("up_blocks", 1), blocks=[counting(b) for b in unet_blocks(unet)])
    assert torch.equal(out, ref)
    assert len(calls) == len(unet.down_blocks) + 1 + 2  # stopped after up block 1


# ---- stacking and read-out --------------------------------------------------------------------------------
def test_stack_layer_maps_orders_layers_and_upsamples_to_the_finest():
    from ppmtrack.engine.infer import stack_layer_maps

    coarse = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # 2×2 maps
    fine = torch.rand(2, 3, 16)  # 4×4 maps
    out = stack_layer_maps({"a": coarse, "b": fine}, ["b", "a"])
    assert out.shape == (2, 2, 3, 4, 4)
    assert torch.equal(out[:, 0], fine.reshape(2, 3, 4, 4))
    assert torch.allclose(out[:, 1].mean(dim=(-2, -1)), coarse.mean(dim=-1))  # bilinear keeps a 2×2 map's mean
    assert stack_layer_maps({"a": coarse}, ["a"], size=8).shape == (2, 1, 3, 8, 8)


def test_engine_and_onnx_graph_read_out_through_one_function(frames, tiny_model):
    """`EngineGraph` (what ONNX export traces) run in torch gives `Engine.predict`'s keypoints."""
    from ppmtrack.engine.onnx_export import EngineGraph

    engine = make_engine(model=tiny_model)
    pred = engine.predict(frames, return_maps=True)
    x, box = engine.prepare(frames)
    with torch.no_grad():
        kp, conf, sharp, maps, fg = EngineGraph(engine, with_maps=True)(x)
    assert np.abs(box.to_frame(kp.numpy().astype(np.float64)) - pred.keypoints).max() < 1e-3
    assert np.abs(conf.numpy() - pred.confidence).max() < 1e-5
    assert np.abs(maps.numpy() - pred.maps).max() < 1e-5


# ---- one interface for both engines -----------------------------------------------------------------------
def test_engine_and_onnx_engine_both_satisfy_engine_like(tmp_path, tiny_model):
    from ppmtrack.engine import EngineLike
    from ppmtrack.engine.onnx_runtime import OnnxEngine, OnnxModelInfo

    onnx_engine = OnnxEngine(path=tmp_path / "x.onnx", session=None, names=["a"], skeleton=[], flip_pairs=[],
                             resolution=64, layers=[], model=OnnxModelInfo("tiny", None, torch.device("cpu")),
                             providers=["CPUExecutionProvider"], with_maps=False, batch_size=None)
    members = [n for n in EngineLike.__annotations__] + ["predict", "reset_stream"]
    for engine in (make_engine(model=tiny_model), onnx_engine):
        assert isinstance(engine, EngineLike)
        missing = [n for n in members if not hasattr(engine, n)]
        assert not missing, (type(engine).__name__, missing)
    assert not isinstance(object(), EngineLike)


# ---- hooks instead of reaching in -------------------------------------------------------------------------
def test_reassigned_prompts_are_used_not_the_stale_cached_keys(frames, tiny_model):
    other = make_engine(seed=11, model=tiny_model)
    expected = other.predict(frames, return_maps=True)
    engine = make_engine(model=tiny_model)
    before = engine.predict(frames, return_maps=True)  # fills the prompt K/V cache
    assert np.abs(before.maps - expected.maps).max() > 1e-3  # the two prompt sets do differ
    engine.keypoint_prompts = other.keypoint_prompts.clone()
    engine.foreground_prompt = other.foreground_prompt.clone()
    after = engine.predict(frames, return_maps=True)
    assert np.abs(after.maps - expected.maps).max() < 1e-5
    assert np.abs(after.keypoints - expected.keypoints).max() < 1e-3
    keypoints, foreground = random_prompts(5)
    engine.keypoint_prompts.copy_(keypoints)  # edited in place: also picked up
    engine.foreground_prompt.copy_(foreground)
    assert np.abs(engine.predict(frames, return_maps=True).maps - before.maps).max() < 1e-5


def test_a_map_runner_is_handed_to_the_engine_and_reset_through_it(frames, tiny_model):
    engine = make_engine(model=tiny_model)
    ref = engine.predict(frames)

    class Recording:
        def __init__(self):
            self.batches, self.resets = [], 0

        def __call__(self, latents):
            self.batches.append(len(latents))
            return engine.eager_maps(latents)

        def reset(self):
            self.resets += 1

    runner = Recording()
    engine.set_map_runner(runner)
    pred = engine.predict(frames)
    engine.reset_stream()
    assert runner.batches == [len(frames)] and runner.resets == 1
    assert np.allclose(pred.keypoints, ref.keypoints)
    engine.set_map_runner(None)
    engine.reset_stream()  # the plain forward has nothing to reset


def test_compile_goes_through_public_torch_compile_and_falls_back_to_eager(frames):
    from ppmtrack.engine.speed import SpeedConfig
    from ppmtrack.engine.unet_blocks import unet_blocks

    def broken_backend(graph, inputs):
        raise RuntimeError("no C++ compiler on this machine")

    engine = make_engine(SpeedConfig(compile=True, compile_backend=broken_backend))
    blocks = unet_blocks(engine.model.unet)
    assert engine.extractor.blocks is not None and len(engine.extractor.blocks) == len(blocks)
    assert all(c is not b for c, b in zip(engine.extractor.blocks, blocks, strict=True))
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in engine.model.unet.modules())  # not in place
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        engine.predict(frames)
    assert engine.extractor.blocks is None  # eager blocks restored


def track_raw(engine, out: Path, start: int, stop: int) -> np.ndarray:
    """Raw (detector) keypoints of sample frames [start, stop) tracked in batches of 2."""
    from ppmtrack.pipelines.io.csv import read_tracks_csv
    from ppmtrack.pipelines.track import track_video

    track_video(SAMPLES / "sample.mp4", engine, out, start=start, stop=stop, batch_size=2, write_video=False,
                progress=False, smooth="causal", flow="off")
    return read_tracks_csv(out / "sample.csv").raw_xy


def test_feature_reuse_starts_each_video_afresh(tmp_path):
    """Two `track_video` calls with one reuse engine: the second video tracks as with a fresh engine."""
    from ppmtrack.engine.speed import SpeedConfig

    speed = SpeedConfig(reuse_every=4)
    fresh = track_raw(make_engine(speed), tmp_path / "fresh", 0, 3)
    engine = make_engine(speed)
    track_raw(engine, tmp_path / "first", 120, 123)
    second = track_raw(engine, tmp_path / "second", 0, 3)
    assert np.allclose(second, fresh, atol=1e-6, equal_nan=True)
    # (without the reset, frame 0 of the second video is not a key frame: it reuses the first video's features)


def test_feature_reuse_starts_afresh_after_a_stream_gap(tmp_path, monkeypatch):
    """Frames after a gap track as if the source had started there (no deep features from before the gap)."""
    import ppmtrack.pipelines.track as track
    from ppmtrack.engine.speed import SpeedConfig
    from ppmtrack.pipelines.batching import Batch
    from ppmtrack.pipelines.sources import Gap

    speed = SpeedConfig(reuse_every=4)
    fresh = track_raw(make_engine(speed), tmp_path / "fresh", 2, 5)
    real = track.iter_batches

    def gap_after_first_batch(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if i == 0:
                yield Batch(gap=Gap(1.0, 2.0, "test outage"))

    monkeypatch.setattr(track, "iter_batches", gap_after_first_batch)
    raw = track_raw(make_engine(speed), tmp_path / "gap", 0, 5)  # frames 0, 1 | gap | 2, 3, 4
    assert np.allclose(raw[2:], fresh, atol=1e-6, equal_nan=True)


def test_speed_config_is_kept_on_the_engine_unchanged():
    from ppmtrack.engine.speed import SpeedConfig

    speed = SpeedConfig(reuse_every=2, truncate=False)
    engine = make_engine(speed)
    assert engine.speed is speed and dataclasses.asdict(speed) == dataclasses.asdict(SpeedConfig(reuse_every=2,
                                                                                                 truncate=False))
    assert engine.extractor.stop_after is None and engine.map_runner.every == 2
