"""HF PEFT's LoRA adapter folders (`adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.<HF module>.lora_A.weight` / `lora_B.weight`, as PEFT 0.21 saves a causal LM's
adapter) against our LoRA checkpoints (`models/common/lora.py`): `PeftAdapter` reads one, a pipeline
layer at a time by our names, refusing by name the PEFT settings whose maths we do not implement;
`export_peft_adapter` writes one of our LoRA checkpoints as one. The family's adapter maps the
names (`LORA_HF_MODULES`, `lora_to_hf_layer`, `lora_from_hf_layer`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.layout import CheckpointError
from megatron.checkpoint.metadata import read_metadata
from megatron.models.common import lora
from megatron.models.common.lora import LoraConfig
from megatron.models.spec import UnsupportedConfig
from megatron.utils.atomic_files import atomic_folder

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"  # older PEFT versions
PREFIX = "base_model.model."  # PeftModelForCausalLM's path to the HF model

# PEFT LoraConfig fields that change what the adapter computes or where it sits, refused unless
# unset ("none", false, null, empty)
UNSUPPORTED_FIELDS = ("use_dora", "fan_in_fan_out", "bias", "rank_pattern", "alpha_pattern", "layers_to_transform",
                      "layers_pattern", "modules_to_save", "lora_bias", "layer_replication", "target_parameters",
                      "exclude_modules", "trainable_token_indices", "use_qalora", "alora_invocation_tokens")


def _unset(value) -> bool:
    return value is None or value is False or value == "none" or value == {} or value == []


def lora_config_from_peft(settings: dict, adapter, where: str) -> LoraConfig:
    """Our LoRA settings from an `adapter_config.json`'s; UnsupportedConfig names what we lack."""
    if settings.get("peft_type") != "LORA":
        raise UnsupportedConfig(f"{where}: peft_type {settings.get('peft_type')!r}: only LORA is implemented")
    refused = [f"{field}={settings[field]!r}" for field in UNSUPPORTED_FIELDS if not _unset(settings.get(field))]
    if refused:
        raise UnsupportedConfig(f"{where}: PEFT settings not implemented here: {', '.join(refused)}")
    modules = settings.get("target_modules")
    if not isinstance(modules, list):
        raise UnsupportedConfig(f"{where}: target_modules {modules!r}: only a list of module names is implemented")
    targets = tuple(t for t, theirs in adapter.LORA_HF_MODULES.items() if set(theirs) & set(modules))
    known = {name for theirs in adapter.LORA_HF_MODULES.values() for name in theirs}
    unknown = sorted(set(modules) - known)
    if unknown or not targets:
        raise UnsupportedConfig(
            f"{where}: target_modules {sorted(modules)}: LoRA is implemented on "
            + "; ".join(f"{' + '.join(theirs)} (our {t})" for t, theirs in adapter.LORA_HF_MODULES.items())
            + (f"; not on {unknown}" if unknown else ""))
    partial = any(not set(adapter.LORA_HF_MODULES[t]) <= set(modules) for t in targets)
    return LoraConfig(rank=int(settings["r"]), alpha=float(settings["lora_alpha"]), targets=targets,
                      dropout=float(settings.get("lora_dropout") or 0.0), rslora=bool(settings.get("use_rslora")),
                      parts=_fused_parts(adapter, targets, modules) if partial else None)


def _fused_parts(adapter, targets: tuple[str, ...], modules) -> tuple[str, ...]:
    """The HF part modules of our fused targets that `modules` adapt (each its own A)."""
    return tuple(sorted(m for t in targets if len(adapter.LORA_HF_MODULES[t]) > 1
                        for m in adapter.LORA_HF_MODULES[t] if m in modules))


