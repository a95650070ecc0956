"""Conversion between HF model folders and our checkpoints at any tensor/pipeline size, one
pipeline layer at a time, so peak memory stays near the largest layer plus one output shard.

HF -> ours: read the HF folder lazily (`hf_reader`), pad the vocabulary, split each layer for every
tensor rank and write its layer files (and the model-states files, `latest` and the metadata),
under a temporary folder renamed when complete. Ours -> HF: merge each layer across tensor ranks
(`CheckpointReader`, checking replicated tensors agree), drop the vocabulary padding, and write
size-sharded safetensors, `config.json` and the tokenizer.
"""

from __future__ import annotations

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
from megatron.checkpoint.metadata import CheckpointMetadata, write_metadata, write_model_states
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
                           divisible_by: int = 128, pad_to: int | None = None) -> Path:
    checkpoint = HFCheckpoint(hf_dir, spec)
    adapter = spec.adapter
    config = checkpoint.model_config(tp_size, divisible_by, pad_to)
    if pp_size < 1 or pp_size > config.num_layers:
        raise CheckpointError(f"--target-pp {pp_size}: needs 1 <= PP <= {config.num_layers} layers")
    unknown = checkpoint.unknown_names(config)
    if unknown:
        raise CheckpointError(f"{hf_dir}: tensors that a {config.num_layers}-layer model does not have: {unknown[:5]}")
    output = Path(output_dir)
    tag = tag_for(0)
    with atomic_folder(output) as tmp:
        folder = tmp / tag
        folder.mkdir()
        progress = _LayerProgress(adapter.parameter_layers(config.num_layers, config.tie_word_embeddings), "HF -> ours")
        for layer in progress:
            shards = [{} for _ in range(tp_size)]
            tensors = checkpoint.layer(layer, config)
            for local, tensor in tensors.items():
                for rank, part in enumerate(adapter.split_for_tp(local, tensor, tp_size)):
                    shards[rank][local] = part
            progress.add(tensors.values())
            for rank, shard in enumerate(shards):
                save_layer(folder, layer, rank, shard)
                if layer == adapter.EMBEDDING_LAYER and config.tie_word_embeddings:  # the tied LM head: saved as its own layer too
                    save_layer(folder, adapter.lm_head_layer(config.num_layers), rank, shard)
        meta = CheckpointMetadata(config, checkpoint.config.to_dict(), tp_size, pp_size, spec.name)
        write_model_states(folder, meta)
        write_metadata(tmp, meta)
        write_latest(tmp, tag)
    return output


def _hf_tensors(checkpoint: CheckpointReader, hf_vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    adapter, config = checkpoint.adapter, checkpoint.config
    progress = _LayerProgress(adapter.parameter_layers(config.num_layers, config.tie_word_embeddings), "ours -> HF")
    for layer in progress:
        tensors = checkpoint.layer(layer)
        progress.add(tensors.values())
        for local in adapter.VOCAB_TENSORS:  # the vocabulary padding dropped
            if local in tensors:
                tensors[local] = tensors[local][:hf_vocab].contiguous()
        yield from adapter.to_hf_layer(layer, tensors, config).items()


def convert_megatron_to_hf(input_dir: str | Path, output_dir: str | Path, spec, tokenizer_dir: str | Path | None = None,
                           max_shard_bytes: int = 2 * 2**30) -> Path:
    checkpoint = CheckpointReader(input_dir, spec)
    hf_vocab = checkpoint.hf_config["vocab_size"]
    output = Path(output_dir)
    with atomic_folder(output) as tmp:
        shards, shard, shard_bytes, dtype = [], {}, 0, None
        for name, tensor in _hf_tensors(checkpoint, hf_vocab):
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
