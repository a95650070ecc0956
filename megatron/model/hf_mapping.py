"""Names of transformers' `BloomForCausalLM` parameters against our pipeline layers
(`checkpoint_layout`): the HF model stores `transformer.word_embeddings`,
`transformer.word_embeddings_layernorm`, `transformer.h.{i}.*` (the same names as our blocks),
`transformer.ln_f`, and `lm_head.weight` tied to the embeddings."""

from __future__ import annotations

from megatron.model.checkpoint_layout import EMBEDDING_LAYER, FIRST_BLOCK_LAYER, final_norm_layer

HF_PREFIX = "transformer."
TIED_HEAD = "lm_head.weight"
_EMBEDDING_NAMES = {
    "word_embeddings.weight": "word_embeddings.weight",
    "word_embeddings_layernorm.weight": "word_embeddings.norm.weight",
    "word_embeddings_layernorm.bias": "word_embeddings.norm.bias",
}
_FINAL_NAMES = {"ln_f.weight": "weight", "ln_f.bias": "bias"}


def hf_to_layer(name: str, num_layers: int) -> tuple[int, str]:
    """A HF parameter name (with or without `transformer.`) -> (pipeline layer, name in it)."""
    bare = name.removeprefix(HF_PREFIX)
    if bare in _EMBEDDING_NAMES:
        return EMBEDDING_LAYER, _EMBEDDING_NAMES[bare]
    if bare in _FINAL_NAMES:
        return final_norm_layer(num_layers), _FINAL_NAMES[bare]
    if bare.startswith("h."):
        _, block, local = bare.split(".", 2)
        if int(block) < num_layers:
            return FIRST_BLOCK_LAYER + int(block), local
    raise KeyError(f"{name}: not a parameter of a {num_layers}-layer BLOOM")


def layer_to_hf(layer: int, local: str, num_layers: int) -> str:
    if layer == EMBEDDING_LAYER:
        names = {ours: hf for hf, ours in _EMBEDDING_NAMES.items()}
        return HF_PREFIX + names[local]
    if layer == final_norm_layer(num_layers):
        return HF_PREFIX + {ours: hf for hf, ours in _FINAL_NAMES.items()}[local]
    return f"{HF_PREFIX}h.{layer - FIRST_BLOCK_LAYER}.{local}"
