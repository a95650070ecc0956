"""How BLOOM's tensors are named, numbered, split and shaped, in one table of rules:

- Megatron-DeepSpeed's pipeline layer numbering (GPTModelPipe), which our checkpoints keep so
  theirs load one to one: 0 an input function, 1 the embedding (tied), 2 a function, 3 .. L+2 the
  transformer blocks, L+3 a function, L+4 the final LayerNorm, L+5 the LM head (the tied
  embedding again);
- our whole-model parameter names (`BloomModel`) against (pipeline layer, name inside it);
- transformers' `BloomForCausalLM` names: `transformer.word_embeddings`,
  `transformer.word_embeddings_layernorm`, `transformer.h.{i}.*` (the same names as our blocks),
  `transformer.ln_f`, and `lm_head.weight` tied to the embeddings;
- tensor-parallel rules: column-parallel weights and biases are split along their output rows
  (dim 0), row-parallel weights along their input columns (dim 1); the rest (LayerNorms,
  row-parallel biases) is replicated;
- the shape of every tensor of a layer, from which parameter counts follow.
"""

from __future__ import annotations

import math

import torch

from megatron.models.common import layer_numbering, tensor_split
from megatron.models.common.layer_numbering import (EMBEDDING_LAYER, FIRST_BLOCK_LAYER, block_layer,  # noqa: F401
                                                    final_norm_layer, layer_to_plain_name, lm_head_layer,
                                                    plain_name_to_layer)

COLUMN_PARALLEL = (
    "word_embeddings.weight",
    "self_attention.query_key_value.weight",
    "self_attention.query_key_value.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
)
ROW_PARALLEL = ("self_attention.dense.weight", "mlp.dense_4h_to_h.weight")

HF_PREFIX = "transformer."
TIED_HEAD = "lm_head.weight"
_HF_EMBEDDING_NAMES = {
    "word_embeddings.weight": "word_embeddings.weight",
    "word_embeddings_layernorm.weight": "word_embeddings.norm.weight",
    "word_embeddings_layernorm.bias": "word_embeddings.norm.bias",
}
_HF_FINAL_NAMES = {"ln_f.weight": "weight", "ln_f.bias": "bias"}


def parameter_layers(num_layers: int, tied: bool = True) -> list[int]:
    """The pipeline layers that hold parameters, in order (the tied LM head excluded)."""
    if not tied:
        raise ValueError("BLOOM's LM head is always tied to its embeddings")
    return layer_numbering.parameter_layers(num_layers, tied=True)


def layer_kind(layer: int, num_layers: int, tied: bool = True) -> str:
    """'embedding', 'block' or 'final_norm': what a parameter layer holds."""
    return layer_numbering.layer_kind(layer, num_layers, tied=True, family="BLOOM")


