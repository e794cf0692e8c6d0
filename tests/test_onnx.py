"""ONNX export: the exported graph, run by onnxruntime on the CPU, agrees with `Engine.predict`."""

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

# measured on the tiny engine (2-core CPU): keypoints 0.03 px, confidences 2e-5, maps 8e-5
KEYPOINT_TOL_PX = 0.5
CONFIDENCE_TOL = 1e-3
MAP_TOL = 1e-3
# The untrained tiny model's maps are flat: a cell far from the peak can be within 1e-5 of it, and the maps of
# the two runtimes differ by up to 1.4e-4, so float32 rounding (onnxruntime's kernels, or PyTorch's own at
# another batch size) may pick either cell. Such keypoints are left out of the keypoint comparison; their
# confidences are still compared.
TIE_MARGIN = 3e-4


def far_ties(maps: np.ndarray, window: int = 5) -> np.ndarray:
    """(B, K) whether a cell out of the read-out window around the argmax is within TIE_MARGIN of the peak."""
    b, k, h, w = maps.shape
    flat = maps.reshape(b, k, -1)
    py, px = np.divmod(flat.argmax(-1), w)
    yy, xx = np.mgrid[:h, :w]
    r = window // 2
    far = (np.abs(yy - py[..., None, None]) > r) | (np.abs(xx - px[..., None, None]) > r)
    return (np.where(far, maps, -np.inf).reshape(b, k, -1).max(-1) >= flat.max(-1) - TIE_MARGIN)


@pytest.fixture(scope="module")
def quick_engine():
    """A tiny-model engine for the sample's keypoints with seeded random prompts, at 128 px.

    Random prompts rather than adaptation keep the module fast; they also give every keypoint its own peak,
    which tests the read-out more than a few adaptation steps would (those put every keypoint in one place).
    """
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.models import load_model
    from ppmtrack.pipelines.io.annotation import read_annotation

    support = read_annotation(SAMPLES / "support.json").to_support()
    gen = torch.Generator().manual_seed(0)
    k = len(support.names)
    prompts, foreground = torch.randn(k, 768, generator=gen), torch.randn(768, generator=gen)
    return Engine(load_model("tiny", device="cpu", dtype="float32"), support.names, prompts, foreground,
                  AdaptConfig(resolution=128), support.skeleton, support.flip_pairs,
                  info={"adaptation": {"views": 3}})


@pytest.fixture(scope="module")
def frames():
    from ppmtrack.pipelines.sources import read_frames_at

    idx = [0, 45, 90, 135]
    decoded = read_frames_at(SAMPLES / "sample.mp4", idx)
    return np.stack([decoded[i] for i in idx])


@pytest.fixture(scope="module")
def reference(quick_engine, frames):
    """`Engine.predict` of the frames in one batch, with maps; tests slice it."""
    return quick_engine.predict(frames, return_maps=True)


def rows(prediction, part: slice):
    from ppmtrack.engine.api import Prediction

    return Prediction(*(None if v is None else v[part] for v in vars(prediction).values()))


@pytest.fixture(scope="module")
def onnx_with_maps(quick_engine, tmp_path_factory):
    """One export with maps and a dynamic batch axis, shared by the tests below."""
    from ppmtrack.engine.onnx_export import export_onnx

    return export_onnx(quick_engine, tmp_path_factory.mktemp("onnx") / "sample.onnx", with_maps=True)


def assert_predictions_agree(got, want, maps: bool = False):
    """`want` is `Engine.predict(..., return_maps=True)`; `maps`: compare the maps too."""
    assert got.keypoints.shape == want.keypoints.shape
    clear = ~far_ties(want.maps)
    assert clear.mean() >= 0.75
    assert np.abs(got.keypoints - want.keypoints).max(-1)[clear].max() <= KEYPOINT_TOL_PX
    assert np.abs(got.confidence - want.confidence).max() <= CONFIDENCE_TOL
    np.testing.assert_allclose(got.sharpness, want.sharpness, rtol=1e-3)
    if maps:
        assert np.abs(got.maps - want.maps).max() <= MAP_TOL
        assert np.abs(got.foreground - want.foreground).max() <= MAP_TOL


def test_onnx_predict_matches_engine_predict_with_maps(reference, onnx_with_maps, frames):
    from ppmtrack.engine.onnx_runtime import OnnxEngine

    onnx_engine = OnnxEngine.load(onnx_with_maps, providers=["CPUExecutionProvider"])
    assert_predictions_agree(onnx_engine.predict(frames, return_maps=True), reference, maps=True)


def test_dynamic_batch_runs_batch_one_and_three(quick_engine, reference, onnx_with_maps, frames):
    from ppmtrack.engine.onnx_runtime import OnnxEngine

    onnx_engine = OnnxEngine.load(onnx_with_maps, providers=["CPUExecutionProvider"])
    assert onnx_engine.batch_size is None
    for part in (slice(0, 1), slice(1, 4)):
        got = onnx_engine.predict(frames[part])
        assert got.keypoints.shape == (part.stop - part.start, len(quick_engine.names), 2)
        assert_predictions_agree(got, rows(reference, part))


def test_frame_result_does_not_depend_on_its_batch(onnx_with_maps, frames):
    from ppmtrack.engine.onnx_runtime import OnnxEngine

    onnx_engine = OnnxEngine.load(onnx_with_maps, providers=["CPUExecutionProvider"])
    alone = onnx_engine.predict(frames[2:3])
    together = onnx_engine.predict(frames, return_maps=True)
    clear = ~far_ties(together.maps[2:3])[0]
    np.testing.assert_allclose(alone.keypoints[0][clear], together.keypoints[2][clear], atol=1e-3)


