"""What a launch would be, worked out without launching anything (`finetune_xp3.py --dry-run`):
the process layout (world = TP x PP x DP, gradient accumulation), which layers each pipeline
stage holds (the model family's `stage_layers`), parameters and an estimate of peak
memory per GPU, and the data groups, opened and counted.

Memory per GPU, for P parameters on the GPU and data-parallel size d:
- weights 2P in fp16/bf16 (4P in fp32), divided by d under ZeRO-3;
- gradients 2P in fp16, 4P in bf16 (DeepSpeed accumulates them in fp32) and fp32, divided by d
  under ZeRO-2/3;
- optimizer: Adam's moments (8P) and in fp16/bf16 the fp32 master weights (4P), divided by d
  under ZeRO-1 and above;
- activations (Korthikanti et al. 2022, no sequence parallelism, in half precision), per layer
  and micro-batch of b rows of s tokens, hidden h, a heads, TP t: s*b*h*(B + 5*a*s/(h*t)) bytes,
  B the family's own (`block_activations`: 10 + 24/t for BLOOM), the last term the materialised
  attention scores (none with the fused `flex` and `triton` backends, which never hold
  `[s, s]`); with `--checkpoint-activations` only
  each layer's input (2*s*b*h) is kept, plus one layer's full set during its backward; and the
  stage's output (2*s*b*h). A stage holds min(PP - stage, gradient accumulation) micro-batches in
  flight under 1F1B;
- logits: s*b*V/t * (2 + 4 + 4) bytes on the LM head's stage (half logits, fp32 copy, gradient);
  with `--lm-head-loss chunked`, one chunk's fp32 logits (`CHUNK_BYTES`).
CUDA context, communication buffers and fragmentation come on top.

With LoRA (`--lora-rank`) the model is frozen: its weights stay (2P or 4P; ZeRO-3 is refused
with LoRA) and the adapters' own L parameters join them (2L or 4L); gradients and optimizer are
the adapters' alone, by the rules above with L in place of P. A block's L is counted from the
family's tensor shapes (`layer_shapes`): a targeted weight `[out, in]` gets r*(in + out), of
which a GPU holds r*in + r*out/t for a column-parallel weight (B split, A whole) and
r*in/t + r*out for a row-parallel one (PEFT's rule, `models/common/lora.py`). The activations are
taken as full finetuning's: recomputation keeps each layer's input as before, and where a frozen
weight keeps no input for its weight gradient, the adapter's A beside it keeps that same input
for its own. Left out: A's rank-sized outputs (r/h of a layer input each) and, with
`--lora-dropout`, each adapter's dropped-out copy of its input and mask (within the one layer
recomputed at a time under `--checkpoint-activations`).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.data.data_config import DataGroup
from megatron.data.indexed_dataset import IndexedDatasetError
from megatron.data.mtf_datasets import pair_range
from megatron.kernels.lm_head_loss import CHUNK_BYTES
from megatron.models.common.lora import LoraConfig, stacked_parts
from megatron.models.spec import ModelSpec
from megatron.train.config import TrainConfig
from megatron.train.errors import ConfigError
from megatron.train.load_plan import LoadPlan

GIB = 2**30


@dataclass(frozen=True)
class Stage:
    """What one GPU of a pipeline stage holds, and its estimated peak memory by part (bytes)."""

    index: int
    embedding: bool
    blocks: int
    final_norm: bool
    lm_head: bool
    parameters: int  # the model's
    adapters: int  # LoRA's
    memory: dict[str, float]

    def holds(self) -> str:
        parts = ["embedding"] * self.embedding
        if self.blocks:
            parts.append(f"{self.blocks} block{'s' * (self.blocks > 1)}")
        parts += ["final norm"] * self.final_norm + ["LM head"] * self.lm_head
        return " + ".join(parts)


def adapter_parameters(spec: ModelSpec, config, lora: LoraConfig, tp: int) -> int:
    """LoRA's parameters in one block on one of `tp` tensor ranks: r*(in + out) for each targeted
    weight `[out, in]`, B split over TP for a column-parallel weight, A for a row-parallel one."""
    count = 0
    for name, shape in spec.adapter.layer_shapes(config, "block").items():
        module, _, leaf = name.rpartition(".")
        if leaf != "weight" or module.rpartition(".")[2] not in lora.targets:
            continue
        out, into = shape
        split = spec.adapter.tp_split_dim(name)
        width = lora.rank * stacked_parts(lora, len(spec.adapter.LORA_HF_MODULES[module.rpartition(".")[2]]))
        count += width * (into // (tp if split == 1 else 1) + out // (tp if split == 0 else 1))
    return count


def stages(train: TrainConfig, spec: ModelSpec, config, lora: LoraConfig | None = None) -> list[Stage]:
    tp, pp = train.parallel.tensor, train.parallel.pipeline
    if not train.parallel.uses_pipeline:  # the whole model on every GPU
        return [_stage(train, spec, config, lora, 0, ["embedding", *["block"] * config.num_layers, "final_norm",
                                                      "lm_head"])]
    layers = spec.stage_layers(config, tp, pp, train.parallel.partition_method)
    return [_stage(train, spec, config, lora, index, kinds) for index, kinds in enumerate(layers)]


def _stage(train: TrainConfig, spec: ModelSpec, config, lora: LoraConfig | None, index: int,
           kinds: list[str]) -> Stage:
    tp, dp, zero = train.parallel.tensor, train.parallel.data, train.parallel.zero_stage
    h, a, s, b = config.hidden_size, config.num_heads, train.data.seq_length, train.batch.micro
    embedding, blocks, final_norm, lm_head = ("embedding" in kinds, kinds.count("block"), "final_norm" in kinds,
                                              "lm_head" in kinds)
    # a tied LM head shares the embedding's weight (a second copy lives on the last stage);
    # an untied one is a weight of its own
    count = spec.adapter.layer_parameters
    if config.tie_word_embeddings:
        vocabulary = (embedding or lm_head) * count(config, "embedding", tp)
    else:
        vocabulary = embedding * count(config, "embedding", tp) + lm_head * count(config, "lm_head", tp)
    parameters = vocabulary + blocks * count(config, "block", tp) + final_norm * count(config, "final_norm", tp)
    adapters = blocks * adapter_parameters(spec, config, lora, tp) if lora else 0
    trained = adapters if lora else parameters  # LoRA: the model frozen, no gradients or optimizer state
    half = train.precision in ("fp16", "bf16")
    element = 2 if half else 4
    in_flight = min(train.parallel.pipeline - index, train.batch.gradient_accumulation) if train.parallel.uses_pipeline else 1
    layer_input = s * b * h * element
    scores = 5 * a * s / (h * tp) if config.attention_backend == "reference" else 0  # the fused keep none
    layer_full = s * b * h * (config.block_activations(tp) + scores) * element / 2
    if train.model.checkpoint_activations:
        activations = blocks * in_flight * layer_input + layer_full * (blocks > 0)
    else:
        activations = blocks * in_flight * layer_full
    activations += in_flight * layer_input  # the stage's output (or the embedding's) per micro-batch
    memory = {
        "weights": (parameters + adapters) * element / (dp if zero == 3 else 1),
        "gradients": trained * (2 if train.precision == "fp16" else 4) / (dp if zero >= 2 else 1),
        "optimizer": trained * (12 if half else 8) / (dp if zero >= 1 else 1),
        "activations": activations,
        "logits": lm_head * (CHUNK_BYTES if config.lm_head_loss == "chunked"
                             else s * b * config.vocab_size / tp * (element + 8)),
    }
    return Stage(index, embedding, blocks, final_norm, lm_head, parameters, adapters, memory)


def model_parameters(spec: ModelSpec, config) -> int:
    """The model's parameters, whole (a tied LM head counted once)."""
    tied = config.tie_word_embeddings
    return sum(spec.adapter.layer_parameters(config, spec.adapter.layer_kind(layer, config.num_layers, tied), 1)
               for layer in spec.adapter.parameter_layers(config.num_layers, tied))


