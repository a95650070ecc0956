"""Conversion between HF BLOOM folders and our checkpoints at any tensor/pipeline size, one
pipeline layer at a time, so peak memory stays near the largest layer plus one output shard.

HF -> ours: read the HF folder lazily (safetensors or `.bin`, sharded or not), pad the vocabulary,
split each layer for every tensor rank and write `layer_XX-model_TT-model_states.pt` files (and
the model-states files, `latest` and `bloom_config.json`), under a temporary folder renamed when
complete. Ours -> HF: merge each layer across tensor ranks (checking replicated tensors agree),
drop the vocabulary padding, and write size-sharded safetensors, `config.json` and the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron.data.atomic_files import atomic_folder
from megatron.model.checkpoint_layout import (
    EMBEDDING_LAYER,
    MODEL_CONFIG_FILE,
    layer_file,
    layer_to_plain_name,
    lm_head_layer,
    merge_from_tp,
    model_states_file,
    parameter_layers,
    split_for_tp,
)
from megatron.model.config import BloomModelConfig, padded_vocab_size
from megatron.model.hf_mapping import TIED_HEAD, hf_to_layer, layer_to_hf

TAG = "global_step0"
EXTRA_STATE = "_extra_state"  # megatron-core layers' placeholder in saved state dicts: no tensor of BLOOM
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


class ConversionError(ValueError):
    """Input that cannot be converted, with what is wrong and where."""


class HFCheckpoint:
    """Lazy access to the tensors of a HF folder: `model.safetensors`, `pytorch_model.bin`, or
    their sharded forms with an index."""

    def __init__(self, folder: str | Path):
        from transformers import BloomConfig

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise ConversionError(f"{self.folder}: no config.json (not a HF model folder)")
        self.config = BloomConfig.from_pretrained(self.folder)
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
            raise ConversionError(f"{self.folder}: no model.safetensors, pytorch_model.bin or index")
        for path in set(self._file_of.values()):
            if not path.is_file():
                raise ConversionError(f"{path}: listed in the index but missing")
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


def _check_shape(name: str, tensor: torch.Tensor, config: BloomModelConfig, hf_vocab: int, where: str) -> None:
    h = config.hidden_size
    expected = {
        "word_embeddings.weight": (hf_vocab, h),
        "self_attention.query_key_value.weight": (3 * h, h),
        "self_attention.query_key_value.bias": (3 * h,),
        "self_attention.dense.weight": (h, h),
        "mlp.dense_h_to_4h.weight": (4 * h, h),
        "mlp.dense_h_to_4h.bias": (4 * h,),
        "mlp.dense_4h_to_h.weight": (h, 4 * h),
    }.get(name, (h,))
    if tuple(tensor.shape) != expected:
        raise ConversionError(f"{where}: {name} has shape {tuple(tensor.shape)}, the config says {expected}")


def hf_layer(checkpoint: HFCheckpoint, config: BloomModelConfig, layer: int) -> dict[str, torch.Tensor]:
    """The tensors of pipeline layer `layer`, by their names in it, vocabulary padded."""
    hf_vocab = checkpoint.config.vocab_size
    tensors = {}
    for name in checkpoint.names():
        if name == TIED_HEAD:
            continue
        target_layer, local = hf_to_layer(name, config.num_layers)
        if target_layer != layer:
            continue
        tensor = checkpoint.get(name)
        _check_shape(local, tensor, config, hf_vocab, f"{checkpoint.folder}")
        if local == "word_embeddings.weight" and config.vocab_size > hf_vocab:
            padding = tensor.new_zeros(config.vocab_size - hf_vocab, tensor.shape[1])
            tensor = torch.cat([tensor, padding])
        tensors[local] = tensor
    return tensors


def model_config_from_hf(checkpoint: HFCheckpoint, tp_size: int, divisible_by: int = 128,
                         pad_to: int | None = None) -> BloomModelConfig:
    hf = checkpoint.config
    vocab = padded_vocab_size(hf.vocab_size, tp_size, divisible_by, pad_to)
    config = BloomModelConfig.from_hf(hf, vocab_size=vocab)
    try:
        config.check_tensor_parallel(tp_size)
    except ValueError as error:
        raise ConversionError(f"{checkpoint.folder}: {error}") from None
    return config


def load_layers_into_model(model: torch.nn.Module, layer_tensors: Callable[[int], dict[str, torch.Tensor]],
                           tp_rank: int, tp_size: int) -> None:
    """Copy whole (unsplit) layers, `layer_tensors(layer)` for each pipeline layer, into our
    whole-model module (`BloomModel`), keeping this tensor rank's part of each."""
    num_layers = model.config.num_layers
    state = {}
    for layer in parameter_layers(num_layers):
        for local, tensor in layer_tensors(layer).items():
            state[layer_to_plain_name(layer, local, num_layers)] = split_for_tp(local, tensor, tp_size)[tp_rank]
    model.load_state_dict(state, strict=True)


