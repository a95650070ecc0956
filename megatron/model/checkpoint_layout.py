"""The checkpoint layout of Megatron-DeepSpeed's BLOOM, which ours follows so that its
checkpoints load one to one: a folder per tag holding one file per (pipeline layer, tensor rank),
`layer_XX-model_TT-model_states.pt`, plus `mp_rank_XX_model_states.pt` per model-parallel rank,
and a `latest` file naming the tag.

Pipeline layer indices are those of Megatron-DeepSpeed's GPTModelPipe: 0 an input function,
1 the embedding (tied), 2 a function, 3 .. L+2 the transformer blocks, L+3 a function, L+4 the
final LayerNorm, L+5 the LM head (the tied embedding again).

Tensor-parallel rules per parameter: column-parallel weights and biases are split along their
output rows (dim 0), row-parallel weights along their input columns (dim 1); the rest
(LayerNorms, row-parallel biases) is replicated.
"""

from __future__ import annotations

from pathlib import Path

import torch

EMBEDDING_LAYER = 1
FIRST_BLOCK_LAYER = 3
COLUMN_PARALLEL = (
    "word_embeddings.weight",
    "self_attention.query_key_value.weight",
    "self_attention.query_key_value.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
)
ROW_PARALLEL = ("self_attention.dense.weight", "mlp.dense_4h_to_h.weight")
MODEL_CONFIG_FILE = "bloom_config.json"


def block_layer(block: int) -> int:
    return FIRST_BLOCK_LAYER + block


def final_norm_layer(num_layers: int) -> int:
    return num_layers + 4


def lm_head_layer(num_layers: int) -> int:
    return num_layers + 5


def layer_file(folder: str | Path, layer: int, tp_rank: int) -> Path:
    return Path(folder) / f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt"


def model_states_file(folder: str | Path, mp_rank: int) -> Path:
    return Path(folder) / f"mp_rank_{mp_rank:02d}_model_states.pt"


def tp_split_dim(name: str) -> int | None:
    if name in COLUMN_PARALLEL:
        return 0
    if name in ROW_PARALLEL:
        return 1
    return None


def split_for_tp(name: str, tensor: torch.Tensor, tp_size: int) -> list[torch.Tensor]:
    dim = tp_split_dim(name)
    if dim is None:
        return [tensor] * tp_size
    if tensor.shape[dim] % tp_size:
        raise ValueError(f"{name}: dimension {dim} of size {tensor.shape[dim]} does not split "
                         f"into {tp_size} tensor-parallel parts")
    return [t.clone() for t in torch.chunk(tensor, tp_size, dim=dim)]


def merge_from_tp(name: str, shards: list[torch.Tensor], where: str) -> torch.Tensor:
    """Concatenate split parameters; check that replicated ones agree across ranks."""
    dim = tp_split_dim(name)
    if dim is not None:
        return torch.cat(shards, dim=dim)
    for rank, shard in enumerate(shards[1:], start=1):
        if not torch.equal(shard, shards[0]):
            difference = (shard.float() - shards[0].float()).abs().max().item()
            raise ValueError(f"{where}: replicated parameter {name!r} differs between tensor-parallel "
                             f"ranks 0 and {rank} (max abs difference {difference:.3g})")
    return shards[0]


def layer_to_plain_name(layer: int, local: str, num_layers: int) -> str:
    if layer == EMBEDDING_LAYER:
        return local
    if FIRST_BLOCK_LAYER <= layer < FIRST_BLOCK_LAYER + num_layers:
        return f"layers.{layer - FIRST_BLOCK_LAYER}.{local}"
    if layer == final_norm_layer(num_layers):
        return f"final_layernorm.{local}"
    raise KeyError(f"layer {layer} holds no parameters of a {num_layers}-layer BLOOM")


def plain_name_to_layer(name: str, num_layers: int) -> tuple[int, str]:
    """`BloomModel`'s parameter name -> (pipeline layer, name inside the layer)."""
    if name.startswith("layers."):
        _, block, local = name.split(".", 2)
        return block_layer(int(block)), local
    if name.startswith("final_layernorm."):
        return final_norm_layer(num_layers), name.removeprefix("final_layernorm.")
    return EMBEDDING_LAYER, name


def parameter_layers(num_layers: int) -> list[int]:
    """The pipeline layers that hold parameters, in order (the tied LM head excluded)."""
    return [EMBEDDING_LAYER, *map(block_layer, range(num_layers)), final_norm_layer(num_layers)]