def lora_parameters(spec: ModelSpec, config, lora: LoraConfig) -> int:
    """LoRA's parameters in the whole model."""
    return config.num_layers * adapter_parameters(spec, config, lora, 1)


def checkpoint_bytes(train: TrainConfig, spec: ModelSpec, config, lora: LoraConfig | None = None) -> float:
    """About what one training checkpoint takes on disk: each trained parameter's weight (in the
    run's precision) and Adam's fp32 master copy and two moments (12 bytes); with LoRA the
    adapters alone (the frozen model is not saved)."""
    trained = lora_parameters(spec, config, lora) if lora is not None else model_parameters(spec, config)
    return trained * ((2 if train.precision in ("fp16", "bf16") else 4) + 12)


def data_summary(group: DataGroup) -> str:
    """`NAME: N datasets, M pairs`, every dataset opened (a missing or damaged file stops here)."""
    pairs = 0
    for dataset in group.datasets:
        try:
            pairs += len(pair_range(dataset.prefix, dataset.begin, dataset.end))
        except (FileNotFoundError, IndexedDatasetError, ValueError) as error:
            raise ConfigError(f"data group {group.name!r}: {error}") from None
    return f"{group.name}: {len(group.datasets)} datasets, {pairs:,} pairs"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


FUSIONS = (("bias_gelu_fusion", "compiled bias + GeLU"), ("bias_dropout_fusion", "bias + dropout + residual"))


