"""What every family's DeepSpeed `PipelineModule` shares: layer specs that build their layer under
its own seed (the same random model for any layout), the parameter-free pass-through layers that
keep Megatron-DeepSpeed's numbering, the embedding layer (and a tied LM head made of it), the
mixins that make a family's block and final norm pipeline layers, the last stage's loss, how DeepSpeed cuts the specs into
stages (worked out without building a layer), and DeepSpeed's `universal_checkpoint_info` from the
family's adapter.

A family's pipeline classes say what they hold with a `kind` class attribute ('block',
'final_norm', 'lm_head'); a tied layer is the embedding, or the LM head when it has a
`forward_fn`. `layer_kind` classifies a spec for the partition by parameters, the check that every
stage holds parameters, and the dry run's stage table.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from deepspeed.checkpoint import constants as ds_checkpoint
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime import utils as ds_utils
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from torch import nn

from megatron.models.common.layer_numbering import FIRST_BLOCK_LAYER, final_norm_layer, lm_head_layer
from megatron.models.common.loss import head_and_loss, target_log_probs
from megatron.models.common.recompute import checkpoint
from megatron.models.common.tp_random import seeded
from megatron.utils.megatron_core import ModelParallelConfig

TIED_EMBEDDING = "embed"


def pass_through(inputs):
    """The parameter-free layers 0, 2 and L+3 that keep Megatron-DeepSpeed's numbering."""
    return inputs


class EmbeddingPipe(nn.Module):
    """Layer 1 (and, tied, the LM head): the family's word embeddings, `embeddings(config,
    parallel)`, as `word_embeddings`; the first stage takes `(tokens, segment_ids, is_inputs)`."""

    kind = "embedding"

    def __init__(self, embeddings: Callable, config, parallel: ModelParallelConfig):
        super().__init__()
        self.word_embeddings = embeddings(config, parallel)

    def forward(self, inputs):
        tokens, segment_ids, is_inputs = inputs
        return self.word_embeddings(tokens), segment_ids, is_inputs


def tied_lm_head(embedding: EmbeddingPipe, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tied model's last layer hands the final hidden states and the embeddings' weight to the
    loss, which applies the head (`loss.head_and_loss`: full logits, or chunked over the targets)."""
    return hidden, embedding.word_embeddings.weight


class BlockPipe:
    """Mixin before a family's block class: the block as pipeline layers 3 .. L+2, passing
    `(hidden, segment_ids, is_inputs)` on."""

    kind = "block"

    def forward(self, inputs):
        hidden, segment_ids, is_inputs = inputs
        return super().forward(hidden, segment_ids, is_inputs), segment_ids, is_inputs


class FinalNormPipe:
    """Mixin before a family's norm class: the final norm as layer L+4, passing on the hidden
    states only."""

    kind = "final_norm"

    def forward(self, inputs):
        return super().forward(inputs[0])


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


class PipelineLoss:
    """The last stage's loss function: the packed loss of a micro-batch, or, while `scoring` is
    set (zero-shot evaluation), each label's log-probability under the loss mask, `[micro, seq]`.
    The last layer hands over the final hidden states and the LM head's weight."""

    def __init__(self, config, norm_target_loss: bool):
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


def pipeline_module(layer_specs: Callable, block_class: type, config, parallel: ModelParallelConfig,
                    data_parallel_size: int, partition_method: str, checkpoint_activations: bool,
                    norm_target_loss: bool, init_seed: int | None = None) -> PipelineModule:
    """A family's whole model as a `PipelineModule` over megatron-core's groups, from its
    `layer_specs(config, parallel, init_seed)`; `block_class` is recomputed under
    `--checkpoint-activations`. Micro-batches are `((tokens, segment_ids, is_inputs), (labels,
    loss_mask, segment_ids))`."""
    topology = PipeModelDataParallelTopology(num_pp=parallel.pipeline_model_parallel_size,
                                             num_mp=parallel.tensor_model_parallel_size, num_dp=data_parallel_size)
    return PipelineModule(
        layers=layer_specs(config, parallel, init_seed), topology=topology,
        loss_fn=PipelineLoss(config, norm_target_loss), partition_method=partition_method,
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        activation_checkpoint_func=checkpoint, checkpointable_layers=[block_class.__name__],
    )


def layer_kind(spec) -> str | None:
    """'embedding', 'block', 'final_norm', 'lm_head', or None for a parameter-free function."""
    if isinstance(spec, TiedLayerSpec):
        return "embedding" if spec.forward_fn is None else "lm_head"
    if isinstance(spec, LayerSpec):
        return spec.typename.kind
    return None


def _spec_parameters(spec, config, tp: int, adapter) -> int:
    """What DeepSpeed counts for `--pp-partition-method parameters`: a tied LM head builds (and
    counts) the embedding too."""
    kind = layer_kind(spec)
    if kind is None:
        return 0
    if kind == "lm_head" and isinstance(spec, TiedLayerSpec):
        kind = "embedding"
    return adapter.layer_parameters(config, kind, tp)


def _spec_name(spec) -> str | None:
    """The name DeepSpeed matches `type:REGEX` against: the layer's class or function name."""
    if isinstance(spec, LayerSpec):
        return spec.typename.__name__
    return getattr(spec, "__name__", None)


def _stage_bounds(specs: list, method: str, stages: int, config, tp: int, adapter) -> list[int]:
    """Stage i holds `specs[bounds[i]:bounds[i + 1]]`, as `PipelineModule` computes it."""
    method = method.lower()
    if method == "uniform":
        return ds_utils.partition_uniform(num_items=len(specs), num_parts=stages)
    if method == "parameters":
        return ds_utils.partition_balanced([_spec_parameters(s, config, tp, adapter) for s in specs], stages)
    if method.startswith("type:"):
        pattern = re.compile(method.split(":", 1)[1], re.IGNORECASE)
        weights = [int(bool((name := _spec_name(s)) and pattern.search(name))) for s in specs]
        if not any(weights):
            raise ValueError(f"--pp-partition-method {method}: matches none of the layers")
        return ds_utils.partition_balanced(weights, stages)
    raise ValueError(f"--pp-partition-method {method}: use uniform, parameters or type:REGEX")


def stage_layers(layer_specs: Callable, adapter, config, tp: int, pp: int, method: str) -> list[list[str]]:
    """The kinds of layer (`layer_kind`) each of the `pp` stages holds, worked out without
    building a layer, as DeepSpeed's `PipelineModule` partitions them (`layer_specs(config,
    parallel)`: the family's specs)."""
    parallel = ModelParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                   pipeline_dtype=torch.float32, use_cpu_initialization=True)
    specs = layer_specs(config, parallel)
    bounds = _stage_bounds(specs, method, pp, config, tp, adapter)
    return [[kind for s in specs[bounds[i]:bounds[i + 1]] if (kind := layer_kind(s))] for i in range(pp)]


