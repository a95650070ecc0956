"""`bloom_config.json` (the name it had when BLOOM was the only family; kept so older checkpoints
and tools read it), the metadata of every checkpoint of ours: the model family, its model config
(shape and options), the HF config it exports to, and the TP/PP layout it was written at. One
writer (`write_metadata`) and one reader (`read_metadata`, which finds the family's config class
in the registry; checkpoints from before families were recorded are BLOOM's); the same dict is
kept in each model-states file under `bloom`. A LoRA run's checkpoints hold adapters only: their
metadata adds `lora`, the adapters' settings and the base checkpoint the run loaded."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron.checkpoint.layout import CheckpointError, model_states_file
from megatron.models import get_model_spec
from megatron.models.common.lora import LoraConfig
from megatron.utils.atomic_files import write_atomically

MODEL_CONFIG_FILE = "bloom_config.json"


@dataclass(frozen=True)
class CheckpointMetadata:
    model: object  # the family's frozen model config (`ModelSpec.config_class`)
    hf_config: dict
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    family: str  # the registry's name of the model family (`megatron.models.FAMILIES`)
    lora: LoraConfig | None = None  # adapters only: their settings
    lora_base: dict | None = None  # and the base they were trained on: {"folder": ..., "tag": ...} (absolute)

    def to_json(self) -> dict:
        meta = {"family": self.family, "model": dataclasses.asdict(self.model), "hf_config": self.hf_config,
                "tensor_model_parallel_size": self.tensor_model_parallel_size,
                "pipeline_model_parallel_size": self.pipeline_model_parallel_size}
        if self.lora is not None:
            meta["lora"] = {**dataclasses.asdict(self.lora), "base": self.lora_base}
        return meta


def write_metadata(folder: str | Path, meta: CheckpointMetadata) -> None:
    write_atomically(Path(folder) / MODEL_CONFIG_FILE, json.dumps(meta.to_json(), indent=1))


def read_metadata(folder: str | Path) -> CheckpointMetadata:
    path = Path(folder) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MODEL_CONFIG_FILE} (not a checkpoint of this project; convert "
                              "a HF model with tools/convert_checkpoint/hf_to_megatron.py)")
    meta = json.loads(path.read_text())
    family = meta.get("family", "bloom")
    try:
        config = get_model_spec(family).config_class(**meta["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a {family} model config: {error}") from None
    lora, base = None, None
    if "lora" in meta:
        settings = dict(meta["lora"])
        base = settings.pop("base", None)
        parts = settings.get("parts")
        lora = LoraConfig(**{**settings, "targets": tuple(settings["targets"]),
                             "parts": None if parts is None else tuple(parts)})
    return CheckpointMetadata(config, meta["hf_config"], meta["tensor_model_parallel_size"],
                              meta["pipeline_model_parallel_size"], family, lora, base)


def write_model_states(tag_dir: Path, meta: CheckpointMetadata) -> None:
    """The model-states file of each model-parallel rank of a converted checkpoint (no training
    state: iteration 0), as DeepSpeed's loader expects them."""
    tp, pp = meta.tensor_model_parallel_size, meta.pipeline_model_parallel_size
    for mp_rank in range(tp * pp):
        torch.save({"module": None, "iteration": 0, "global_steps": 0, "global_samples": 0,
                    "skipped_steps": 0, "mp_world_size": tp * pp, "dp_world_size": 1,
                    "bloom": meta.to_json()}, model_states_file(tag_dir, mp_rank))
