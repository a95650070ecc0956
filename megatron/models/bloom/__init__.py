"""BLOOM (ALiBi, embedding LayerNorm, LM head tied to the embeddings) on megatron-core's
tensor-parallel layers: config, layers, the whole model, its pipeline layer specs, and the
state-dict adapter, gathered into `SPEC`, its `ModelSpec`."""

from megatron.models.bloom import state_dict_adapter
from megatron.models.bloom.config import FLOPS_FORMULA, BloomModelConfig, model_flops_per_token
from megatron.models.bloom.model import BloomModel
from megatron.models.bloom.pipeline import (bloom_pipeline, check_partition, pipeline_parameter_shapes, stage_layers,
                                            universal_checkpoint_info)
from megatron.models.spec import ModelSpec

SPEC = ModelSpec(
    name="bloom",
    hf_model_types=("bloom",),
    architecture=("alibi", "LayerNorm", False),
    config_class=BloomModelConfig,
    build_model=BloomModel,
    build_pipeline=bloom_pipeline,
    stage_layers=stage_layers,
    check_partition=check_partition,
    adapter=state_dict_adapter,
    universal_checkpoint_info=universal_checkpoint_info,
    pipeline_parameter_shapes=pipeline_parameter_shapes,
    flops_per_token=model_flops_per_token,
    flops_formula=FLOPS_FORMULA,
)
