"""The tiny models of the model tests, in one place: a random HF BLOOM saved to a folder, and our
model config of the same small shape."""

from __future__ import annotations

import torch
from transformers import BloomConfig, BloomForCausalLM

from megatron.models.bloom.config import BloomModelConfig

VOCAB = 250


def tiny_config(**options) -> BloomModelConfig:
    """Our tiny BLOOM: 2 layers, hidden 32, 4 heads, a 256-row vocabulary; `options` on top."""
    return BloomModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, **options)


def make_hf_model(folder: str, num_heads: int, seed: int = 0) -> BloomForCausalLM:
    """A random 2-layer HF BLOOM of `num_heads` heads (head size 8) over `VOCAB` tokens."""
    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=VOCAB, hidden_size=8 * num_heads, n_layer=2, n_head=num_heads,
                         hidden_dropout=0.0, attention_dropout=0.0, attn_implementation="eager")
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from their 1/0 init, so they are tested too
        for name, p in model.named_parameters():
            if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model
