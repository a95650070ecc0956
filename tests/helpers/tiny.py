"""The tiny models of the model tests, in one place: a random HF BLOOM saved to a folder, our
model config of the same small shape, and the larger query/key/value weights that make a tiny
model's attention depend on content."""

from __future__ import annotations

import torch
from transformers import BloomConfig, BloomForCausalLM

from megatron.models.bloom.config import BloomModelConfig

VOCAB = 250
# HF's init (std 0.02) leaves a tiny model's attention scores near 0, its attention nearly pure
# ALiBi; query/key/value weights 10x larger (std 0.2) make the scores depend on the tokens.
QKV_SCALE = 10.0


def tiny_config(**options) -> BloomModelConfig:
    """Our tiny BLOOM: 2 layers, hidden 32, 4 heads, a 256-row vocabulary; `options` on top."""
    return BloomModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, **options)


def sharpen_attention(model: torch.nn.Module) -> None:
    """Scale every query/key/value weight by `QKV_SCALE` (HF's model or ours: both name them
    `...query_key_value.weight`)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("query_key_value.weight"):
                p.mul_(QKV_SCALE)


def make_hf_model(folder: str, num_heads: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                  vocab: int = VOCAB) -> BloomForCausalLM:
    """A random 2-layer HF BLOOM of `num_heads` heads (head size 8) over `vocab` tokens, saved in
    `dtype`, with content-dependent attention (`sharpen_attention`)."""
    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=vocab, hidden_size=8 * num_heads, n_layer=2, n_head=num_heads,
                         hidden_dropout=0.0, attention_dropout=0.0, attn_implementation="eager")
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from their 1/0 init, so they are tested too
        for name, p in model.named_parameters():
            if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    sharpen_attention(model)
    model = model.to(dtype)
    model.save_pretrained(folder)
    return model
