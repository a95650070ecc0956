"""How DeepSpeed's `PipelineModule` cuts BLOOM's layer specs into stages (`--pp-partition-method`),
worked out without building a layer, and the parameters each layer holds on one GPU: for the
dry run's layout and for refusing a layout that leaves a stage without parameters."""

from __future__ import annotations

import re

import torch
from deepspeed.runtime import utils as ds_utils
from deepspeed.runtime.pipe.module import LayerSpec
from megatron.core.model_parallel_config import ModelParallelConfig

from megatron.model.config import BloomModelConfig
from megatron.model.pipeline import EmbeddingPipe, FinalNormPipe, TransformerBlockPipe, bloom_layer_specs


def embedding_parameters(config: BloomModelConfig, tp: int) -> int:
    """The vocabulary slice of the word embeddings and their LayerNorm."""
    return config.vocab_size // tp * config.hidden_size + 2 * config.hidden_size


def block_parameters(config: BloomModelConfig, tp: int) -> int:
    """QKV, attention dense and the 4h MLP split over TP (row-parallel biases replicated), two
    LayerNorms."""
    h = config.hidden_size
    return 12 * h * h // tp + 7 * h // tp + 6 * h


def spec_name(spec) -> str | None:
    """The name DeepSpeed matches `type:REGEX` against: the layer's class or function name."""
    if isinstance(spec, LayerSpec):
        return spec.typename.__name__
    return getattr(spec, "__name__", None)


def spec_parameters(spec, config: BloomModelConfig, tp: int) -> int:
    return {EmbeddingPipe.__name__: embedding_parameters(config, tp),
            TransformerBlockPipe.__name__: block_parameters(config, tp),
            FinalNormPipe.__name__: 2 * config.hidden_size}.get(spec_name(spec), 0)


def layer_specs(config: BloomModelConfig, tp: int, pp: int) -> list:
    parallel = ModelParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                   pipeline_dtype=torch.float32, use_cpu_initialization=True)
    return bloom_layer_specs(config, parallel)


def stage_bounds(specs: list, method: str, stages: int, config: BloomModelConfig, tp: int) -> list[int]:
    """Stage i holds `specs[bounds[i]:bounds[i + 1]]`, as `PipelineModule` computes it."""
    method = method.lower()
    if method == "uniform":
        return ds_utils.partition_uniform(num_items=len(specs), num_parts=stages)
    if method == "parameters":
        return ds_utils.partition_balanced([spec_parameters(s, config, tp) for s in specs], stages)
    if method.startswith("type:"):
        pattern = re.compile(method.split(":", 1)[1], re.IGNORECASE)
        weights = [int(bool((name := spec_name(s)) and pattern.search(name))) for s in specs]
        if not any(weights):
            raise ValueError(f"--pp-partition-method {method}: matches none of the layers")
        return ds_utils.partition_balanced(weights, stages)
    raise ValueError(f"--pp-partition-method {method}: use uniform, parameters or type:REGEX")


def check_partition(config: BloomModelConfig, tp: int, pp: int, method: str) -> None:
    """Every stage must hold parameters (with `type:transformer|embedding`, PP may be the layer
    count + 2: BLOOM-176B ran 70 layers on 72 stages)."""
    specs = layer_specs(config, tp, pp)
    bounds = stage_bounds(specs, method, pp, config, tp)
    for stage in range(pp):
        if not any(spec_parameters(s, config, tp) for s in specs[bounds[stage]:bounds[stage + 1]]):
            raise ValueError(f"--pipeline-model-parallel-size {pp} leaves stage {stage} without parameters "
                             f"({config.num_layers} layers, --pp-partition-method {method})")
