"""Lazy access to the tensors of a HF model folder: `model.safetensors`, `pytorch_model.bin`, or
their sharded forms with an index; `layer(i)` gives pipeline layer i's tensors by their names in
it, checked against the family's shape table, the vocabulary padded to the model's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from megatron.checkpoint.layout import CheckpointError
from megatron.models.common.vocab import padded_vocab_size


class HFCheckpoint:
    def __init__(self, folder: str | Path, spec):
        self.folder = Path(folder)
        self.spec, self.adapter = spec, spec.adapter
        if not (self.folder / "config.json").is_file():
            raise CheckpointError(f"{self.folder}: no config.json (not a HF model folder)")
        self.config = spec.config_class.read_hf_config(self.folder)
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
        config = self.spec.config_class.from_hf(self.config, vocab_size=vocab)
        try:
            config.check_tensor_parallel(tp_size)
        except ValueError as error:
            raise CheckpointError(f"{self.folder}: {error}") from None
        return config

    def unknown_names(self, num_layers: int) -> list[str]:
        """Tensors the family's model of `num_layers` layers does not have."""
        unknown = []
        for name in self.names():
            if name == self.adapter.TIED_HEAD:
                continue
            try:
                self.adapter.hf_to_layer(name, num_layers)
            except (KeyError, ValueError):
                unknown.append(name)
        return unknown

    def layer(self, layer: int, config) -> dict[str, torch.Tensor]:
        """The tensors of pipeline layer `layer` of the model `config` describes, by their names
        in it, the vocabulary padded to `config`'s."""
        hf_vocab = self.config.vocab_size
        kind = self.adapter.layer_kind(layer, config.num_layers)
        shapes = self.adapter.layer_shapes(config, kind, vocab_size=hf_vocab)
        tensors = {}
        for name in self.names():
            if name == self.adapter.TIED_HEAD:
                continue
            target_layer, local = self.adapter.hf_to_layer(name, config.num_layers)
            if target_layer != layer:
                continue
            tensor = self.get(name)
            expected = shapes.get(local)
            if expected is None:
                raise CheckpointError(f"{self.folder}: {name} is not a tensor of this model")
            if tuple(tensor.shape) != expected:
                raise CheckpointError(f"{self.folder}: {local} has shape {tuple(tensor.shape)}, "
                                      f"the config says {expected}")
            if local == "word_embeddings.weight" and config.vocab_size > hf_vocab:
                padding = tensor.new_zeros(config.vocab_size - hf_vocab, tensor.shape[1])
                tensor = torch.cat([tensor, padding])
            tensors[local] = tensor
        return tensors
