"""Lazy access to the tensors of a HF model folder: `model.safetensors`, `pytorch_model.bin`, or
their sharded forms with an index; `layer(i)` gives pipeline layer i's tensors by their names in
it, checked against the family's shape table, the vocabulary padded to the model's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from megatron.checkpoint.layout import CheckpointError
from megatron.models import spec_for_hf_model_type
from megatron.models.common.vocab import padded_vocab_size
from megatron.models.spec import UnsupportedConfig


def spec_of_hf_folder(folder: str | Path):
    """The model family of a HF model folder, from its `config.json`'s `model_type`."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a HF model folder)")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable HF config ({error})") from None
    try:
        return spec_for_hf_model_type(model_type)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


class HFCheckpoint:
    def __init__(self, folder: str | Path, spec):
        self.folder = Path(folder)
        self.spec, self.adapter = spec, spec.adapter
        if not (self.folder / "config.json").is_file():
            raise CheckpointError(f"{self.folder}: no config.json (not a HF model folder)")
        self.config = spec.config_class.read_hf_config(self.folder)
        if self.config.model_type not in spec.hf_model_types:
            raise CheckpointError(f"{self.folder}: model_type {self.config.model_type!r} is not a {spec.name} model")
        self._file_of: dict[str, Path] = {}
        for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                                   ("pytorch_model.bin.index.json", "pytorch_model.bin")):
            if (self.folder / index_name).is_file():
                weight_map = json.loads((self.folder / index_name).read_text())["weight_map"]
                self._file_of = {name: self.folder / f for name, f in weight_map.items()}
                break
            if (self.folder / single).is_file():
                self._file_of = {name: self.folder / single for name in self._names_in(self.folder / single)}
                break
        else:
            raise CheckpointError(f"{self.folder}: no model.safetensors, pytorch_model.bin or index")
        for path in set(self._file_of.values()):
            if not path.is_file():
                raise CheckpointError(f"{path}: listed in the index but missing")
        self._open: dict[Path, object] = {}

    @staticmethod
    def _names_in(path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        return list(torch.load(path, map_location="cpu", mmap=True, weights_only=True))

    def names(self) -> list[str]:
        return list(self._file_of)

    def get(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        if path not in self._open:
            self._open[path] = (
                safe_open(str(path), framework="pt") if path.suffix == ".safetensors"
                else torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            )
        handle = self._open[path]
        return handle.get_tensor(name) if path.suffix == ".safetensors" else handle[name]

    def model_config(self, tp_size: int, divisible_by: int = 128, pad_to: int | None = None):
        """Our model config for this folder at TP `tp_size`, the vocabulary padded by Megatron's
        rule."""
        vocab = padded_vocab_size(self.config.vocab_size, tp_size, divisible_by, pad_to)
        try:
            config = self.spec.config_class.from_hf(self.config, vocab_size=vocab)
        except UnsupportedConfig as error:
            raise UnsupportedConfig(f"{self.folder / 'config.json'}: {error}") from None
        except ValueError as error:  # a shape that does not hold together
            raise CheckpointError(f"{self.folder / 'config.json'}: {error}") from None
        try:
            config.check_tensor_parallel(tp_size)
        except ValueError as error:
            raise CheckpointError(f"{self.folder}: {error}") from None
        return config

    def _skipped(self, name: str, config) -> bool:
        """A tied model's `lm_head.weight`, if the folder has it: the embeddings' weight again."""
        return name == self.adapter.TIED_HEAD and config.tie_word_embeddings

    def unknown_names(self, config) -> list[str]:
        """Tensors the family's model `config` describes does not have."""
        unknown = []
        for name in self.names():
            if self._skipped(name, config):
                continue
            try:
                self.adapter.hf_to_layer(name, config.num_layers)
            except (KeyError, ValueError):
                unknown.append(name)
        return unknown

    def layer(self, layer: int, config) -> dict[str, torch.Tensor]:
        """The tensors of pipeline layer `layer` of the model `config` describes, by their names
        in it, the vocabulary padded to `config`'s."""
        hf_vocab = self.config.vocab_size
        kind = self.adapter.layer_kind(layer, config.num_layers, config.tie_word_embeddings)
        shapes = self.adapter.layer_shapes(config, kind, vocab_size=hf_vocab)
        theirs = {}
        for name in self.names():
            if self._skipped(name, config):
                continue
            target_layer, local = self.adapter.hf_to_layer(name, config.num_layers)
            if target_layer == layer:
                theirs[local] = self.get(name)
        try:
            tensors = self.adapter.from_hf_layer(layer, theirs, config)
        except KeyError as error:
            raise CheckpointError(f"{self.folder}: layer {layer}: {error.args[0]}") from None
        for local, tensor in tensors.items():
            expected = shapes.get(local)
            if expected is None:
                raise CheckpointError(f"{self.folder}: {local} is not a tensor of this model")
            if tuple(tensor.shape) != expected:
                raise CheckpointError(f"{self.folder}: {local} has shape {tuple(tensor.shape)}, "
                                      f"the config says {expected}")
            if local in self.adapter.VOCAB_TENSORS and config.vocab_size > hf_vocab:
                padding = tensor.new_zeros(config.vocab_size - hf_vocab, tensor.shape[1])
                tensors[local] = torch.cat([tensor, padding])
        return tensors