def peft_settings(config: LoraConfig, adapter, base_model_name_or_path: str | None) -> dict:
    """`adapter_config.json` for our settings, the fields PEFT 0.21 writes that concern LoRA."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "inference_mode": True, "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
            "target_modules": sorted(m for t in config.targets for m in adapter.LORA_HF_MODULES[t]
                                     if config.parts is None or len(adapter.LORA_HF_MODULES[t]) == 1
                                     or m in config.parts),
            "use_rslora": config.rslora, "bias": "none", "fan_in_fan_out": False, "use_dora": False,
            "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
            "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


class PeftAdapter:
    """A PEFT LoRA folder for the model `config` describes (our model config of the base)."""

    def __init__(self, folder: str | Path, spec, config):
        self.folder = Path(folder)
        self.adapter, self.config = spec.adapter, config
        path = self.folder / ADAPTER_CONFIG
        if not path.is_file():
            raise CheckpointError(f"{self.folder}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
        settings = json.loads(path.read_text())
        self.lora = lora_config_from_peft(settings, self.adapter, str(path))
        modules = settings["target_modules"]
        if (self.folder / ADAPTER_WEIGHTS).is_file():
            tensors = load_file(str(self.folder / ADAPTER_WEIGHTS))
        elif (self.folder / ADAPTER_WEIGHTS_BIN).is_file():
            tensors = torch.load(self.folder / ADAPTER_WEIGHTS_BIN, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{self.folder}: no {ADAPTER_WEIGHTS} or {ADAPTER_WEIGHTS_BIN}")
        self._by_layer: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            bare = name.removeprefix(PREFIX)
            if bare == name or not lora.is_lora(bare):
                raise UnsupportedConfig(f"{self.folder}: {name} is not a causal LM's LoRA A or B weight")
            try:
                layer, local = self.adapter.hf_to_layer(bare, config.num_layers)
            except KeyError as error:
                raise CheckpointError(f"{self.folder}: {error.args[0]}") from None
            self._by_layer.setdefault(layer, {})[local] = tensor
        if self.lora.parts is None and not self._one_a_per_fused_layer():  # q/k/v (gate/up) A's differ
            self.lora = dataclasses.replace(self.lora, parts=_fused_parts(self.adapter, self.lora.targets, modules))

    def _one_a_per_fused_layer(self) -> bool:
        """Whether every fused layer's parts share their A, as our fused layers' one A."""
        try:
            for layer, tensors in self._by_layer.items():
                self.adapter.lora_from_hf_layer(layer, tensors, self.config, self.lora)
        except UnsupportedConfig:
            return False
        return True

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        """Pipeline layer `layer`'s adapters by our names, whole, checked against the base's shapes."""
        kind = self.adapter.layer_kind(layer, self.config.num_layers, self.config.tie_word_embeddings)
        try:
            tensors = self.adapter.lora_from_hf_layer(layer, self._by_layer.get(layer, {}), self.config, self.lora)
        except KeyError as error:
            raise CheckpointError(f"{self.folder}: layer {layer}: {error.args[0]}") from None
        if kind != "block":
            if tensors:
                raise CheckpointError(f"{self.folder}: adapters outside the blocks: {sorted(tensors)}")
            return tensors
        shapes = self.adapter.layer_shapes(self.config, kind)
        expected = {}
        for base, (out, in_) in ((n, s) for n, s in shapes.items() if len(s) == 2):
            target = base.rsplit(".", 2)[-2]
            if target in self.lora.targets:
                module = base.removesuffix(".weight")
                width = self.lora.rank * lora.stacked_parts(self.lora, len(self.adapter.LORA_HF_MODULES[target]))
                expected[f"{module}.{lora.LORA_A}.weight"] = (width, in_)
                expected[f"{module}.{lora.LORA_B}.weight"] = (out, width)
        if set(tensors) != set(expected):
            raise CheckpointError(f"{self.folder}: layer {layer}: adapters {sorted(tensors)}, the targets "
                                  f"{list(self.lora.targets)} need {sorted(expected)}")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(f"{self.folder}: layer {layer}: {name} has shape {tuple(tensor.shape)}, "
                                      f"rank {self.lora.rank} on this model needs {expected[name]}")
        return tensors


def export_peft_adapter(input_dir: str | Path, output_dir: str | Path, spec,
                        base_model_name_or_path: str | None = None) -> Path:
    """One of our LoRA checkpoints as a PEFT adapter folder (the adapters merged across TP)."""
    meta = read_metadata(input_dir)
    if meta.lora is None:
        raise CheckpointError(f"{input_dir}: holds a model, not LoRA adapters")
    checkpoint = CheckpointReader(input_dir, spec)
    config, adapter = checkpoint.config, spec.adapter
    tensors = {}
    for layer in adapter.parameter_layers(config.num_layers, config.tie_word_embeddings):
        tensors.update({PREFIX + name: tensor.contiguous()
                        for name, tensor in adapter.lora_to_hf_layer(layer, checkpoint.layer(layer), config, meta.lora).items()})
    output = Path(output_dir)
    with atomic_folder(output) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(
            json.dumps(peft_settings(meta.lora, adapter, base_model_name_or_path), indent=2) + "\n")
    return output