def load_layers_into_pipeline(module, layer_tensors: Callable[[int], dict[str, torch.Tensor]],
                              tp_rank: int, tp_size: int) -> None:
    """The same for this stage of a DeepSpeed `PipelineModule` built from our layer specs: its
    own layers, and the tied embedding (on the last stage too, where it is the LM head)."""

    def load(layer_module: torch.nn.Module, layer: int) -> None:
        layer_module.load_state_dict(
            {local: split_for_tp(local, t, tp_size)[tp_rank] for local, t in layer_tensors(layer).items()})

    for offset, layer_module in enumerate(module.forward_funcs):
        if isinstance(layer_module, torch.nn.Module) and layer_module not in module.tied_modules.values():
            load(layer_module, module._local_start + offset)
    for tied in module.tied_modules.values():
        load(tied, EMBEDDING_LAYER)


def load_hf_into_model(model: torch.nn.Module, checkpoint: HFCheckpoint, tp_rank: int, tp_size: int) -> None:
    """Copy a HF checkpoint's weights into our whole-model module on this rank."""
    load_layers_into_model(model, lambda layer: hf_layer(checkpoint, model.config, layer), tp_rank, tp_size)


def convert_hf_to_megatron(hf_dir: str | Path, output_dir: str | Path, tp_size: int, pp_size: int,
                           divisible_by: int = 128, pad_to: int | None = None) -> Path:
    checkpoint = HFCheckpoint(hf_dir)
    config = model_config_from_hf(checkpoint, tp_size, divisible_by, pad_to)
    if pp_size < 1 or pp_size > config.num_layers:
        raise ConversionError(f"--target-pp {pp_size}: needs 1 <= PP <= {config.num_layers} layers")
    unknown = [n for n in checkpoint.names() if n != TIED_HEAD and not _is_bloom_name(n, config.num_layers)]
    if unknown:
        raise ConversionError(f"{hf_dir}: tensors that a {config.num_layers}-layer BLOOM does not have: {unknown[:5]}")
    output = Path(output_dir)
    with atomic_folder(output) as tmp:
        folder = tmp / TAG
        folder.mkdir()
        for layer in parameter_layers(config.num_layers):
            tensors = hf_layer(checkpoint, config, layer)
            shards = [{} for _ in range(tp_size)]
            for local, tensor in tensors.items():
                for rank, part in enumerate(split_for_tp(local, tensor, tp_size)):
                    shards[rank][local] = part
            for rank, shard in enumerate(shards):
                torch.save(shard, layer_file(folder, layer, rank))
                if layer == EMBEDDING_LAYER:  # the tied LM head is saved as its own layer too
                    torch.save(shard, layer_file(folder, lm_head_layer(config.num_layers), rank))
        write_checkpoint_metadata(tmp, TAG, config, checkpoint.config.to_dict(), tp_size, pp_size)
    return output


def _is_bloom_name(name: str, num_layers: int) -> bool:
    try:
        hf_to_layer(name, num_layers)
        return True
    except (KeyError, ValueError):
        return False


