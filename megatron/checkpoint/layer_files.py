"""The layer files of a checkpoint tag, `layer_XX-model_TT-model_states.pt`: each holds one
pipeline layer's tensors on one tensor rank, by their names inside the layer. `CheckpointReader`
gives a layer merged across tensor ranks; `save_layer` and `save_model_layers` write them.
Only tensors are written (our layers drop megatron-core's `*._extra_state` entries from their
state dicts, `models/common/extra_state.py`); checkpoints written before that have them, and they
are skipped when read."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from megatron.checkpoint.layout import CheckpointError, layer_file, read_latest
from megatron.checkpoint.metadata import read_metadata
from megatron.models.common import lora
from megatron.models.common.extra_state import EXTRA_STATE


def save_layer(tag_dir: Path, layer: int, tp_rank: int, tensors: dict[str, torch.Tensor]) -> None:
    torch.save(tensors, layer_file(tag_dir, layer, tp_rank))


def save_model_layers(model: nn.Module, tag_dir: Path, adapter, tp_rank: int, adapters_only: bool = False) -> None:
    """This tensor rank's layer files of a whole model (`ModelSpec.build_model`'s module), its
    parameter names mapped to pipeline layers by the family's `adapter`; with `adapters_only`,
    the LoRA tensors alone (a file for every layer, empty where it has none, as DeepSpeed's
    pipeline writes them without its frozen parameters)."""
    layers: dict[int, dict[str, torch.Tensor]] = {
        layer: {} for layer in adapter.parameter_layers(model.config.num_layers, model.config.tie_word_embeddings)}
    for name, tensor in model.state_dict().items():
        if adapters_only and not lora.is_lora(name):
            continue
        layer, local = adapter.plain_name_to_layer(name, model.config.num_layers)
        layers.setdefault(layer, {})[local] = tensor.detach().cpu().clone()
    for layer, tensors in layers.items():
        save_layer(tag_dir, layer, tp_rank, tensors)


class CheckpointReader:
    """Reads the layer files of one of our checkpoints: the tag `latest` names, or `tag`."""

    def __init__(self, folder: str | Path, spec, tag: str | None = None):
        self.folder = Path(folder)
        self.adapter = spec.adapter
        self.tag_dir = self.folder / (tag or read_latest(self.folder))
        meta = read_metadata(self.folder)
        if meta.family != spec.name:
            raise CheckpointError(f"{self.folder} holds a {meta.family} model, not {spec.name}")
        self.config, self.hf_config = meta.model, meta.hf_config
        first = self.adapter.EMBEDDING_LAYER
        ranks = sorted(int(m.group(1)) for p in self.tag_dir.glob(f"layer_{first:02d}-model_*")
                       if (m := re.search(r"model_(\d+)-model_states", p.name)))
        if not ranks:
            raise CheckpointError(f"{self.tag_dir}: no layer files")
        self.tp_size = len(ranks)

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        """Layer `layer` merged across tensor ranks."""
        shards = []
        for rank in range(self.tp_size):
            path = layer_file(self.tag_dir, layer, rank)
            if not path.is_file():
                raise CheckpointError(f"{path}: missing")
            shards.append(torch.load(path, map_location="cpu", weights_only=True))
        return {name: lora.merge_from_tp(self.adapter, name, [s[name] for s in shards], f"layer {layer} of {self.tag_dir}")
                for name in shards[0] if not name.endswith(EXTRA_STATE)}
