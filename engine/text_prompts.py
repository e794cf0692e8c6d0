"""Keypoint prompts that start from their names: "the {keypoint} of a {species}" through the model's own CLIP text
encoder (``ppmtrack adapt --init names|foreground|auto``; GKDT's text prompts, KptLLM's keypoints by language).

The keypoint prompts of PPM are free vectors in the UNet's cross-attention space, started from the foreground
prompt P_f. A name start encodes each keypoint's phrase with the text encoder Stable Diffusion was trained with
(its ``tokenizer/`` and ``text_encoder/`` subfolders) and takes the hidden state at the phrase's end token — a
vector of the very space the cross-attention reads — as that keypoint's starting prompt; the training that
follows is unchanged. The PPM paper found a BERT-style start worse than the foreground one, so ``auto`` keeps the
foreground start unless held-out validation measures the name start better (:meth:`engine.api.Engine.adapt`).

The ``tiny`` preset has no trained text encoder: it gets a small **random** CLIP text model of the same family
(``transformers.CLIPTextModel`` built from ``TINY_TEXT_CONFIG`` with a fixed seed) and, since CLIP's BPE
vocabulary cannot be downloaded offline, a byte tokenizer (UTF-8 bytes + start/end tokens). It exercises the
path offline; its vectors carry no meaning and numbers measured with it say nothing about name starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppmtrack.engine.errors import UsageError

PROMPT_TEMPLATE = "the {keypoint} of a {species}"
DEFAULT_SPECIES = "animal"
INIT_MODES = ("auto", "foreground", "names")
TINY_TEXT_SEED = 1234
BYTE_BOS, BYTE_EOS, BYTE_PAD = 256, 257, 258
MAX_TOKENS = 77


def tiny_text_config(hidden_size: int) -> dict:
    """The tiny preset's random CLIP text model: 2 layers, the UNet's cross-attention width, a byte vocabulary."""
    return dict(vocab_size=259, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                num_attention_heads=8, max_position_embeddings=MAX_TOKENS, bos_token_id=BYTE_BOS,
                eos_token_id=BYTE_EOS, pad_token_id=BYTE_PAD)


@dataclass
class TextEncoder:
    """A tokenizer (text → token ids ending with the end token) and a CLIP text model; ``kind`` says which."""

    tokenize: object
    model: torch.nn.Module
    eos_token_id: int
    kind: str

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, C) the last hidden state at each text's end token."""
        out = []
        for text in texts:
            ids = list(self.tokenize(text))[:MAX_TOKENS]
            if ids[-1] != self.eos_token_id:
                ids[-1] = self.eos_token_id
            hidden = self.model(input_ids=torch.tensor([ids], device=self.model.device)).last_hidden_state
            out.append(hidden[0, len(ids) - 1].float())
        return torch.stack(out)


def _byte_tokenize(text: str) -> list[int]:
    return [BYTE_BOS, *text.encode("utf-8")[:MAX_TOKENS - 2], BYTE_EOS]


def load_text_encoder(model) -> TextEncoder:
    """The text encoder of a :class:`engine.models.DiffusionModel`: SD's own for a hub id or folder, the random
    tiny one for ``tiny`` (module docstring). A clear error when a folder or the cache lacks it."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if model.name == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_TEXT_SEED)
            text_model = CLIPTextModel(CLIPTextConfig(**tiny_text_config(model.cross_attention_dim)))
        return TextEncoder(_byte_tokenize, text_model.eval().to(model.device), BYTE_EOS,
                           "tiny random CLIP text model (byte tokenizer; meaningless vectors)")
    from transformers import CLIPTokenizer

    local = Path(model.name).expanduser()
    source = str(local) if local.is_dir() else model.name
    kwargs = {} if local.is_dir() else {"revision": model.revision}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        text_model = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
    except (OSError, ValueError) as e:
        raise UsageError(f"--init names needs the model's text encoder ({source}: tokenizer/ and text_encoder/), "
                         f"which could not be loaded ({type(e).__name__}: {str(e)[:200]}); use --init foreground"
                         ) from e
    return TextEncoder(lambda text: tokenizer(text)["input_ids"], text_model.eval().to(model.device),
                       int(tokenizer.eos_token_id), "the model's CLIP text encoder")


def keypoint_phrases(names: list[str], species: str | None) -> list[str]:
    """``the {keypoint} of a {species}`` per keypoint; underscores in names read as spaces."""
    species = (species or DEFAULT_SPECIES).strip() or DEFAULT_SPECIES
    return [PROMPT_TEMPLATE.format(keypoint=n.replace("_", " ").strip(), species=species) for n in names]


def name_prompts(model, names: list[str], species: str | None, scale_to: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict]:
    """(K, C) starting keypoint prompts from the keypoints' names, and the record stored in the engine.

    ``scale_to``: a prompt (P_f) whose norm each name vector is scaled to, so the name start sits where the
    training's learning rate was chosen for (CLIP hidden states and P_f differ in scale).
    """
    encoder = load_text_encoder(model)
    phrases = keypoint_phrases(names, species)
    vectors = encoder.encode(phrases).to(model.device)
    if scale_to is not None:
        target = float(scale_to.float().norm())
        vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-6) * target
    record = {"template": PROMPT_TEMPLATE, "species": (species or DEFAULT_SPECIES), "phrases": phrases,
              "text_encoder": encoder.kind,
              "distinct": bool(len(np.unique(np.round(vectors.cpu().numpy(), 5), axis=0)) == len(names))}
    return vectors, record


def check_init(mode: str) -> str:
    if mode not in INIT_MODES:
        raise UsageError(f"--init must be one of {', '.join(INIT_MODES)}, got {mode!r}")
    return mode
