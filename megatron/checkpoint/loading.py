"""Putting whole (unsplit) layers into a model on this rank, from any source with a
`layer(index) -> {name: tensor}` (a `CheckpointReader`, an `HFCheckpoint`): this tensor rank's part
of each, into the whole model or into this stage of a DeepSpeed `PipelineModule`. With
`adapters_only`, the source holds LoRA adapters alone (a LoRA checkpoint) and must hold every
adapter of the model, and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from megatron.checkpoint.layout import CheckpointError
from megatron.models.common import lora

LayerSource = Callable[[int], dict[str, torch.Tensor]]


def _load(module: nn.Module, state: dict[str, torch.Tensor], adapters_only: bool, where: str) -> None:
    if not adapters_only:
        module.load_state_dict(state, strict=True)
        return
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [name for name in missing if lora.is_lora(name)]
    if missing or unexpected:
        raise CheckpointError(f"{where}: the adapters do not fit this model's: missing {missing}, "
                              f"not in the model {unexpected}")


def load_layers_into_model(model: nn.Module, layer_tensors: LayerSource, adapter, tp_rank: int,
                           tp_size: int, adapters_only: bool = False) -> None:
    """Every parameter layer into the whole model (`ModelSpec.build_model`'s module)."""
    num_layers = model.config.num_layers
    state = {}
    for layer in adapter.parameter_layers(num_layers, model.config.tie_word_embeddings):
        for local, tensor in layer_tensors(layer).items():
            state[adapter.layer_to_plain_name(layer, local, num_layers)] = \
                lora.split_for_tp(adapter, local, tensor, tp_size)[tp_rank]
    _load(model, state, adapters_only, "the whole model")


def stage_modules(module) -> Iterator[tuple[int, nn.Module]]:
    """(pipeline layer index, module) of each layer with parameters on this stage of a
    `PipelineModule`, tied layers excluded."""
    first = int(module.partitions()[module.stage_id])
    for offset, layer_module in enumerate(module.forward_funcs):
        if isinstance(layer_module, nn.Module) and layer_module not in module.tied_modules.values():
            yield first + offset, layer_module


def load_layers_into_pipeline(module, layer_tensors: LayerSource, adapter, tp_rank: int, tp_size: int,
                              adapters_only: bool = False) -> None:
    """This stage's own layers, and a tied embedding (on the last stage too, where it is the LM
    head); with `adapters_only`, the layers that hold adapters."""

    def load(layer_module: nn.Module, layer: int) -> None:
        _load(layer_module, {local: lora.split_for_tp(adapter, local, t, tp_size)[tp_rank]
                             for local, t in layer_tensors(layer).items()}, adapters_only, f"layer {layer}")

    for layer, layer_module in stage_modules(module):
        if not adapters_only or any(lora.is_lora(name) for name, _ in layer_module.named_parameters()):
            load(layer_module, layer)
    if not adapters_only:
        for tied in module.tied_modules.values():
            load(tied, adapter.EMBEDDING_LAYER)