def _fusions(config) -> str:
    """The compiled fusions the family's config has, on or off."""
    return ", ".join(f"{what} {_on(getattr(config, field))}" for field, what in FUSIONS if hasattr(config, field))


def _lora(spec: ModelSpec, config, lora: LoraConfig, total: int) -> str:
    """The LoRA settings and the adapters' parameters, whole."""
    adapters = lora_parameters(spec, config, lora)
    scaling = f"alpha/sqrt(r) = {lora.scaling:g}, rsLoRA" if lora.rslora else f"alpha/r = {lora.scaling:g}"
    return (f"LoRA: rank {lora.rank}, alpha {lora.alpha:g} (scaling {scaling}), dropout {lora.dropout:g}, targets "
            f"{' '.join(lora.targets)}: {adapters:,} adapter parameters ({adapters / total:.3%} of the model's), "
            "the only ones with gradients and optimizer state; the model frozen")


def describe(train: TrainConfig, spec: ModelSpec, plan: LoadPlan, config, lora: LoraConfig | None = None) -> str:
    """The dry run's report; `lora`: the run's adapters (None: full finetuning)."""
    par, batch = train.parallel, train.batch
    tied = config.tie_word_embeddings
    total = model_parameters(spec, config)
    kv_heads = config.num_kv_heads
    start = {"scratch": "random initialisation (no checkpoint in --save or --load)",
             "weights": f"the weights of {plan.folder}/{plan.tag} (fresh optimizer)",
             "resume": f"resuming {plan.folder}/{plan.tag}",
             "universal": f"the universal checkpoint {plan.folder}/{plan.tag} (weights, Adam moments, "
                          "progress; RNG reseeded)"}[plan.kind]
    lines = [
        "dry run: nothing launched",
        f"world size {par.world_size} = TP {par.tensor} x PP {par.pipeline} x DP {par.data}",
        f"batch: micro {batch.micro} x DP {par.data} x gradient accumulation {batch.gradient_accumulation} "
        f"= global {batch.global_batch} rows of {train.data.seq_length} tokens",
        f"training: {train.train_iters} iterations, {batch.train_samples:,} rows, "
        f"{_count(batch.train_samples * train.data.seq_length)} tokens",
        f"model: {spec.name}, {config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads"
        + (f" over {kv_heads} KV heads" if kv_heads != config.num_heads else "")
        + f", vocabulary {config.vocab_size}, LM head {'tied to the embeddings' if tied else 'untied'}: "
          f"{_count(total)} parameters; {spec.flops_per_token(config, train.data.seq_length) / 1e9:.2f} GFLOPs "
          f"per token ({spec.flops_formula})",
        f"precision {train.precision}, ZeRO-{par.zero_stage}, attention {config.attention_backend}, "
        f"LM head loss {config.lm_head_loss}, {_fusions(config)}, "
        f"{'PipelineModule' if train.parallel.uses_pipeline else 'whole model on every GPU'}, activation "
        f"recomputation {_on(train.model.checkpoint_activations)}",
        *([_lora(spec, config, lora, total)] if lora else []),
        f"starts from: {start}",
        "data:",
        *(f"  {data_summary(group)}" for group in [train.data.train, *train.data.valid]),
        "per GPU (GiB)           weights  grads  optimizer  activations  logits  total  params",
    ]
    rows = stages(train, spec, config, lora)
    for first, last in _runs(rows):
        stage = rows[first]
        label = f"stage {first}" if first == last else f"stages {first}-{last}"
        m = {k: v / GIB for k, v in stage.memory.items()}
        lines.append(f"  {label:<21} {m['weights']:7.2f} {m['gradients']:6.2f} {m['optimizer']:10.2f} "
                     f"{m['activations']:12.2f} {m['logits']:7.2f} {sum(m.values()):6.2f}  "
                     f"{_count(stage.parameters)}{f' + {_count(stage.adapters)} LoRA' * bool(lora)}  {stage.holds()}{' each (memory: the most of them)' * (first != last)}")
    peak = max(rows, key=lambda r: sum(r.memory.values()))
    lines.append(f"peak estimate: {sum(peak.memory.values()) / GIB:.2f} GiB on stage {peak.index}, plus "
                 "CUDA context, communication buffers and fragmentation (keep 10-15% of the GPU free)")
    lines.append(f"a checkpoint: about {checkpoint_bytes(train, spec, config, lora) / GIB:.2f} GiB on disk "
                 "(weights and Adam states of what trains)")
    return "\n".join(lines)


def _runs(rows: list[Stage]) -> list[tuple[int, int]]:
    """Consecutive stages that hold the same layers, as (first, last). The first of a run has
    the most micro-batches in flight, so its memory is the run's largest."""
    runs: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        previous = rows[runs[-1][0]] if runs else None
        if previous and (previous.holds(), previous.parameters) == (row.holds(), row.parameters):
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs
