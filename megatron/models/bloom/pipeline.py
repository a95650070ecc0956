"""BLOOM as layer specs for DeepSpeed's `PipelineModule`, and how DeepSpeed cuts them into stages.

The embedding and the LM head are tied layers (one weight, kept in sync across the first and
last stage), transformer blocks are the partition units. Indices match Megatron-DeepSpeed's
GPTModelPipe (`state_dict_adapter`), so DeepSpeed's own `load_state_dir` reads its checkpoints and
ours alike. `layer_kind` classifies a spec (embedding, block, final norm, LM head, or a
parameter-free function) for everything that asks: the partition by parameters, the check that
every stage holds parameters, and the dry run's stage table.

Between stages flows `(hidden, segment_ids, is_inputs)`; the first stage takes
`(tokens, segment_ids, is_inputs)` and the last returns the final hidden states with the tied
head weight, which the loss turns into logits (or, chunked, into the loss directly).
"""

from __future__ import annotations

import re

import torch
from deepspeed.checkpoint import constants as ds_checkpoint
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime import utils as ds_utils
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn

from megatron.models.bloom.config import BloomModelConfig
from megatron.models.bloom.layers import BloomBlock, WordEmbeddings
from megatron.models.bloom.state_dict_adapter import (EMBEDDING_LAYER, FIRST_BLOCK_LAYER, final_norm_layer,
                                                     layer_parameters, layer_shapes, tp_split_dim)
from megatron.models.common.loss import head_and_loss, target_log_probs
from megatron.models.common.recompute import checkpoint
from megatron.models.common.tp_random import layer_seed, seeded

TIED_EMBEDDING = "embed"


class EmbeddingPipe(nn.Module):
    """Layer 1 (and, tied, the LM head): `word_embeddings.weight`, `word_embeddings.norm.*`."""

    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        self.word_embeddings = WordEmbeddings(config, parallel)

    def forward(self, inputs):
        tokens, segment_ids, is_inputs = inputs
        return self.word_embeddings(tokens), segment_ids, is_inputs


def lm_head(embedding: EmbeddingPipe, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer hands the final hidden states and the tied head weight to the loss, which
    applies the head (`loss.head_and_loss`: full logits, or chunked over the targets)."""
    return hidden, embedding.word_embeddings.weight


class TransformerBlockPipe(BloomBlock):
    """Layers 3 .. L+2; named so that `--pp-partition-method type:transformer` finds them."""

    def forward(self, inputs):
        hidden, segment_ids, is_inputs = inputs
        return super().forward(hidden, segment_ids, is_inputs), segment_ids, is_inputs


class FinalNormPipe(nn.LayerNorm):
    """Layer L+4: the final LayerNorm (`weight`, `bias`); passes on the hidden states only."""

    def forward(self, inputs):
        return super().forward(inputs[0])


def _pass_through(inputs):
    """The parameter-free layers 0, 2 and L+3 that keep Megatron-DeepSpeed's numbering."""
    return inputs


class _SeededBuild:
    """Builds the layer under its own seed: random init independent of the pipeline layout."""

    init_seed: int | None = None

    def build(self, log=False):
        with seeded(self.init_seed):
            return super().build(log)


class SeededLayerSpec(_SeededBuild, LayerSpec):
    def __init__(self, seed: int | None, typename, *args, **kwargs):
        super().__init__(typename, *args, **kwargs)
        self.init_seed = seed


class SeededTiedLayerSpec(_SeededBuild, TiedLayerSpec):
    def __init__(self, seed: int | None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_seed = seed


def bloom_layer_specs(config: BloomModelConfig, parallel: ModelParallelConfig, init_seed: int | None = None) -> list:
    """With `init_seed`, layer i is initialised from `layer_seed(init_seed, i)` (as `BloomModel` is)."""
    blocks = range(FIRST_BLOCK_LAYER, FIRST_BLOCK_LAYER + config.num_layers)
    return [
        _pass_through,
        SeededTiedLayerSpec(layer_seed(init_seed, EMBEDDING_LAYER), TIED_EMBEDDING, EmbeddingPipe, config, parallel,
                            tied_weight_attr="word_embeddings.weight"),
        _pass_through,
        *(SeededLayerSpec(layer_seed(init_seed, layer), TransformerBlockPipe, config, parallel) for layer in blocks),
        _pass_through,
        LayerSpec(FinalNormPipe, config.hidden_size, eps=config.layer_norm_eps, dtype=parallel.params_dtype),
        TiedLayerSpec(TIED_EMBEDDING, EmbeddingPipe, config, parallel,
                      forward_fn=lm_head,
                      tied_weight_attr="word_embeddings.weight"),
    ]


class PipelineLoss:
    """The last stage's loss function: the packed loss of a micro-batch, or, while `scoring` is
    set (zero-shot evaluation), each label's log-probability under the loss mask, `[micro, seq]`."""

    def __init__(self, config: BloomModelConfig, norm_target_loss: bool):
        self.config = config
        self.norm_target_loss = norm_target_loss
        self.scoring = False

    def __call__(self, outputs, labels) -> torch.Tensor:
        targets, loss_mask, segment_ids = labels
        hidden, head_weight = outputs
        if self.scoring:
            return target_log_probs(hidden, head_weight, targets, loss_mask)
        return head_and_loss(hidden, head_weight, targets, loss_mask, segment_ids, self.norm_target_loss,
                             self.config.lm_head_loss)


def bloom_pipeline(config: BloomModelConfig, parallel: ModelParallelConfig, data_parallel_size: int,
                   partition_method: str, checkpoint_activations: bool, norm_target_loss: bool,
                   init_seed: int | None = None) -> PipelineModule:
    """The whole BLOOM as a `PipelineModule` over megatron-core's groups. Micro-batches are
    `((tokens, segment_ids, is_inputs), (labels, loss_mask, segment_ids))`."""
    topology = PipeModelDataParallelTopology(num_pp=parallel.pipeline_model_parallel_size,
                                             num_mp=parallel.tensor_model_parallel_size, num_dp=data_parallel_size)
    return PipelineModule(
        layers=bloom_layer_specs(config, parallel, init_seed), topology=topology,
        loss_fn=PipelineLoss(config, norm_target_loss), partition_method=partition_method,
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        activation_checkpoint_func=checkpoint, checkpointable_layers=[TransformerBlockPipe.__name__],
    )


def pipeline_parameter_shapes(config: BloomModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the `PipelineModule` by its name there, whole (not split over TP)."""
    shapes = {f"tied_modules.{TIED_EMBEDDING}.{local}": shape
              for local, shape in layer_shapes(config, "embedding").items()}
    for layer in range(FIRST_BLOCK_LAYER, FIRST_BLOCK_LAYER + config.num_layers):
        shapes.update({f"{layer}.{local}": shape for local, shape in layer_shapes(config, "block").items()})
    final = final_norm_layer(config.num_layers)
    shapes.update({f"{final}.{local}": shape for local, shape in layer_shapes(config, "final_norm").items()})
    return shapes


def universal_checkpoint_info(config: BloomModelConfig) -> dict:
    """What DeepSpeed's universal checkpoint converter (`deepspeed.checkpoint.ds_to_universal`)
    needs to merge this pipeline's ZeRO shards over TP and to split them again at another layout:
    for each parameter name of the `PipelineModule` (`tied_modules.embed.*` for the embedding, the
    pipeline layer number for the rest), whether it is replicated over TP (LayerNorms, row-parallel
    biases), split by rows (row-parallel weights) or the vocabulary-parallel embedding with its
    padding (the rest is split along dim 0); and that the tied embedding lives on the first and the
    last stage. The "original" vocabulary is the padded one: the padding rows are trained
    parameters (their logits are in the softmax), so they are kept, and a resume at the same
    padded size is exact; a layout whose padding is larger adds zero rows."""
    tied = f"tied_modules\\.{TIED_EMBEDDING}\\."
    replicated, rows = [], []
    for kind, prefix in (("embedding", tied), ("block", r"\d+\."), ("final_norm", r"\d+\.")):
        for local in layer_shapes(config, kind):
            pattern = f"^{prefix}{re.escape(local)}$"
            dim = tp_split_dim(local)
            if dim is None:
                replicated.append(pattern)
            elif dim == 1:
                rows.append(pattern)
    return {
        ds_checkpoint.UNIVERSAL_CHECKPOINT_VERSION_KEY: ds_checkpoint.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        ds_checkpoint.ORIGINAL_VOCAB_SIZE: config.vocab_size,
        ds_checkpoint.PADDED_VOCAB_SIZE: config.vocab_size,
        ds_checkpoint.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
        ds_checkpoint.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: rows,
        ds_checkpoint.VOCABULARY_PARAMETER_PATTERNS: [f"^{tied}word_embeddings\\.weight$"],
        ds_checkpoint.PIPELINE_REPLICATED_PARAMETER_PATTERNS: [f"^{tied}"],
    }


def layer_kind(spec) -> str | None:
    """'embedding', 'block', 'final_norm', 'lm_head', or None for a parameter-free function."""
    if isinstance(spec, TiedLayerSpec):
        return "embedding" if spec.forward_fn is None else "lm_head"
    if isinstance(spec, LayerSpec):
        return {TransformerBlockPipe: "block", FinalNormPipe: "final_norm"}[spec.typename]
    return None


def _spec_parameters(spec, config: BloomModelConfig, tp: int) -> int:
    """What DeepSpeed counts for `--pp-partition-method parameters`: the LM head builds (and
    counts) the tied embedding too."""
    kind = layer_kind(spec)
    return 0 if kind is None else layer_parameters(config, "embedding" if kind == "lm_head" else kind, tp)


def _spec_name(spec) -> str | None:
    """The name DeepSpeed matches `type:REGEX` against: the layer's class or function name."""
    if isinstance(spec, LayerSpec):
        return spec.typename.__name__
    return getattr(spec, "__name__", None)


def _layer_specs(config: BloomModelConfig, tp: int, pp: int) -> list:
    parallel = ModelParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                   pipeline_dtype=torch.float32, use_cpu_initialization=True)
    return bloom_layer_specs(config, parallel)


def _stage_bounds(specs: list, method: str, stages: int, config: BloomModelConfig, tp: int) -> list[int]:
    """Stage i holds `specs[bounds[i]:bounds[i + 1]]`, as `PipelineModule` computes it."""
    method = method.lower()
    if method == "uniform":
        return ds_utils.partition_uniform(num_items=len(specs), num_parts=stages)
    if method == "parameters":
        return ds_utils.partition_balanced([_spec_parameters(s, config, tp) for s in specs], stages)
    if method.startswith("type:"):
        pattern = re.compile(method.split(":", 1)[1], re.IGNORECASE)
        weights = [int(bool((name := _spec_name(s)) and pattern.search(name))) for s in specs]
        if not any(weights):
            raise ValueError(f"--pp-partition-method {method}: matches none of the layers")
        return ds_utils.partition_balanced(weights, stages)
    raise ValueError(f"--pp-partition-method {method}: use uniform, parameters or type:REGEX")


def stage_layers(config: BloomModelConfig, tp: int, pp: int, method: str) -> list[list[str]]:
    """The kinds of layer (`layer_kind`) each of the `pp` stages holds, worked out without
    building a layer, as DeepSpeed's `PipelineModule` partitions them."""
    specs = _layer_specs(config, tp, pp)
    bounds = _stage_bounds(specs, method, pp, config, tp)
    return [[kind for s in specs[bounds[i]:bounds[i + 1]] if (kind := layer_kind(s))] for i in range(pp)]


def check_partition(config: BloomModelConfig, tp: int, pp: int, method: str) -> None:
    """Every stage must hold parameters (with `type:transformer|embedding`, PP may be the layer
    count + 2: BLOOM-176B ran 70 layers on 72 stages)."""
    for stage, kinds in enumerate(stage_layers(config, tp, pp, method)):
        if not kinds:
            raise ValueError(f"--pipeline-model-parallel-size {pp} leaves stage {stage} without parameters "
                             f"({config.num_layers} layers, --pp-partition-method {method})")