def check_partition(layer_specs: Callable, adapter, config, tp: int, pp: int, method: str) -> None:
    """Every stage must hold parameters (with `type:transformer|embedding`, PP may be the layer
    count + 2: BLOOM-176B ran 70 layers on 72 stages)."""
    for stage, kinds in enumerate(stage_layers(layer_specs, adapter, config, tp, pp, method)):
        if not kinds:
            raise ValueError(f"--pipeline-model-parallel-size {pp} leaves stage {stage} without parameters "
                             f"({config.num_layers} layers, --pp-partition-method {method})")


def pipeline_parameter_shapes(adapter, config) -> dict[str, tuple[int, ...]]:
    """Every parameter of the `PipelineModule` by its name there, whole (not split over TP): a
    tied embedding under `tied_modules.embed.`, the other layers under their number."""
    kinds = {f"tied_modules.{TIED_EMBEDDING}." if config.tie_word_embeddings else "1.": ["embedding"]}
    shapes = {}
    for prefix, (kind,) in kinds.items():
        shapes.update({prefix + local: shape for local, shape in adapter.layer_shapes(config, kind).items()})
    for layer in range(FIRST_BLOCK_LAYER, FIRST_BLOCK_LAYER + config.num_layers):
        shapes.update({f"{layer}.{local}": shape for local, shape in adapter.layer_shapes(config, "block").items()})
    final = final_norm_layer(config.num_layers)
    shapes.update({f"{final}.{local}": shape for local, shape in adapter.layer_shapes(config, "final_norm").items()})
    if not config.tie_word_embeddings:
        head = lm_head_layer(config.num_layers)
        shapes.update({f"{head}.{local}": shape for local, shape in adapter.layer_shapes(config, "lm_head").items()})
    return shapes


def universal_checkpoint_info(adapter, config) -> dict:
    """What DeepSpeed's universal checkpoint converter (`deepspeed.checkpoint.ds_to_universal`)
    needs to merge this pipeline's ZeRO shards over TP and to split them again at another layout:
    for each parameter name of the `PipelineModule` (`tied_modules.embed.*` for a tied embedding,
    the pipeline layer number for the rest), whether it is replicated over TP (norms, row-parallel
    biases), split by rows (row-parallel weights), two fused sub-parameters each split along dim 0
    (SwiGLU's gate and up), or a vocabulary tensor with its padding (the rest is split along dim 0);
    and that a tied embedding lives on the first and the last stage. The "original" vocabulary is
    the padded one: the padding rows are trained parameters (their logits are in the softmax), so
    they are kept, and a resume at the same padded size is exact; a layout whose padding is larger
    adds zero rows."""
    tied = f"tied_modules\\.{TIED_EMBEDDING}\\."
    kinds = [("embedding", tied if config.tie_word_embeddings else r"\d+\."), ("block", r"\d+\."),
             ("final_norm", r"\d+\."), *([] if config.tie_word_embeddings else [("lm_head", r"\d+\.")])]
    replicated, rows, sub_params, vocabulary = [], [], [], []
    for kind, prefix in kinds:
        for local in adapter.layer_shapes(config, kind):
            pattern = f"^{prefix}{re.escape(local)}$"
            dim = adapter.tp_split_dim(local)
            if dim is None:
                replicated.append(pattern)
            elif dim == 1:
                rows.append(pattern)
            elif local in adapter.FUSED_GATE_UP:
                sub_params.append(pattern)
            if local in adapter.VOCAB_TENSORS:
                vocabulary.append(pattern)
    info = {
        ds_checkpoint.UNIVERSAL_CHECKPOINT_VERSION_KEY: ds_checkpoint.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        ds_checkpoint.ORIGINAL_VOCAB_SIZE: config.vocab_size,
        ds_checkpoint.PADDED_VOCAB_SIZE: config.vocab_size,
        ds_checkpoint.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
        ds_checkpoint.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: rows,
        ds_checkpoint.VOCABULARY_PARAMETER_PATTERNS: vocabulary,
    }
    if sub_params:
        info[ds_checkpoint.PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0] = sub_params
    if config.tie_word_embeddings:
        info[ds_checkpoint.PIPELINE_REPLICATED_PARAMETER_PATTERNS] = [f"^{tied}"]
    return info
