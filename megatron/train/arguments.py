"""The flags of `finetune_xp3.py` (Megatron's names, so the BLOOMZ launch scripts run unchanged),
parsed once into small frozen config groups that are passed explicitly, and checked against the
world size before any work starts.

Flags kept only so that those scripts run are listed in `ACCEPTED_ONLY` with what they mean here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from megatron.data.data_config import DataConfig, add_data_args, data_config_from_args
from megatron.train.errors import ConfigError
from megatron.train.deepspeed_config import read_deepspeed_json


# Flags of Megatron-DeepSpeed's BLOOMZ scripts that have nothing to do here, and why.
ACCEPTED_ONLY = {
    "--max-position-embeddings": "ALiBi has no learned positions; any length works",
    "--embed-layernorm": "BLOOM always has its embedding LayerNorm",
    "--deepspeed": "DeepSpeed is always the engine",
    "--deepspeed-activation-checkpointing": "--checkpoint-activations recomputes each block",
    "--abort-on-unmet-fused-kernel-constraints": "the attention path runs for any shape",
    "--sync-tp-duplicated-parameters": "replicated parameters get identical gradients from the "
                                       "tensor-parallel all-reduce, so they never drift apart",
    "--universal-checkpoint": "weights load at any TP/PP from our layer files; optimizer states "
                              "resume at the layout they were saved with",
    "--tensorboard-queue-size": "scalars are flushed at every log interval",
    "--log-timers-to-tensorboard": "step time is always logged",
    "--log-batch-size-to-tensorboard": "the batch size is always logged",
    "--log-validation-ppl-to-tensorboard": "validation perplexity is always logged",
}


@dataclass(frozen=True)
class ModelArgs:
    num_layers: int | None
    hidden_size: int | None
    num_heads: int | None
    init_method_std: float
    hidden_dropout: float
    attention_dropout: float
    make_vocab_size_divisible_by: int
    pad_vocab_size_to: int | None
    checkpoint_activations: bool
    prefix_lm: bool
    tokenizer: str
    attention_backend: str  # "reference" or "flex"
    lm_head_loss: str  # "reference" or "chunked"
    bias_gelu_fusion: bool
    bias_dropout_fusion: bool


@dataclass(frozen=True)
class ParallelArgs:
    tensor: int
    pipeline: int
    data: int
    zero_stage: int
    partition_method: str
    timeout_minutes: float
    backend: str | None  # None: NCCL with GPUs, gloo without

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline * self.data

    @property
    def uses_pipeline(self) -> bool:
        """ZeRO 0/1 run on DeepSpeed's `PipelineModule` (any PP); ZeRO-2/3, which its pipeline
        engine does not support, on the whole model."""
        return self.zero_stage <= 1


@dataclass(frozen=True)
class BatchArgs:
    micro: int
    global_batch: int
    gradient_accumulation: int
    train_samples: int
    num_workers: int


@dataclass(frozen=True)
class OptimizerArgs:
    lr: float
    min_lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    clip_grad: float
    decay_style: str
    warmup_samples: int
    decay_samples: int


@dataclass(frozen=True)
class CheckpointArgs:
    save: str | None
    save_interval: int | None
    load: str | None
    no_load_optim: bool
    no_load_rng: bool
    reset_progress: bool
    finetune: bool
    fallback: bool


@dataclass(frozen=True)
class LoggingArgs:
    log_interval: int
    eval_interval: int
    eval_iters: int
    tensorboard_dir: str | None
    exit_interval: int | None
    exit_duration_minutes: float | None
    kill_switch_path: str | None
    exit_signal_handler: bool


@dataclass(frozen=True)
class TrainConfig:
    model: ModelArgs
    parallel: ParallelArgs
    batch: BatchArgs
    optimizer: OptimizerArgs
    checkpoint: CheckpointArgs
    logging: LoggingArgs
    data: DataConfig
    precision: str  # "fp32", "bf16" or "fp16"
    seed: int
    norm_target_loss: bool
    nonfinite_loss: str  # "stop" or "skip"
    deepspeed_config: str | None
    dry_run: bool

    @property
    def train_iters(self) -> int:
        return self.batch.train_samples // self.batch.global_batch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Multitask finetuning of BLOOM on packed xP3 data with tensor, pipeline and "
                    "data (ZeRO) parallelism.", allow_abbrev=False)
    model = parser.add_argument_group("model")
    model.add_argument("--num-layers", type=int, help="from --load's checkpoint when not given")
    model.add_argument("--hidden-size", type=int)
    model.add_argument("--num-attention-heads", type=int)
    model.add_argument("--init-method-std", type=float, default=0.02)
    model.add_argument("--hidden-dropout", type=float, default=0.1)
    model.add_argument("--attention-dropout", type=float, default=0.1)
    model.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    model.add_argument("--pad-vocab-size-to", type=int, default=None)
    model.add_argument("--position-embedding-type", choices=["alibi"], default="alibi")
    model.add_argument("--checkpoint-activations", action="store_true",
                       help="recompute each transformer block in the backward pass (less memory)")
    model.add_argument("--prefix-lm", action="store_true",
                       help="bidirectional attention among each pair's input tokens")
    model.add_argument("--attention-backend", choices=["auto", "reference", "flex"], default="auto",
                       help="flex: FlexAttention with ALiBi and packed-causal block masks (GPU; no attention "
                            "dropout); reference: SDPA over a materialised bias; auto: flex on GPUs when "
                            "--attention-dropout is 0")
    model.add_argument("--lm-head-loss", choices=["auto", "reference", "chunked"], default="auto",
                       help="chunked: LM head + cross entropy over the target tokens in chunks, never holding "
                            "the logits; reference: full logits; auto: chunked on GPUs")
    for name, what in (("gelu", "bias + GeLU"), ("dropout", "bias + dropout + residual")):
        model.add_argument(f"--bias-{name}-fusion", action=argparse.BooleanOptionalAction, default=None,
                           help=f"{what} as one torch.compile'd kernel (default: on GPUs)")
    model.add_argument("--tokenizer-type", choices=["PretrainedFromHF"], default="PretrainedFromHF")
    model.add_argument("--tokenizer-name-or-path", required=True, help="a local HF tokenizer folder")

    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parallel.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parallel.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=None,
                          help="ZeRO stage (default: the DeepSpeed config's, else 1); 2 and 3 need PP = 1")
    parallel.add_argument("--pp-partition-method", default="type:transformer|embedding",
                          help="how DeepSpeed's PipelineModule splits layers over stages")
    parallel.add_argument("--distributed-backend", choices=["nccl", "gloo"], default=None,
                          help="default: nccl with GPUs, gloo without")
    parallel.add_argument("--distributed-timeout-minutes", type=float, default=10.0,
                          help="a collective waiting longer than this fails the run")
    parallel.add_argument("--local_rank", "--local-rank", type=int, default=None,
                          help="set by the deepspeed launcher")

    training = parser.add_argument_group("training")
    training.add_argument("--micro-batch-size", type=int, required=True)
    training.add_argument("--global-batch-size", type=int, default=None,
                          help="default: micro batch x data-parallel size")
    training.add_argument("--train-iters", type=int, default=None)
    training.add_argument("--train-samples", type=int, default=None)
    training.add_argument("--seed", type=int, default=1234)
    training.add_argument("--norm-target-loss", action="store_true",
                          help="average each target's tokens first, then the targets")
    precision = training.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true")
    precision.add_argument("--fp16", action="store_true")
    training.add_argument("--nonfinite-loss", choices=["stop", "skip"], default="stop",
                          help="a NaN/inf loss stops the run (default), or its step is skipped")
    training.add_argument("--num-workers", type=int, default=2, help="data loader processes")

    optimizer = parser.add_argument_group("optimizer and learning rate")
    optimizer.add_argument("--optimizer", choices=["adam"], default="adam",
                           help="AdamW: decoupled weight decay, none on biases and LayerNorms")
    optimizer.add_argument("--lr", type=float, required=True)
    optimizer.add_argument("--min-lr", type=float, default=0.0)
    optimizer.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine"], default="linear")
    optimizer.add_argument("--lr-warmup-iters", type=int, default=0)
    optimizer.add_argument("--lr-warmup-samples", type=int, default=0)
    optimizer.add_argument("--lr-warmup-fraction", type=float, default=None)
    optimizer.add_argument("--lr-decay-iters", type=int, default=None)
    optimizer.add_argument("--lr-decay-samples", type=int, default=None)
    optimizer.add_argument("--adam-beta1", type=float, default=0.9)
    optimizer.add_argument("--adam-beta2", type=float, default=0.999)
    optimizer.add_argument("--adam-eps", type=float, default=1e-8)
    optimizer.add_argument("--weight-decay", type=float, default=0.01)
    optimizer.add_argument("--clip-grad", type=float, default=1.0, help="0 turns clipping off")

    checkpoint = parser.add_argument_group("checkpoints")
    checkpoint.add_argument("--save", default=None)
    checkpoint.add_argument("--save-interval", type=int, default=None)
    checkpoint.add_argument("--load", default=None,
                            help="a checkpoint of ours or one converted from HF (weights only)")
    checkpoint.add_argument("--no-load-optim", action="store_true")
    checkpoint.add_argument("--no-load-rng", action="store_true")
    checkpoint.add_argument("--reset-progress", action="store_true",
                            help="start at iteration 0 of the data and LR schedule after loading")
    checkpoint.add_argument("--finetune", action="store_true",
                            help="load the weights only: no optimizer, RNG or progress")
    checkpoint.add_argument("--checkpoint-fallback", action="store_true",
                            help="if the checkpoint 'latest' names is damaged, start from the newest "
                                 "complete one before it (default: stop with an error)")

    logging = parser.add_argument_group("logging and exit")
    logging.add_argument("--log-interval", type=int, default=100)
    logging.add_argument("--eval-interval", type=int, default=1000)
    logging.add_argument("--eval-iters", type=int, default=100)
    logging.add_argument("--tensorboard-dir", default=None)
    logging.add_argument("--exit-interval", type=int, default=None, help="stop after this iteration")
    logging.add_argument("--exit-duration-in-mins", type=float, default=None)
    logging.add_argument("--kill-switch-path", default=None, help="stop (after saving) once this file exists")
    logging.add_argument("--dry-run", action="store_true",
                         help="print the layout (world size, gradient accumulation, TP/PP stages), a "
                              "memory estimate per GPU and the data; launch nothing (set WORLD_SIZE)")
    logging.add_argument("--exit-signal-handler", action="store_true",
                         help="on SIGTERM or SIGUSR1 (SLURM's notice before a time limit or preemption) "
                              "finish the step, save, exit 0")

    deepspeed = parser.add_argument_group("DeepSpeed")
    deepspeed.add_argument("--deepspeed_config", "--deepspeed-config", default=None,
                           help="DeepSpeed JSON: ZeRO, precision and clipping; batch sizes come from the flags")

    accepted = parser.add_argument_group("accepted for Megatron-DeepSpeed scripts, no effect here")
    for flag, reason in ACCEPTED_ONLY.items():
        takes_value = flag in ("--max-position-embeddings", "--tensorboard-queue-size")
        accepted.add_argument(flag, help=reason, **({"default": None} if takes_value else {"action": "store_true"}))

    add_data_args(parser)
    return parser


def _samples(iters: int | None, samples: int | None, global_batch: int, name: str) -> int | None:
    if iters and samples:
        raise ConfigError(f"give --{name}-iters or --{name}-samples, not both")
    return iters * global_batch if iters else samples


def parse_config(argv: list[str] | None = None, world_size: int | None = None) -> TrainConfig:
    """Flags -> TrainConfig, checked for a run on `world_size` processes (default: $WORLD_SIZE)."""
    args = build_parser().parse_args(argv)
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if tp < 1 or pp < 1 or world % (tp * pp):
        raise ConfigError(f"world size {world} is not divisible by --tensor-model-parallel-size {tp} x "
                          f"--pipeline-model-parallel-size {pp}")
    dp = world // (tp * pp)
    micro = args.micro_batch_size
    global_batch = args.global_batch_size or micro * dp
    if micro < 1 or global_batch % (micro * dp):
        raise ConfigError(f"--global-batch-size {global_batch} is not divisible by --micro-batch-size "
                          f"{micro} x data-parallel size {dp} (world {world} / TP {tp} / PP {pp})")
    train_samples = _samples(args.train_iters, args.train_samples, global_batch, "train")
    if not train_samples:
        raise ConfigError("give --train-iters or --train-samples")
    zero_stage = args.zero_stage if args.zero_stage is not None else _zero_stage_of(args.deepspeed_config)
    if zero_stage >= 2 and pp > 1:
        raise ConfigError(f"ZeRO stage {zero_stage} does not work with pipeline parallelism: use "
                          "--zero-stage 1 (or 0) with --pipeline-model-parallel-size > 1")
    if args.nonfinite_loss == "skip" and zero_stage == 0 and not args.fp16:
        raise ConfigError("--nonfinite-loss skip needs ZeRO stage >= 1 or --fp16 (DeepSpeed then "
                          "skips steps with non-finite gradients)")
    gpu = torch.cuda.is_available() or args.distributed_backend == "nccl"  # (a dry run of a GPU launch)
    attention_backend = args.attention_backend if args.attention_backend != "auto" else (
        "flex" if gpu and args.attention_dropout == 0 else "reference")
    if attention_backend == "flex" and args.attention_dropout:
        raise ConfigError(f"--attention-backend flex has no attention dropout: pass --attention-dropout 0 "
                          f"(not {args.attention_dropout}) or --attention-backend reference")
    lm_head_loss = args.lm_head_loss if args.lm_head_loss != "auto" else ("chunked" if gpu else "reference")
    bias_gelu_fusion, bias_dropout_fusion = (gpu if flag is None else flag
                                             for flag in (args.bias_gelu_fusion, args.bias_dropout_fusion))
    shape = (args.num_layers, args.hidden_size, args.num_attention_heads)
    if args.load is None and None in shape:
        raise ConfigError("without --load, give --num-layers, --hidden-size and --num-attention-heads")
    if args.num_attention_heads and args.num_attention_heads % tp:
        raise ConfigError(f"--tensor-model-parallel-size {tp} does not divide --num-attention-heads "
                          f"{args.num_attention_heads}")
    if args.save_interval and not args.save:
        raise ConfigError("--save-interval needs --save")
    if args.finetune and not args.load:
        raise ConfigError("--finetune needs --load")
    for name in ("log_interval", "eval_interval"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    warmup = _samples(args.lr_warmup_iters, args.lr_warmup_samples, global_batch, "lr-warmup") or 0
    if args.lr_warmup_fraction is not None:
        if warmup:
            raise ConfigError("give one of --lr-warmup-iters, --lr-warmup-samples, --lr-warmup-fraction")
        warmup = int(args.lr_warmup_fraction * train_samples)
    decay = _samples(args.lr_decay_iters, args.lr_decay_samples, global_batch, "lr-decay") or train_samples
    if warmup > decay:
        raise ConfigError(f"the LR warmup ({warmup} samples) is longer than its decay ({decay} samples)")
    try:
        data = data_config_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    if data.train is None:
        raise ConfigError("no training data: give --data-path or --train-weighted-split-paths")
    return TrainConfig(
        model=ModelArgs(args.num_layers, args.hidden_size, args.num_attention_heads, args.init_method_std,
                        args.hidden_dropout, args.attention_dropout, args.make_vocab_size_divisible_by,
                        args.pad_vocab_size_to, args.checkpoint_activations, args.prefix_lm,
                        args.tokenizer_name_or_path, attention_backend, lm_head_loss, bias_gelu_fusion,
                        bias_dropout_fusion),
        parallel=ParallelArgs(tp, pp, dp, zero_stage, args.pp_partition_method, args.distributed_timeout_minutes,
                              args.distributed_backend),
        batch=BatchArgs(micro, global_batch, global_batch // (micro * dp), train_samples, args.num_workers),
        optimizer=OptimizerArgs(args.lr, args.min_lr, args.adam_beta1, args.adam_beta2, args.adam_eps,
                                args.weight_decay, args.clip_grad, args.lr_decay_style, warmup, decay),
        checkpoint=CheckpointArgs(args.save, args.save_interval, args.load, args.no_load_optim,
                                  args.no_load_rng, args.reset_progress, args.finetune,
                                  args.checkpoint_fallback),
        logging=LoggingArgs(args.log_interval, args.eval_interval, args.eval_iters, args.tensorboard_dir,
                            args.exit_interval, args.exit_duration_in_mins, args.kill_switch_path,
                            args.exit_signal_handler),
        data=data,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        seed=args.seed,
        norm_target_loss=args.norm_target_loss,
        nonfinite_loss=args.nonfinite_loss,
        deepspeed_config=args.deepspeed_config,
        dry_run=args.dry_run,
    )


def _zero_stage_of(deepspeed_config: str | None) -> int:
    json_config = read_deepspeed_json(deepspeed_config)
    return int(json_config.get("zero_optimization", {}).get("stage", 1))
