"""Attention capture: maps of the right shape for every selected layer, UNet output unchanged, truncation exact."""

import pytest
import torch

from ppmtrack.engine.attention import (
    cross_attention_layers,
    install_capture,
    last_block_needed,
    select_layers,
)
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.unet_blocks import unet_forward_until


def _inputs(model, batch=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 32, 32, generator=g)
    cond = torch.randn(1, 77, model.cross_attention_dim, generator=g).expand(batch, -1, -1)
    return x, torch.tensor(10), cond


def test_layer_selection(tiny_model):
    unet = tiny_model.unet
    every = cross_attention_layers(unet)
    assert len(every) == 16  # SD 1.5's count: down 6, mid 1, up 9
    up = select_layers(unet, "up")
    assert len(up) == 9 and all(n.startswith("up_blocks") for n in up)
    assert select_layers(unet, "0,15") == [every[0], every[15]]
    with pytest.raises(ValueError, match="unknown cross-attention layer"):
        select_layers(unet, "nope")
    assert last_block_needed(up) == ("up_blocks", 3)
    assert last_block_needed(select_layers(unet, "down")) == ("down_blocks", 2)


def test_capture_leaves_unet_output_unchanged_and_records_every_layer(tiny_model):
    unet = tiny_model.unet
    x, t, cond = _inputs(tiny_model)
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        reference = unet(x, t, cond).sample
    layers = select_layers(unet, "all")
    state = install_capture(unet, layers)
    state.n_tokens = 5
    with torch.no_grad():
        captured = unet(x, t, cond).sample
    assert torch.allclose(captured, reference, atol=1e-5)
    assert set(state.maps) == set(layers)
    for name, m in state.maps.items():
        side = int(m.shape[-1] ** 0.5)
        assert m.shape == (2, 5, side * side) and side in (4, 8, 16, 32), name
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0  # sigmoid maps
    # the block-by-block forward is the same UNet
    state.clear()
    with torch.no_grad():
        assert torch.allclose(unet_forward_until(unet, x, t, cond, None), reference, atol=1e-5)


def test_truncated_forward_gives_identical_maps(tiny_model):
    layers = select_layers(tiny_model.unet, "up_blocks.2.attentions.0.transformer_blocks.0.attn2,"
                                            "up_blocks.2.attentions.2.transformer_blocks.0.attn2")
    x, _, cond = _inputs(tiny_model)
    full = MapExtractor(tiny_model, layers, truncate=False)
    with torch.no_grad():
        a = full.layer_maps(x, cond[:1], n_tokens=3)["maps"]
    cut = MapExtractor(tiny_model, layers, truncate=True)
    assert cut.stop_after == ("up_blocks", 2)
    with torch.no_grad():
        b = cut.layer_maps(x, cond[:1], n_tokens=3)["maps"]
    assert a.shape == (2, 2, 3, 16, 16)
    assert torch.allclose(a, b, atol=1e-6)


def test_cached_prompt_projections_match_uncached(tiny_model):
    from ppmtrack.engine.attention import cache_prompt_kv

    layers = select_layers(tiny_model.unet, "up")
    x, _, cond = _inputs(tiny_model)
    ex = MapExtractor(tiny_model, layers)
    with torch.no_grad():
        plain = ex.layer_maps(x, cond[:1], n_tokens=4)["maps"]
        cache_prompt_kv(tiny_model.unet, ex.state, layers, cond[:1])
        cached = ex.layer_maps(x, cond[:1], n_tokens=4)["maps"]
    ex.state.kv_cache.clear()
    assert torch.allclose(plain, cached, atol=1e-6)
