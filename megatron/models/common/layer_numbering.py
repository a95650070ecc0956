"""The pipeline layer numbering every family's checkpoints keep, Megatron-DeepSpeed's GPTModelPipe:
0 an input function, 1 the word embeddings, 2 a function, 3 .. L+2 the transformer blocks, L+3 a
function, L+4 the final norm, L+5 the LM head (the tied embeddings again, or its own weight). Our
layer files are named by these numbers, so DeepSpeed's `load_state_dir` reads them as it reads
Megatron-DeepSpeed's. And how the whole model's (`DecoderModel`'s) parameter names map to them:
`layers.{i}.*` the blocks, `final_layernorm.*` the final norm, `lm_head.*` an untied head, the
rest the embedding layer."""

from __future__ import annotations

EMBEDDING_LAYER = 1
FIRST_BLOCK_LAYER = 3


def block_layer(block: int) -> int:
    return FIRST_BLOCK_LAYER + block


def final_norm_layer(num_layers: int) -> int:
    return num_layers + 4


def lm_head_layer(num_layers: int) -> int:
    return num_layers + 5


def parameter_layers(num_layers: int, tied: bool) -> list[int]:
    """The pipeline layers that hold parameters, in order; a tied LM head holds none of its own."""
    layers = [EMBEDDING_LAYER, *map(block_layer, range(num_layers)), final_norm_layer(num_layers)]
    return layers if tied else [*layers, lm_head_layer(num_layers)]


def layer_kind(layer: int, num_layers: int, tied: bool, family: str) -> str:
    """'embedding', 'block', 'final_norm' or (untied) 'lm_head': what a parameter layer holds."""
    if layer == EMBEDDING_LAYER:
        return "embedding"
    if FIRST_BLOCK_LAYER <= layer < FIRST_BLOCK_LAYER + num_layers:
        return "block"
    if layer == final_norm_layer(num_layers):
        return "final_norm"
    if layer == lm_head_layer(num_layers) and not tied:
        return "lm_head"
    raise KeyError(f"layer {layer} holds no parameters of a {num_layers}-layer {family}")


def layer_to_plain_name(layer: int, local: str, num_layers: int) -> str:
    """(pipeline layer, name inside the layer) -> the whole model's parameter name."""
    if FIRST_BLOCK_LAYER <= layer < FIRST_BLOCK_LAYER + num_layers:
        return f"layers.{layer - FIRST_BLOCK_LAYER}.{local}"
    return f"final_layernorm.{local}" if layer == final_norm_layer(num_layers) else local


def plain_name_to_layer(name: str, num_layers: int) -> tuple[int, str]:
    """The whole model's parameter name -> (pipeline layer, name inside the layer)."""
    if name.startswith("layers."):
        _, block, local = name.split(".", 2)
        return block_layer(int(block)), local
    if name.startswith("final_layernorm."):
        return final_norm_layer(num_layers), name.removeprefix("final_layernorm.")
    if name.startswith("lm_head."):
        return lm_head_layer(num_layers), name
    return EMBEDDING_LAYER, name
