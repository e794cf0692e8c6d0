"""Export an adapted engine's per-frame inference graph to ONNX, with the prompts baked in as constants.

The graph takes letterboxed images and returns keypoints in engine-input pixels; letterboxing and the mapping
back to frame pixels stay outside it (see `engine.onnx_runtime.OnnxEngine`). It is traced from the same code
that `Engine.predict` runs: VAE encoder, fixed noise at the engine's timestep, the truncated UNet with the
capture processors (prompt keys and values precomputed by `cache_prompt_kv`), FGAR fusion and the sub-pixel
peak read-out.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from ppmtrack.engine.infer import stack_layer_maps
from ppmtrack.engine.localize import read_out
from ppmtrack.engine.unet_blocks import run_blocks, start_unet

ONNX_FORMAT = "ppmtrack-onnx"
ONNX_FORMAT_VERSION = 1
# protobuf cannot serialise a model over 2 GiB; larger ones (SD 1.5) keep their weights in one side file
MAX_INLINE_BYTES = 2**31 - 2**26


class EngineGraph(torch.nn.Module):
    """`Engine.predict` on a letterboxed batch, as one module: images (B, 3, S, S) in [-1, 1] → read-out.

    The forward returns ``keypoints`` (B, K, 2) in engine-input pixels, ``confidence`` (B, K) (peak of the
    fused map, clamped to [0, 1]), ``sharpness`` (B, K) (peak over the map's mean) and, with ``with_maps``,
    the fused maps (B, K, R, R) and the foreground map (B, R, R). The engine's prompt keys and values are
    cached before tracing, so they enter the graph as constants.
    """

    def __init__(self, engine, with_maps: bool = False):
        super().__init__()
        self.engine = engine
        self.with_maps = with_maps
        # registered so that the tracer stores their weights as initializers, not as Constant nodes
        self.vae, self.unet = engine.model.vae, engine.model.unet
        engine.cache_prompt()
        m = engine.model
        side = engine.resolution // m.vae_scale
        latent = (int(m.vae.config.latent_channels), side, side)
        self.noise = engine.extractor.noise(latent)  # built here: under tracing its shape key is a tensor
        a = m.alphas_cumprod[engine.extractor.timestep]
        self.sqrt_a, self.sqrt_1ma = float(a.sqrt()), float((1 - a).sqrt())

    def forward(self, images: torch.Tensor):
        eng = self.engine
        ex, m = eng.extractor, eng.model
        z = m.vae.encode(images.to(m.device, m.dtype)).latent_dist.mean * m.scaling_factor
        z = self.sqrt_a * z + self.sqrt_1ma * self.noise  # `MapExtractor.encode`
        cond = eng.conditioning().expand(z.shape[0], -1, -1)  # read by the layers that do not capture
        t = torch.tensor(ex.timestep, device=z.device)  # made in the trace, not `timestep_on`'s cached one
        with ex.capturing(len(eng.names) + 1) as st:
            run_blocks(m.unet, start_unet(m.unet, z, t), cond, stop=ex.stop_after)  # the eager blocks: traced
            maps = stack_layer_maps(st.maps, ex.layers)  # (B, L, K+1, R, R)
        out = read_out(maps, len(eng.names), eng.fgar, eng.resolution)
        if self.with_maps:
            return out.keypoints, out.confidence, out.sharpness, out.maps.float(), out.foreground.float()
        return out.keypoints, out.confidence, out.sharpness


def output_names(with_maps: bool) -> list[str]:
    """Names of the exported graph's outputs, in order."""
    return ["keypoints", "confidence", "sharpness"] + (["maps", "foreground"] if with_maps else [])


def onnx_metadata(engine, name: str, with_maps: bool) -> dict[str, str]:
    """What `OnnxEngine` needs without the engine file, as ONNX ``metadata_props`` (string values, JSON)."""
    from ppmtrack.engine.api import package_version

    return {
        "format": ONNX_FORMAT,
        "format_version": str(ONNX_FORMAT_VERSION),
        "ppmtrack_version": package_version(),
        "name": name,
        "keypoints": json.dumps(engine.names),
        "skeleton": json.dumps([list(e) for e in engine.skeleton]),
        "flip_pairs": json.dumps([list(e) for e in engine.flip_pairs]),
        "resolution": str(engine.resolution),
        "model": json.dumps({"name": engine.model.name, "revision": engine.model.revision}),
        "layers": json.dumps(engine.layers),
        "timestep": str(engine.config.timestep),
        "fgar": json.dumps(asdict(engine.fgar)),
        "with_maps": json.dumps(with_maps),
        "info": json.dumps({k: v for k, v in engine.info.items() if k != "loss_history"}, default=str),
    }


def save_onnx_model(model, path: str | Path, max_inline_bytes: int = MAX_INLINE_BYTES) -> Path:
    """Save an ONNX ModelProto; weights over `max_inline_bytes` in all go to one ``<path>.data`` file."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if weights > max_inline_bytes:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=True)
    else:
        onnx.save_model(model, str(path))
    return path


def export_onnx(engine, path: str | Path, *, with_maps: bool = False, opset: int = 17,
                batch_size: int | None = None, name: str | None = None) -> Path:
    """Export an adapted engine as an ONNX model that reproduces `Engine.predict` on letterboxed frames.

    Parameters
    ----------
    engine : engine.Engine
        The adapted engine. It must be in float32 (load it with ``dtype="float32"``; the CPU is fine).
    path : str or Path
        Output ``.onnx`` file. Models over 2 GiB (SD 1.5) also write ``<path>.data`` beside it.
    with_maps : bool
        Also output the fused maps ``maps`` (B, K, R, R) and the foreground map ``foreground`` (B, R, R).
    opset : int
        ONNX opset (17 by default; 14 is the lowest the attention export supports).
    batch_size : int, optional
        Fix the batch size; default: a dynamic batch axis.
    name : str, optional
        Engine name stored in the metadata; default: the file's stem.

    Returns
    -------
    Path
        The written file. Input: ``images`` (B, 3, S, S) float32 in [-1, 1], already letterboxed to
        S = ``engine.resolution``. Outputs: see `output_names` and `EngineGraph`.
    """
    import onnx

    if engine.model.dtype != torch.float32:
        raise ValueError(f"ONNX export needs the engine in float32, but it is in {engine.model.dtype}; "
                         f"load it with Engine.load(path, device='cpu', dtype='float32')")
    path = Path(path)
    s = engine.resolution
    example = torch.zeros(batch_size or 2, 3, s, s, device=engine.model.device)  # batch 2: keep the expand
    outputs = output_names(with_maps)
    dynamic = None if batch_size else {n: {0: "batch"} for n in ["images", *outputs]}
    graph = EngineGraph(engine, with_maps).eval()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on Python-side shape checks; the tests check that the batch axis generalises
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        # deliberate: the dynamo exporter needs onnxscript, which ppmtrack does not depend on
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        raw = Path(tmp) / "graph.onnx"
        torch.onnx.export(graph, (example,), str(raw), input_names=["images"], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(raw))
    for key, value in onnx_metadata(engine, name or path.stem, with_maps).items():
        model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key="export_seconds", value=f"{time.perf_counter() - t0:.1f}")
    model.producer_name = "ppmtrack"
    save_onnx_model(model, path)
    return path


__all__ = ["EngineGraph", "export_onnx", "onnx_metadata", "output_names", "save_onnx_model"]