def test_fixed_batch_export_runs_any_number_of_frames(quick_engine, reference, frames, tmp_path):
    from ppmtrack.engine.onnx_export import export_onnx
    from ppmtrack.engine.onnx_runtime import OnnxEngine

    path = export_onnx(quick_engine, tmp_path / "fixed.onnx", batch_size=2)
    onnx_engine = OnnxEngine.load(path)
    assert onnx_engine.batch_size == 2
    got = onnx_engine.predict(frames[:3])  # one full chunk, then one padded
    assert_predictions_agree(got, rows(reference, slice(0, 3)))
    with pytest.raises(ValueError, match="with_maps=True"):
        onnx_engine.predict(frames[:1], return_maps=True)


def test_metadata_round_trip(quick_engine, onnx_with_maps):
    import onnx

    from ppmtrack.engine.api import package_version
    from ppmtrack.engine.onnx_runtime import OnnxEngine

    onnx_engine = OnnxEngine.load(onnx_with_maps)
    assert onnx_engine.names == quick_engine.names
    assert onnx_engine.skeleton == [tuple(e) for e in quick_engine.skeleton]
    assert onnx_engine.flip_pairs == [tuple(e) for e in quick_engine.flip_pairs]
    assert onnx_engine.resolution == quick_engine.resolution
    assert onnx_engine.layers == quick_engine.layers
    assert onnx_engine.model.name == "tiny"
    assert onnx_engine.model.revision == quick_engine.model.revision
    assert str(onnx_engine.model.device) == "cpu"
    assert onnx_engine.name == "sample"
    assert onnx_engine.with_maps
    assert onnx_engine.info["adaptation"]["views"] == quick_engine.info["adaptation"]["views"]
    assert onnx_engine.info["onnx"]["providers"][-1] == "CPUExecutionProvider"
    props = {p.key: p.value for p in onnx.load(str(onnx_with_maps)).metadata_props}
    assert props["ppmtrack_version"] == package_version()
    model = onnx.load(str(onnx_with_maps))
    assert [i.name for i in model.graph.input] == ["images"]
    outputs = ["keypoints", "confidence", "sharpness", "maps", "foreground"]
    assert [o.name for o in model.graph.output] == outputs


def test_weights_over_the_inline_limit_go_to_one_data_file(onnx_with_maps, frames, tmp_path):
    import onnx

    from ppmtrack.engine.onnx_export import save_onnx_model
    from ppmtrack.engine.onnx_runtime import OnnxEngine

    path = save_onnx_model(onnx.load(str(onnx_with_maps)), tmp_path / "big.onnx", max_inline_bytes=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx.data").stat().st_size > path.stat().st_size
    inline = OnnxEngine.load(onnx_with_maps).predict(frames[:1])
    external = OnnxEngine.load(path).predict(frames[:1])
    np.testing.assert_array_equal(inline.keypoints, external.keypoints)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                            "ignore::torch.jit.TracerWarning")
def test_peak_readout_exports_exactly_at_borders_and_corners(tmp_path):
    """`soft_argmax_peak` goes into the graph as is; its gather indexing gives the same numbers in ONNX."""
    import onnxruntime as ort

    from ppmtrack.engine.localize import soft_argmax_peak

    class Peak(torch.nn.Module):
        def forward(self, maps):
            return soft_argmax_peak(maps, 5)

    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 6, 16, 16, generator=gen) * 0.5
    peaks = [(0, 0), (0, 15), (15, 0), (15, 15), (0, 7), (8, 15), (1, 1), (14, 2), (7, 7)]
    for i, (y, x) in enumerate(peaks):
        maps[i // 6, i % 6, y, x] = 2.0
    path = tmp_path / "peak.onnx"
    torch.onnx.export(Peak(), (maps,), str(path), input_names=["maps"], output_names=["xy", "peak"],
                      dynamic_axes={"maps": {0: "b"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xy, peak = session.run(None, {"maps": maps.numpy()})
    want_xy, want_peak = soft_argmax_peak(maps, 5)
    np.testing.assert_allclose(xy, want_xy.numpy(), atol=1e-5)
    np.testing.assert_allclose(peak, want_peak.numpy(), atol=1e-6)


def test_missing_file_is_a_clear_error(tmp_path):
    from ppmtrack.engine.onnx_runtime import OnnxEngine, OnnxFileError

    with pytest.raises(OnnxFileError, match="no such ONNX file.*export-onnx"):
        OnnxEngine.load(tmp_path / "absent.onnx")


def test_corrupt_file_is_a_clear_error(tmp_path):
    from ppmtrack.engine.onnx_runtime import OnnxEngine, OnnxFileError

    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(OnnxFileError, match="not a readable ONNX model"):
        OnnxEngine.load(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_foreign_onnx_model_is_refused(tmp_path):
    from ppmtrack.engine.onnx_runtime import OnnxEngine, OnnxFileError

    path = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(path), input_names=["images"],
                      dynamo=False)
    with pytest.raises(OnnxFileError, match="not a ppmtrack engine export"):
        OnnxEngine.load(path)


def test_export_refuses_a_half_precision_engine(quick_engine, tmp_path):
    from ppmtrack.engine import Engine
    from ppmtrack.engine.models import load_model
    from ppmtrack.engine.onnx_export import export_onnx

    half = Engine(load_model("tiny", device="cpu", dtype="float16"), quick_engine.names,
                  quick_engine.keypoint_prompts, quick_engine.foreground_prompt, quick_engine.config)
    with pytest.raises(ValueError, match="dtype='float32'"):
        export_onnx(half, tmp_path / "half.onnx")
