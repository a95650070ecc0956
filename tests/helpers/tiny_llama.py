"""The tiny Llama-family models of the tests: random HF `LlamaForCausalLM` (untied, `llama3` rope
scaling that bites at the tests' lengths, grouped-query attention; and one with Llama's
`attention_bias` and `mlp_bias`), `Qwen2ForCausalLM` (tied, q/k/v bias) and `MistralForCausalLM`
saved to folders, with content-dependent attention (q/k/v
weights 10x, as BLOOM's tiny models) and norms away from their init."""

from __future__ import annotations

import torch
from helpers.tiny import QKV_SCALE, VOCAB
from transformers import AutoConfig, AutoModelForCausalLM

# head size 8, 4 query heads over 2 KV heads; rope theta small and llama3's original context
# short, so that its interpolated and divided frequency bands both occur and turn by whole
# radians within the tests' 24 tokens: dropping the scaling moves the logits far past the tolerance
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, max_position_embeddings=64,
               attention_dropout=0.0)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 100.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
CONFIGS = {
    "llama": dict(model_type="llama", tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE, attention_bias=False,
                  mlp_bias=False),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 1000.0},
                  use_sliding_window=False),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, sliding_window=64,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "llama_biases": dict(model_type="llama", tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
}


def hf_config(kind: str, **changes):
    fields = {**_COMMON, **CONFIGS[kind], **changes}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def make_hf_llama(folder: str, kind: str, seed: int = 0, dtype: torch.dtype = torch.float32, **changes):
    """A random 2-layer model of `kind` ('llama', 'qwen2', 'mistral'), saved to `folder` in `dtype`."""
    torch.manual_seed(seed)
    config = hf_config(kind, **changes)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if any(name.endswith(f"{x}_proj.weight") for x in "qkv"):
                p.mul_(QKV_SCALE)
    model = model.to(dtype)
    model.save_pretrained(folder)
    return model
