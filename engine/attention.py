"""Cross-attention map capture as a diffusers attention processor (the UNet itself runs in `engine.unet_blocks`).

The capture processor computes the same attention output as diffusers' default processor (through the fused
`scaled_dot_product_attention` kernel) and, beside it, the PPM map of the first `n_tokens` prompt tokens:
``sigmoid(Q Kᵀ / √d)`` averaged over heads (and, for the cross-entropy loss, the head-averaged logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LAYER_SETS = ("up", "down", "mid", "all")
TOKENS = 77  # tokens of a CLIP text conditioning: the keypoint prompts, then the foreground prompt in the rest


def cross_attention_layers(unet) -> list[str]:
    """Names of all cross-attention (attn2) modules of a UNet, in forward order (down, mid, up)."""
    names = [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor")]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: (order[n.split(".")[0]], _block_index(n), n))


def _block_index(name: str) -> int:
    parts = name.split(".")
    return int(parts[1]) if parts[0] in ("down_blocks", "up_blocks") else 0


def select_layers(unet, spec: str | list[str] = "up") -> list[str]:
    """Resolve a layer selection: ``up`` (the paper's L = 9 for SD 1.5), ``down``, ``mid``, ``all``,
    or explicit layer names / indices into `cross_attention_layers` (comma-separated or a list)."""
    every = cross_attention_layers(unet)
    if isinstance(spec, str) and spec in LAYER_SETS:
        prefix = {"up": "up_blocks", "down": "down_blocks", "mid": "mid_block", "all": ""}[spec]
        chosen = [n for n in every if n.startswith(prefix)]
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        chosen = []
        for item in (str(i).strip() for i in items):
            if item.isdigit() and int(item) < len(every):
                chosen.append(every[int(item)])
            elif item in every:
                chosen.append(item)
            else:
                raise ValueError(f"unknown cross-attention layer {item!r}; this UNet has: {', '.join(every)}")
        chosen = [n for n in every if n in chosen]
    if not chosen:
        raise ValueError(f"layer selection {spec!r} matches no cross-attention layer")
    return chosen


@dataclass
class CaptureState:
    """Shared between the capture processors of one UNet: what to record and where."""

    n_tokens: int = 0
    record_logits: bool = False
    record_features: bool = False
    maps: dict = field(default_factory=dict)  # layer -> (B, n_tokens, h*w) sigmoid maps, head-averaged
    logits: dict = field(default_factory=dict)  # layer -> (B, n_tokens, h*w) head-averaged scaled scores
    features: dict = field(default_factory=dict)  # layer -> (B, h*w, C) query-side input features
    kv_cache: dict = field(default_factory=dict)  # layer -> (key, value), each (1, heads, T, d)

    def clear(self):
        self.maps.clear()
        self.logits.clear()
        self.features.clear()


class CaptureProcessor:
    """Cross-attention processor that records PPM maps; the attention output is left as diffusers computes it.

    Every cross-attention layer gets one, so that all of them reuse the cached prompt keys and values;
    only those with `capture` set record maps.
    """

    def __init__(self, name: str, state: CaptureState, capture: bool = True):
        self.name = name
        self.state = state
        self.capture = capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, seq, _ = hidden_states.shape
        heads = attn.heads
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // heads
        query = query.view(batch, seq, heads, head_dim).transpose(1, 2)
        cached = self.state.kv_cache.get(self.name)
        if cached is not None:
            key, value = (t.expand(batch, -1, -1, -1) for t in cached)
        else:
            key = attn.to_k(encoder_hidden_states).view(batch, -1, heads, head_dim).transpose(1, 2)
            value = attn.to_v(encoder_hidden_states).view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, seq, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        if not self.capture:
            return out
        n = self.state.n_tokens
        if n > 0:
            # (B, heads, n, seq): only the used tokens, not all 77
            scores = torch.matmul(key[:, :, :n], query.transpose(-1, -2)) * attn.scale
            self.state.maps[self.name] = torch.sigmoid(scores.float()).mean(dim=1)
            if self.state.record_logits:
                self.state.logits[self.name] = scores.float().mean(dim=1)
        if self.state.record_features:
            self.state.features[self.name] = hidden_states
        return out


def check_attention(attn) -> None:
    """The capture processor covers SD-style cross-attention only; refuse anything it would compute wrongly."""
    unsupported = [a for a in ("spatial_norm", "group_norm", "norm_q", "norm_k") if getattr(attn, a, None) is not None]
    if unsupported or attn.norm_cross or attn.residual_connection or attn.rescale_output_factor != 1.0:
        raise ValueError(f"cross-attention with {unsupported or 'extra normalisation'} is not supported")


def install_capture(unet, layers: list[str], state: CaptureState | None = None) -> CaptureState:
    """Put capture processors on all cross-attention layers (recording on the selected ones) and diffusers'
    fused default on the self-attention layers."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    state = state if state is not None else CaptureState()
    modules = dict(unet.named_modules())
    processors = {}
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        if layer.endswith("attn2"):
            check_attention(modules[layer])
            processors[name] = CaptureProcessor(layer, state, capture=layer in layers)
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    return state


def capture_installed(unet, layers: list[str], state: CaptureState) -> bool:
    """Whether the UNet's cross-attention layers still report to `state`, recording exactly on `layers`
    (another extractor sharing the model may have replaced them)."""
    modules = dict(unet.named_modules())
    selected = set(layers)
    return all(isinstance(p := modules[n].processor, CaptureProcessor) and p.state is state
               and p.capture == (n in selected) for n in cross_attention_layers(unet))


def cache_prompt_kv(unet, state: CaptureState, layers: list[str] | None, conditioning: torch.Tensor) -> None:
    """Project a constant (1, T, c) conditioning to keys and values once per layer; the processors reuse them.

    `layers` None means every cross-attention layer, so no layer repeats the prompt-side work per frame.
    """
    modules = dict(unet.named_modules())
    state.kv_cache.clear()
    with torch.no_grad():
        for layer in layers or cross_attention_layers(unet):
            attn = modules[layer]
            heads = attn.heads
            k = attn.to_k(conditioning)
            v = attn.to_v(conditioning)
            d = k.shape[-1] // heads
            state.kv_cache[layer] = (k.view(1, -1, heads, d).transpose(1, 2).contiguous(),
                                     v.view(1, -1, heads, d).transpose(1, 2).contiguous())


def last_block_needed(layers: list[str]) -> tuple[str, int]:
    """The UNet block after which no selected layer remains.

    One of ('down_blocks', i), ('mid_block', 0) or ('up_blocks', i).
    """
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    last = max(layers, key=lambda n: (order[n.split(".")[0]], _block_index(n)))
    return last.split(".")[0], _block_index(last)