def layer_shapes(config, kind: str, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of a layer of `kind`, whole (not split over TP), by its name in the layer;
    the embedding has `vocab_size` rows (default: the config's padded vocabulary)."""
    h = config.hidden_size
    norm = {"weight": (h,), "bias": (h,)}
    if kind == "embedding":
        return {"word_embeddings.weight": (vocab_size or config.vocab_size, h),
                **{f"word_embeddings.norm.{k}": v for k, v in norm.items()}}
    if kind == "block":
        return {
            **{f"input_layernorm.{k}": v for k, v in norm.items()},
            "self_attention.query_key_value.weight": (3 * h, h),
            "self_attention.query_key_value.bias": (3 * h,),
            "self_attention.dense.weight": (h, h),
            "self_attention.dense.bias": (h,),
            **{f"post_attention_layernorm.{k}": v for k, v in norm.items()},
            "mlp.dense_h_to_4h.weight": (4 * h, h),
            "mlp.dense_h_to_4h.bias": (4 * h,),
            "mlp.dense_4h_to_h.weight": (h, 4 * h),
            "mlp.dense_4h_to_h.bias": (h,),
        }
    if kind == "final_norm":
        return dict(norm)
    raise KeyError(f"{kind!r} is not a BLOOM layer with parameters")


def layer_parameters(config, kind: str, tp_size: int) -> int:
    """Parameters of a layer of `kind` on one tensor-parallel rank (replicated tensors whole)."""
    return sum(math.prod(shape) // (tp_size if tp_split_dim(name) is not None else 1)
               for name, shape in layer_shapes(config, kind).items())


def tp_split_dim(name: str) -> int | None:
    if name in COLUMN_PARALLEL:
        return 0
    if name in ROW_PARALLEL:
        return 1
    return None


def split_for_tp(name: str, tensor: torch.Tensor, tp_size: int) -> list[torch.Tensor]:
    return tensor_split.split(name, tensor, tp_size, tp_split_dim(name))


def merge_from_tp(name: str, shards: list[torch.Tensor], where: str) -> torch.Tensor:
    """Concatenate split parameters; check that replicated ones agree across ranks."""
    return tensor_split.merge(name, shards, tp_split_dim(name), where)


def hf_to_layer(name: str, num_layers: int) -> tuple[int, str]:
    """A HF parameter name (with or without `transformer.`) -> (pipeline layer, name in it)."""
    bare = name.removeprefix(HF_PREFIX)
    if bare in _HF_EMBEDDING_NAMES:
        return EMBEDDING_LAYER, _HF_EMBEDDING_NAMES[bare]
    if bare in _HF_FINAL_NAMES:
        return final_norm_layer(num_layers), _HF_FINAL_NAMES[bare]
    if bare.startswith("h."):
        _, block, local = bare.split(".", 2)
        if int(block) < num_layers:
            return FIRST_BLOCK_LAYER + int(block), local
    raise KeyError(f"{name}: not a parameter of a {num_layers}-layer BLOOM")


def layer_to_hf(layer: int, local: str, num_layers: int) -> str:
    if layer == EMBEDDING_LAYER:
        names = {ours: hf for hf, ours in _HF_EMBEDDING_NAMES.items()}
        return HF_PREFIX + names[local]
    if layer == final_norm_layer(num_layers):
        return HF_PREFIX + {ours: hf for hf, ours in _HF_FINAL_NAMES.items()}[local]
    return f"{HF_PREFIX}h.{layer - FIRST_BLOCK_LAYER}.{local}"


VOCAB_TENSORS = ("word_embeddings.weight",)
FUSED_GATE_UP = ()  # no gated MLP


def from_hf_layer(layer: int, hf: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A layer's tensors by our names from its HF tensors as `hf_to_layer` names them (BLOOM's
    map one to one, so they already are)."""
    return hf


def to_hf_layer(layer: int, tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A layer's tensors by their full HF names."""
    return {layer_to_hf(layer, local, config.num_layers): tensor for local, tensor in tensors.items()}


# LoRA (`models/common/lora.py`) as HF PEFT names it: the HF modules PEFT adapts for each of our
# targets (BLOOM's names are ours), and a layer's adapter tensors by their HF names and back
LORA_HF_MODULES = {"query_key_value": ("query_key_value",), "dense": ("dense",),
                   "dense_h_to_4h": ("dense_h_to_4h",), "dense_4h_to_h": ("dense_4h_to_h",)}


def lora_fused_rows(module: str, config) -> None:
    """No layer of BLOOM's is fused from several HF modules (PEFT adapts its fused QKV whole)."""
    return None


def lora_to_hf_layer(layer: int, tensors: dict[str, torch.Tensor], config, lora) -> dict[str, torch.Tensor]:
    """A layer's LoRA tensors by their full HF names (`transformer.h.{i}.<module>.lora_A.weight`)."""
    return to_hf_layer(layer, tensors, config)


def lora_from_hf_layer(layer: int, hf: dict[str, torch.Tensor], config, lora) -> dict[str, torch.Tensor]:
    """A layer's LoRA tensors by our names from PEFT's, as `hf_to_layer` names them (the same)."""
    return dict(hf)
