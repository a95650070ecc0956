"""The Llama family (Llama 2/3.x, Qwen2/2.5, Mistral: RMSNorm, RoPE, grouped-query attention,
SwiGLU, tied or untied embeddings) on megatron-core's tensor-parallel layers: config, layers, the
whole model, its pipeline layer specs, and the state-dict adapter, gathered into `SPEC`, its
`ModelSpec`."""

from megatron.models.llama import state_dict_adapter
from megatron.models.llama.config import FLOPS_FORMULA, HF_MODEL_TYPES, LlamaModelConfig, model_flops_per_token
from megatron.models.llama.model import LlamaModel
from megatron.models.llama.pipeline import (check_partition, llama_pipeline, pipeline_parameter_shapes, stage_layers,
                                            universal_checkpoint_info)
from megatron.models.spec import ModelSpec

SPEC = ModelSpec(
    name="llama",
    hf_model_types=HF_MODEL_TYPES,
    architecture=("rope", "RMSNorm", True),
    config_class=LlamaModelConfig,
    build_model=LlamaModel,
    build_pipeline=llama_pipeline,
    stage_layers=stage_layers,
    check_partition=check_partition,
    adapter=state_dict_adapter,
    universal_checkpoint_info=universal_checkpoint_info,
    pipeline_parameter_shapes=pipeline_parameter_shapes,
    flops_per_token=model_flops_per_token,
    flops_formula=FLOPS_FORMULA,
)