def checkpoint_meta(config: BloomModelConfig, hf_config: dict, tp_size: int, pp_size: int) -> dict:
    """What `bloom_config.json` holds: our model config, the HF config to export to, the layout."""
    return {"model": dataclasses.asdict(config), "hf_config": hf_config,
            "tensor_model_parallel_size": tp_size, "pipeline_model_parallel_size": pp_size}


def write_checkpoint_metadata(folder: Path, tag: str, config: BloomModelConfig, hf_config: dict,
                              tp_size: int, pp_size: int) -> None:
    """The model-states file of each model-parallel rank, `bloom_config.json` and `latest`."""
    meta = checkpoint_meta(config, hf_config, tp_size, pp_size)
    for mp_rank in range(tp_size * pp_size):
        torch.save({"module": None, "iteration": 0, "global_steps": 0, "global_samples": 0,
                    "skipped_steps": 0, "mp_world_size": tp_size * pp_size, "dp_world_size": 1,
                    "bloom": meta}, model_states_file(folder / tag, mp_rank))
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    (folder / "latest").write_text(tag)


class MegatronCheckpoint:
    """Reads the layer files of one of our checkpoints: the tag `latest` names, or `tag`."""

    def __init__(self, folder: str | Path, tag: str | None = None):
        self.folder = Path(folder)
        for name in ("latest", MODEL_CONFIG_FILE):
            if not (self.folder / name).is_file():
                raise ConversionError(f"{self.folder}: no {name} (not a checkpoint of this project)")
        self.tag_dir = self.folder / (tag or (self.folder / "latest").read_text().strip())
        meta = json.loads((self.folder / MODEL_CONFIG_FILE).read_text())
        self.config = BloomModelConfig(**meta["model"])
        self.hf_config = meta["hf_config"]
        ranks = sorted(int(m.group(1)) for p in self.tag_dir.glob(f"layer_{EMBEDDING_LAYER:02d}-model_*")
                       if (m := re.search(r"model_(\d+)-model_states", p.name)))
        if not ranks:
            raise ConversionError(f"{self.tag_dir}: no layer files")
        self.tp_size = len(ranks)

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        """Layer `layer` merged across tensor ranks."""
        shards = []
        for rank in range(self.tp_size):
            path = layer_file(self.tag_dir, layer, rank)
            if not path.is_file():
                raise ConversionError(f"{path}: missing")
            shards.append(torch.load(path, map_location="cpu", weights_only=True))
        return {name: merge_from_tp(name, [s[name] for s in shards], f"layer {layer} of {self.tag_dir}")
                for name in shards[0] if not name.endswith(EXTRA_STATE)}

    def load_into(self, model: torch.nn.Module, tp_rank: int, tp_size: int) -> None:
        """Copy the weights into our whole-model module at any tensor-parallel size."""
        load_layers_into_model(model, self.layer, tp_rank, tp_size)


def _hf_tensors(checkpoint: MegatronCheckpoint, hf_vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    num_layers = checkpoint.config.num_layers
    for layer in parameter_layers(num_layers):
        for local, tensor in checkpoint.layer(layer).items():
            if local == "word_embeddings.weight":
                tensor = tensor[:hf_vocab].contiguous()
            yield layer_to_hf(layer, local, num_layers), tensor


def convert_megatron_to_hf(input_dir: str | Path, output_dir: str | Path, tokenizer_dir: str | Path | None = None,
                           max_shard_bytes: int = 2 * 2**30) -> Path:
    checkpoint = MegatronCheckpoint(input_dir)
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
        hf_config = checkpoint.config.to_hf(hf_vocab, **{
            k: v for k, v in checkpoint.hf_config.items()
            if k in ("bos_token_id", "eos_token_id", "pad_token_id", "apply_residual_connection_post_layernorm")
        })
        hf_config.dtype = dtype
        hf_config.architectures = ["BloomForCausalLM"]
        hf_config.save_pretrained(tmp)
        if tokenizer_dir is not None:
            copied = [f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).is_file()]
            if not copied:
                raise ConversionError(f"--tokenizer-dir {tokenizer_dir}: no tokenizer files there")
            for name in copied:
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    return output


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
