"""Putting whole (unsplit) layers into a model on this rank, from any source with a
`layer(index) -> {name: tensor}` (a `CheckpointReader`, an `HFCheckpoint`): this tensor rank's part
of each, into the whole model or into this stage of a DeepSpeed `PipelineModule`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

LayerSource = Callable[[int], dict[str, torch.Tensor]]


def load_layers_into_model(model: nn.Module, layer_tensors: LayerSource, adapter, tp_rank: int,
                           tp_size: int) -> None:
    """Every parameter layer into the whole model (`ModelSpec.build_model`'s module)."""
    num_layers = model.config.num_layers
    state = {}
    for layer in adapter.parameter_layers(num_layers, model.config.tie_word_embeddings):
        for local, tensor in layer_tensors(layer).items():
            state[adapter.layer_to_plain_name(layer, local, num_layers)] = \
                adapter.split_for_tp(local, tensor, tp_size)[tp_rank]
    model.load_state_dict(state, strict=True)


def _stage_modules(module) -> Iterator[tuple[int, nn.Module]]:
    """(pipeline layer index, module) of each layer with parameters on this stage of a
    `PipelineModule`, tied layers excluded."""
    first = int(module.partitions()[module.stage_id])
    for offset, layer_module in enumerate(module.forward_funcs):
        if isinstance(layer_module, nn.Module) and layer_module not in module.tied_modules.values():
            yield first + offset, layer_module


def load_layers_into_pipeline(module, layer_tensors: LayerSource, adapter, tp_rank: int, tp_size: int) -> None:
    """This stage's own layers, and a tied embedding (on the last stage too, where it is the LM
    head)."""

    def load(layer_module: nn.Module, layer: int) -> None:
        layer_module.load_state_dict(
            {local: adapter.split_for_tp(local, t, tp_size)[tp_rank] for local, t in layer_tensors(layer).items()})

    for layer, layer_module in _stage_modules(module):
        load(layer_module, layer)
    for tied in module.tied_modules.values():
        load(tied, adapter.EMBEDDING_LAYER)
