"""Conversion between HF model folders and our checkpoints at any tensor/pipeline size, one
pipeline layer at a time, so peak memory stays near the largest layer plus one output shard.

HF -> ours: read the HF folder lazily (`hf_reader`), pad the vocabulary, split each layer for every
tensor rank and write its layer files (and the model-states files, `latest` and the metadata),
under a temporary folder renamed when complete. Ours -> HF: merge each layer across tensor ranks
(`CheckpointReader`, checking replicated tensors agree), drop the vocabulary padding, and write
size-sharded safetensors, `config.json` and the tokenizer. LoRA: a PEFT adapter comes in as one of
our LoRA checkpoints (`peft_format`); a LoRA checkpoint goes out merged into its base.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from megatron.checkpoint.hf_reader import HFCheckpoint
from megatron.checkpoint.layer_files import CheckpointReader, save_layer
from megatron.checkpoint.layout import CheckpointError, tag_for, write_latest
from megatron.checkpoint.loading import LayerSource
from megatron.checkpoint.metadata import CheckpointMetadata, read_metadata, write_metadata, write_model_states
from megatron.checkpoint.peft_format import PeftAdapter
from megatron.models.common import lora
from megatron.utils.atomic_files import atomic_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


class _LayerProgress:
    """A per-layer progress bar on stderr with the bytes done so far: a 176B conversion takes long."""

    def __init__(self, layers: Iterable[int], description: str):
        self.bar = tqdm(list(layers), desc=description, unit="layer", file=sys.stderr, dynamic_ncols=True)
        self.bytes = 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.bar)

    def add(self, tensors: Iterable[torch.Tensor]) -> None:
        self.bytes += sum(t.nbytes for t in tensors)
        self.bar.set_postfix_str(f"{self.bytes / 2**30:.2f} GiB", refresh=False)


def convert_hf_to_megatron(hf_dir: str | Path, output_dir: str | Path, spec, tp_size: int, pp_size: int,
                           divisible_by: int = 128, pad_to: int | None = None,
                           lora_dir: str | Path | None = None) -> Path:
    """The HF model in `hf_dir`, or with `lora_dir` the PEFT LoRA adapter there for that model
    (one of our LoRA checkpoints, no base recorded), as our checkpoint at TP x PP."""
    checkpoint = HFCheckpoint(hf_dir, spec)
    config = checkpoint.model_config(tp_size, divisible_by, pad_to)
    if pp_size < 1 or pp_size > config.num_layers:
        raise CheckpointError(f"--target-pp {pp_size}: needs 1 <= PP <= {config.num_layers} layers")
    if lora_dir is not None:
        adapters = PeftAdapter(lora_dir, spec, config)
        meta = CheckpointMetadata(config, checkpoint.config.to_dict(), tp_size, pp_size, spec.name, adapters.lora)
        return _write_checkpoint(output_dir, meta, spec.adapter, adapters.layer, "PEFT -> ours")
    unknown = checkpoint.unknown_names(config)
    if unknown:
        raise CheckpointError(f"{hf_dir}: tensors that a {config.num_layers}-layer model does not have: {unknown[:5]}")
    meta = CheckpointMetadata(config, checkpoint.config.to_dict(), tp_size, pp_size, spec.name)
    return _write_checkpoint(output_dir, meta, spec.adapter, lambda layer: checkpoint.layer(layer, config),
                             "HF -> ours")


def _write_checkpoint(output_dir: str | Path, meta: CheckpointMetadata, adapter, layers: LayerSource,
                      description: str) -> Path:
    """Every parameter layer `layers(index)` gives, split for each tensor rank (LoRA tensors by
    LoRA's rule), with the model-states files, `latest` and the metadata."""
    config, tp_size = meta.model, meta.tensor_model_parallel_size
    output = Path(output_dir)
    tag = tag_for(0)
    with atomic_folder(output) as tmp:
        folder = tmp / tag
        folder.mkdir()
        progress = _LayerProgress(adapter.parameter_layers(config.num_layers, config.tie_word_embeddings), description)
        for layer in progress:
            shards = [{} for _ in range(tp_size)]
            tensors = layers(layer)
            for local, tensor in tensors.items():
                for rank, part in enumerate(lora.split_for_tp(adapter, local, tensor, tp_size)):
                    shards[rank][local] = part
            progress.add(tensors.values())
            for rank, shard in enumerate(shards):
                save_layer(folder, layer, rank, shard)
                if layer == adapter.EMBEDDING_LAYER and config.tie_word_embeddings:  # the tied LM head: saved as its own layer too
                    save_layer(folder, adapter.lm_head_layer(config.num_layers), rank, shard)
        write_model_states(folder, meta)
        write_metadata(tmp, meta)
        write_latest(tmp, tag)
    return output


def _hf_tensors(checkpoint: CheckpointReader, layers: LayerSource,
                hf_vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    adapter, config = checkpoint.adapter, checkpoint.config
    progress = _LayerProgress(adapter.parameter_layers(config.num_layers, config.tie_word_embeddings), "ours -> HF")
    for layer in progress:
        tensors = layers(layer)
        progress.add(tensors.values())
        for local in adapter.VOCAB_TENSORS:  # the vocabulary padding dropped
            if local in tensors:
                tensors[local] = tensors[local][:hf_vocab].contiguous()
        yield from adapter.to_hf_layer(layer, tensors, config).items()


def base_of_adapters(folder: str | Path, spec) -> CheckpointReader:
    """The base checkpoint a LoRA checkpoint records (`lora_base`), checked to be there and of
    the adapters' model."""
    meta = read_metadata(folder)
    base = meta.lora_base
    if base is None:
        raise CheckpointError(f"{folder}: its adapters record no base checkpoint (imported adapters): train or "
                              "load them on a base with finetune_xp3.py --load BASE --lora-load, or merge with PEFT")
    if not (Path(base["folder"]) / base["tag"]).is_dir():
        raise CheckpointError(f"{folder}: its base checkpoint {base['folder']} (tag {base['tag']}) is gone")
    reader = CheckpointReader(base["folder"], spec, base["tag"])
    if spec.pipeline_parameter_shapes(reader.config) != spec.pipeline_parameter_shapes(meta.model):
        raise CheckpointError(f"{folder}: its base {base['folder']} is not the model its adapters were trained on")
    return reader


def merged_layer(base_checkpoint: CheckpointReader, adapter_checkpoint: CheckpointReader, scaling: float,
                 layer: int) -> dict[str, torch.Tensor]:
    """A layer's base tensors with each adapter's `B @ A * scaling` added, in the base weight's dtype."""
    base, adapters = base_checkpoint.layer(layer), adapter_checkpoint.layer(layer)
    merged = dict(base)
    for name, lora_a in adapters.items():
        weight, which = lora.base_weight(name)
        if which == "A":
            lora_b = adapters[name.removesuffix(f"{lora.LORA_A}.weight") + f"{lora.LORA_B}.weight"]
            merged[weight] = (base[weight].float() + lora.delta_weight(lora_a, lora_b, scaling)).to(base[weight].dtype)
    return merged


def convert_megatron_to_hf(input_dir: str | Path, output_dir: str | Path, spec, tokenizer_dir: str | Path | None = None,
                           max_shard_bytes: int = 2 * 2**30, merge_lora: bool = False) -> Path:
    """Our model checkpoint as a HF model folder; with `merge_lora`, a LoRA checkpoint's adapters
    merged into the base checkpoint it records."""
    checkpoint = CheckpointReader(input_dir, spec)
    layers: LayerSource = checkpoint.layer
    if merge_lora:
        adapters, scaling = checkpoint, read_metadata(input_dir).lora.scaling
        checkpoint = base_of_adapters(input_dir, spec)
        layers = functools.partial(merged_layer, checkpoint, adapters, scaling)
    hf_vocab = checkpoint.hf_config["vocab_size"]
    output = Path(output_dir)
    with atomic_folder(output) as tmp:
        shards, shard, shard_bytes, dtype = [], {}, 0, None
        for name, tensor in _hf_tensors(checkpoint, layers, hf_vocab):
            if shard and shard_bytes + tensor.nbytes > max_shard_bytes:
                shards.append(_save_shard(tmp, len(shards), shard))
                shard, shard_bytes = {}, 0
            shard[name] = tensor
            shard_bytes += tensor.nbytes
            dtype = dtype or tensor.dtype
        shards.append(_save_shard(tmp, len(shards), shard))
        _name_shards(tmp, shards)
        config = checkpoint.config
        hf_config = config.to_hf(hf_vocab, **{k: v for k, v in checkpoint.hf_config.items() if k in config.HF_KEPT_KEYS})
        hf_config.dtype = dtype
        hf_config.architectures = [config.hf_architecture]
        hf_config.save_pretrained(tmp)
        if tokenizer_dir is not None:
            copied = copy_tokenizer_files(tokenizer_dir, tmp)
            if not copied:
                raise CheckpointError(f"--tokenizer-dir {tokenizer_dir}: no tokenizer files there")
    return output


def copy_tokenizer_files(source: str | Path, destination: Path) -> list[str]:
    """Copy the HF tokenizer files found in `source`; their names."""
    copied = [f for f in TOKENIZER_FILES if (Path(source) / f).is_file()]
    for name in copied:
        shutil.copy2(Path(source) / name, destination / name)
    return copied


def _save_shard(folder: Path, index: int, tensors: dict[str, torch.Tensor]) -> tuple[Path, list[str], int]:
    path = folder / f"shard-{index}.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, list(tensors), sum(t.nbytes for t in tensors.values())


def _name_shards(folder: Path, shards: list[tuple[Path, list[str], int]]) -> None:
    """HF's file names: `model.safetensors`, or numbered shards with an index."""
    if len(shards) == 1:
        shards[0][0].rename(folder / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, (path, names, size) in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        path.rename(folder / final)
        weight_map.update({name: final for name in names})
        total += size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
