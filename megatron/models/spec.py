"""What the rest of the project needs to know of a model family, in one small object (as
torchtitan's `ModelSpec`): the training engine, the dry run, the metrics and the checkpoint code
reach a family only through it, so a second family is a new folder plus a registry entry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType


def config_fields(config) -> set[str]:
    """The field names of a family's model config (an instance or the class)."""
    return {field.name for field in dataclasses.fields(config)}


def with_options(config, **options):
    """`config` with those of `options` its family's config has: the options of another family
    (BLOOM's bias + GeLU fusion, say) do not apply to it."""
    names = config_fields(config)
    return dataclasses.replace(config, **{name: value for name, value in options.items() if name in names})


class UnsupportedConfig(ValueError):
    """A model config field whose maths the family does not implement: refused naming the field,
    never ignored."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # the HF `config.json` model types the converters read as this family
    hf_model_types: tuple[str, ...]
    # (position embedding, normalization, SwiGLU) as Megatron's flags name them: how a run from
    # random initialisation picks the family
    architecture: tuple[str, str, bool]
    # the frozen model config: shape and options, `from_hf`, `to_hf`, `read_hf_config`
    config_class: type
    # (config, parallel, checkpoint_activations, init_seed) -> the whole model, with `.loss(batch, norm)`
    # and `.target_log_probs(batch)` (each label's log-probability under the loss mask: zero-shot scoring)
    build_model: Callable
    # (config, parallel, data_parallel_size, partition_method, checkpoint_activations,
    #  norm_target_loss, init_seed) -> DeepSpeed `PipelineModule`, whose `loss_fn` gives those
    #  log-probabilities instead of the loss while its `scoring` is set
    build_pipeline: Callable
    # (config, tp, pp, partition_method) -> the kinds of layer each pipeline stage holds
    stage_layers: Callable
    # (config, tp, pp, partition_method) -> None, or ValueError naming the flag
    check_partition: Callable
    # names, pipeline layer numbering, TP split rules and shapes of the family's tensors
    adapter: ModuleType
    # config -> DeepSpeed's `universal_checkpoint_info` for the pipeline's
    # parameter names (how ds_to_universal merges and re-splits them over TP)
    universal_checkpoint_info: Callable
    # config -> {pipeline parameter name: whole shape}, what a universal checkpoint must hold
    pipeline_parameter_shapes: Callable
    # (config, seq_length) -> model FLOPs per token, and the formula in words
    flops_per_token: Callable
    flops_formula: str
    # the block's linear layers LoRA may adapt, by their names in the block (`--lora-target`;
    # the default: all of them)
    lora_targets: tuple[str, ...] = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
