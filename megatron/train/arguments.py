"""The flags of `finetune_xp3.py` (Megatron's names, so the BLOOMZ launch scripts run unchanged),
parsed once into the frozen groups of `config.py`, built by keyword, and checked (`validation.py`)
against the world size before any work starts. Defaults that depend on the machine (`auto`
backends, fusions on GPUs) are resolved here.

Flags kept only so that those scripts run are listed in `ACCEPTED_ONLY` with what they mean here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import torch

from megatron.data.data_config import add_data_args, data_config_from_args
from megatron.models import spec_for_architecture
from megatron.models.common.rope import megatron_rope_scaling
from megatron.train import validation
from megatron.train.config import (ArchitectureFlag, BatchConfig, CheckpointConfig, EvalTasksConfig, LoggingConfig,
                                   LoraFlags, ModelConfig, OptimizerConfig, ParallelConfig, TrainConfig,
                                   WandbConfig)
from megatron.train.deepspeed_config import read_deepspeed_json
from megatron.train.errors import ConfigError


# Flags of Megatron-DeepSpeed's BLOOMZ scripts that have nothing to do here, and why.
ACCEPTED_ONLY = {
    "--max-position-embeddings": "no learned positions (ALiBi, RoPE): any length works",
    "--embed-layernorm": "BLOOM always has its embedding LayerNorm",
    "--deepspeed": "DeepSpeed is always the engine",
    "--deepspeed-activation-checkpointing": "--checkpoint-activations recomputes each block",
    "--abort-on-unmet-fused-kernel-constraints": "the attention path runs for any shape",
    "--sync-tp-duplicated-parameters": "replicated parameters get identical gradients from the "
                                       "tensor-parallel all-reduce, so they never drift apart",
    "--tensorboard-queue-size": "scalars are flushed at every log interval",
    "--log-timers-to-tensorboard": "step time is always logged",
    "--log-batch-size-to-tensorboard": "the batch size is always logged",
    "--log-validation-ppl-to-tensorboard": "validation perplexity is always logged",
    "--test-weighted-split-paths": "there is no test-set evaluation; name held-out groups in "
                                   "--valid-weighted-split-paths",
    "--test-weighted-split-paths-path": "as --test-weighted-split-paths",
}
TAKES_VALUES = {"--max-position-embeddings": {}, "--tensorboard-queue-size": {},
                "--test-weighted-split-paths": {"nargs": "*"}, "--test-weighted-split-paths-path": {}}


def attention_backend(choice: str, attention_dropout: float, gpu: bool) -> str:
    """`--attention-backend`, `auto` resolved: on GPUs triton with attention dropout, else flex;
    reference on CPU."""
    if choice != "auto":
        return choice
    return ("triton" if attention_dropout > 0 else "flex") if gpu else "reference"


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
    model.add_argument("--position-embedding-type", choices=["alibi", "rope"], default=None,
                       help="alibi (with LayerNorm and GeLU) or rope (with --normalization RMSNorm --swiglu); "
                            "default: --load's checkpoint's, else alibi")
    model.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default=None)
    model.add_argument("--swiglu", action="store_true", help="SwiGLU MLP (gate and up projections)")
    model.add_argument("--group-query-attention", action="store_true")
    model.add_argument("--num-query-groups", type=int, default=None,
                       help="KV heads, with --group-query-attention (default: as many as the query heads)")
    model.add_argument("--kv-channels", type=int, default=None, help="head size (default: hidden / heads)")
    model.add_argument("--ffn-hidden-size", type=int, default=None,
                       help="MLP width (default with --swiglu: int(8h/3 / 64) * 64, Megatron's rule)")
    model.add_argument("--rotary-base", type=float, default=None, help="RoPE's theta (default 10000)")
    model.add_argument("--use-rope-scaling", action="store_true",
                       help="Megatron-LM's rope scaling (the llama3 rule: low/high frequency factors 1 and 4, "
                            "original context 8192)")
    model.add_argument("--rope-scaling-factor", type=float, default=None,
                       help="its factor (default 8), with --use-rope-scaling")
    model.add_argument("--untie-embeddings-and-output-weights", action="store_true",
                       help="an LM head of its own (default: tied to the word embeddings)")
    model.add_argument("--disable-bias-linear", action="store_true",
                       help="no biases in the linear layers (Megatron's default has them)")
    model.add_argument("--add-qkv-bias", action="store_true", help="q/k/v biases even with --disable-bias-linear")
    model.add_argument("--norm-epsilon", type=float, default=None, help="RMSNorm's epsilon (default 1e-5)")
    model.add_argument("--checkpoint-activations", action="store_true",
                       help="recompute each transformer block in the backward pass (less memory)")
    model.add_argument("--prefix-lm", action="store_true",
                       help="bidirectional attention among each pair's input tokens")
    model.add_argument("--attention-backend", choices=["auto", "reference", "flex", "triton"], default="auto",
                       help="triton: our FlashAttention-2 kernel with ALiBi, packed-causal block skipping and "
                            "attention dropout (GPU; on CPU under TRITON_INTERPRET=1); flex: FlexAttention (GPU; "
                            "no attention dropout); reference: SDPA over a materialised bias; auto: on GPUs "
                            "triton with --attention-dropout > 0, else flex; reference on CPU")
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
    checkpoint.add_argument("--save-retain", type=int, default=None, metavar="N",
                            help="keep the N newest complete checkpoints in --save, deleting an older one only once a "
                                 "newer one is complete and 'latest' names it (default: keep all)")
    checkpoint.add_argument("--load", default=None,
                            help="a checkpoint of ours or one converted from HF (weights only)")
    checkpoint.add_argument("--no-load-optim", action="store_true")
    checkpoint.add_argument("--no-load-rng", action="store_true")
    checkpoint.add_argument("--reset-progress", action="store_true",
                            help="start at iteration 0 of the data and LR schedule after loading")
    checkpoint.add_argument("--finetune", action="store_true",
                            help="load the weights only: no optimizer, RNG or progress")
    checkpoint.add_argument("--universal-checkpoint", action="store_true",
                            help="--load holds a universal checkpoint (tools/convert_checkpoint/to_universal.py): "
                                 "resume its weights, Adam moments and progress at any TP x PP x DP (ZeRO-1), "
                                 "the RNG reseeded")
    checkpoint.add_argument("--checkpoint-fallback", action="store_true",
                            help="if the checkpoint 'latest' names is damaged, start from the newest "
                                 "complete one before it (default: stop with an error)")

    lora = parser.add_argument_group("LoRA (adapters on the frozen model; PEFT's tensor-parallel rule)")
    lora.add_argument("--lora-rank", type=int, default=None, help="the adapters' rank r: turns LoRA on")
    lora.add_argument("--lora-alpha", type=float, default=None, help="scaling alpha / r (default: alpha = r)")
    lora.add_argument("--lora-dropout", type=float, default=None, help="dropout on the adapters' input (default 0)")
    lora.add_argument("--lora-target", nargs="+", default=None, metavar="MODULE",
                      help="the linear layers of the family's blocks to adapt, by name (query_key_value dense "
                           "dense_h_to_4h dense_4h_to_h; the default: all of them)")
    lora.add_argument("--lora-rslora", action="store_true", default=None,
                      help="rank-stabilised scaling alpha / sqrt(r)")
    lora.add_argument("--lora-load", default=None, metavar="DIR",
                      help="start from the adapters of this LoRA checkpoint (weights only); --load is the base")

    logging = parser.add_argument_group("logging and exit")
    logging.add_argument("--log-interval", type=int, default=100)
    logging.add_argument("--eval-interval", type=int, default=1000)
    logging.add_argument("--eval-iters", type=int, default=100)
    logging.add_argument("--eval-tasks", default=None, metavar="FILE_OR_DIR",
                         help="zero-shot multiple-choice examples (tools/make_eval_prompts.py) scored by rank "
                              "classification on the live model; accuracies to the log and TensorBoard")
    logging.add_argument("--eval-tasks-interval", type=int, default=None,
                         help="iterations between --eval-tasks evaluations (default: --eval-interval)")
    logging.add_argument("--eval-tasks-length-normalize", action="store_true",
                         help="score a choice by its mean token log-probability, not the sum")
    logging.add_argument("--eval-tasks-prepend-bos", action="store_true",
                         help="the tokenizer's BOS before each prompt's inputs, as tools/preprocess_data.py "
                              "--prepend-bos inputs put it in the training data")
    logging.add_argument("--tensorboard-dir", default=None)
    logging.add_argument("--wandb-project", default=None,
                         help="log the same scalars to Weights & Biases (needs the wandb package: the [wandb] extra; "
                              "WANDB_MODE=offline writes the run locally)")
    logging.add_argument("--wandb-exp-name", default=None, help="the W&B run's name")
    logging.add_argument("--wandb-save-dir", default=None, help="where W&B writes its files")
    logging.add_argument("--wandb-entity", default=None, help="the W&B team or user")
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
        accepted.add_argument(flag, help=reason, **TAKES_VALUES.get(flag, {"action": "store_true"}))

    add_data_args(parser)
    return parser


def model_family(args: argparse.Namespace) -> str | None:
    """The family the architecture flags name (missing ones taken as BLOOM's), None without any."""
    if args.position_embedding_type is None and args.normalization is None and not args.swiglu:
        return None
    try:
        return spec_for_architecture(args.position_embedding_type or "alibi", args.normalization or "LayerNorm",
                                     args.swiglu).name
    except ValueError as error:
        raise ConfigError(str(error)) from None


def architecture_flags(args: argparse.Namespace) -> tuple[ArchitectureFlag, ...]:
    """Megatron's shape flags beyond layers, hidden size and heads, as fields of the model config.
    Megatron's linear layers have biases unless `--disable-bias-linear`: that default is recorded
    (not given) for a run from random initialisation of a family that has the fields."""
    if args.num_query_groups is not None and not args.group_query_attention:
        raise ConfigError("--num-query-groups needs --group-query-attention (Megatron's pair)")
    if args.rope_scaling_factor is not None and not args.use_rope_scaling:
        raise ConfigError("--rope-scaling-factor needs --use-rope-scaling")
    valued = [("--num-query-groups", "num_kv_heads", args.num_query_groups),
              ("--kv-channels", "head_dim", args.kv_channels),
              ("--ffn-hidden-size", "ffn_hidden_size", args.ffn_hidden_size),
              ("--rotary-base", "rope_theta", args.rotary_base),
              ("--norm-epsilon", "norm_eps", args.norm_epsilon)]
    flags = [ArchitectureFlag(flag, field, value, True) for flag, field, value in valued if value is not None]
    if args.use_rope_scaling:
        flags += [ArchitectureFlag("--use-rope-scaling", field, value, True)
                  for field, value in megatron_rope_scaling(args.rope_scaling_factor).items()]
    if args.untie_embeddings_and_output_weights:
        flags.append(ArchitectureFlag("--untie-embeddings-and-output-weights", "tie_word_embeddings", False, True))
    bias = not args.disable_bias_linear
    flags += [ArchitectureFlag("--disable-bias-linear", field, bias, args.disable_bias_linear)
              for field in ("output_bias", "mlp_bias")]
    flags.append(ArchitectureFlag("--add-qkv-bias" if args.add_qkv_bias else "--disable-bias-linear", "qkv_bias",
                                  bias or args.add_qkv_bias, args.disable_bias_linear or args.add_qkv_bias))
    return tuple(flags)


def wandb_config(args: argparse.Namespace) -> WandbConfig | None:
    """`--wandb-*`: None without `--wandb-project`; refused when the wandb package is missing."""
    if args.wandb_project is None:
        if any(value is not None for value in (args.wandb_exp_name, args.wandb_save_dir, args.wandb_entity)):
            raise ConfigError("--wandb-exp-name, --wandb-save-dir and --wandb-entity need --wandb-project")
        return None
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb-project needs the wandb package: pip install wandb (or this project's [wandb] extra)")
    return WandbConfig(project=args.wandb_project, exp_name=args.wandb_exp_name, save_dir=args.wandb_save_dir,
                       entity=args.wandb_entity)


def lora_flags(args: argparse.Namespace) -> LoraFlags | None:
    """The `--lora-*` flags, None when LoRA is off (no --lora-rank and no --lora-load)."""
    values = (args.lora_alpha, args.lora_dropout, args.lora_target, args.lora_rslora)
    if args.lora_rank is None and args.lora_load is None:
        if any(value is not None for value in values):
            raise ConfigError("--lora-alpha, --lora-dropout, --lora-target and --lora-rslora need --lora-rank "
                              "(or --lora-load)")
        return None
    if args.lora_rank is not None and args.lora_rank < 1:
        raise ConfigError(f"--lora-rank {args.lora_rank}: give a rank of 1 or more")
    if args.lora_dropout is not None and not 0 <= args.lora_dropout < 1:
        raise ConfigError(f"--lora-dropout {args.lora_dropout}: give a probability in [0, 1)")
    return LoraFlags(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                     targets=None if args.lora_target is None else tuple(args.lora_target),
                     rslora=args.lora_rslora, load=args.lora_load)


def parse_config(argv: list[str] | None = None, world_size: int | None = None) -> TrainConfig:
    """Flags -> TrainConfig, checked for a run on `world_size` processes (default: $WORLD_SIZE)."""
    args = build_parser().parse_args(argv)
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    dp = validation.data_parallel_size(world, tp, pp)
    micro = args.micro_batch_size
    global_batch = args.global_batch_size or micro * dp
    validation.check_global_batch(global_batch, micro, dp, world, tp, pp)
    train_samples = validation.samples(args.train_iters, args.train_samples, global_batch, "train")
    if not train_samples:
        raise ConfigError("give --train-iters or --train-samples")
    if args.eval_tasks is None and (args.eval_tasks_interval is not None or args.eval_tasks_length_normalize):
        raise ConfigError("--eval-tasks-interval and --eval-tasks-length-normalize need --eval-tasks FILE_OR_DIR")
    if args.eval_tasks is None and args.eval_tasks_prepend_bos:
        raise ConfigError("--eval-tasks-prepend-bos needs --eval-tasks FILE_OR_DIR")
    if args.save_retain is not None and args.save_retain < 1:
        raise ConfigError(f"--save-retain {args.save_retain}: keep at least 1 checkpoint")
    lora = lora_flags(args)
    deepspeed_json = read_deepspeed_json(args.deepspeed_config)
    zero_stage = args.zero_stage if args.zero_stage is not None else int(
        deepspeed_json.get("zero_optimization", {}).get("stage", 1))
    gpu = torch.cuda.is_available() or args.distributed_backend == "nccl"  # (a dry run of a GPU launch)
    warmup = validation.samples(args.lr_warmup_iters, args.lr_warmup_samples, global_batch, "lr-warmup") or 0
    if args.lr_warmup_fraction is not None:
        if warmup:
            raise ConfigError("give one of --lr-warmup-iters, --lr-warmup-samples, --lr-warmup-fraction")
        warmup = int(args.lr_warmup_fraction * train_samples)
    try:
        data = data_config_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    train = TrainConfig(
        model=ModelConfig(
            num_layers=args.num_layers, hidden_size=args.hidden_size, num_heads=args.num_attention_heads,
            init_method_std=args.init_method_std, make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            pad_vocab_size_to=args.pad_vocab_size_to, checkpoint_activations=args.checkpoint_activations,
            tokenizer=args.tokenizer_name_or_path, family=model_family(args), architecture=architecture_flags(args),
            hidden_dropout=args.hidden_dropout,
            attention_dropout=args.attention_dropout, prefix_lm=args.prefix_lm,
            attention_backend=attention_backend(args.attention_backend, args.attention_dropout, gpu),
            lm_head_loss=args.lm_head_loss if args.lm_head_loss != "auto" else ("chunked" if gpu else "reference"),
            bias_gelu_fusion=gpu if args.bias_gelu_fusion is None else args.bias_gelu_fusion,
            bias_dropout_fusion=gpu if args.bias_dropout_fusion is None else args.bias_dropout_fusion,
        ),
        parallel=ParallelConfig(tensor=tp, pipeline=pp, data=dp, zero_stage=zero_stage,
                                partition_method=args.pp_partition_method,
                                timeout_minutes=args.distributed_timeout_minutes, backend=args.distributed_backend),
        batch=BatchConfig(micro=micro, global_batch=global_batch, gradient_accumulation=global_batch // (micro * dp),
                          train_samples=train_samples, num_workers=args.num_workers),
        optimizer=OptimizerConfig(
            lr=args.lr, min_lr=args.min_lr, beta1=args.adam_beta1, beta2=args.adam_beta2, eps=args.adam_eps,
            weight_decay=args.weight_decay, clip_grad=args.clip_grad, decay_style=args.lr_decay_style,
            warmup_samples=warmup,
            decay_samples=validation.samples(args.lr_decay_iters, args.lr_decay_samples, global_batch,
                                             "lr-decay") or train_samples,
        ),
        checkpoint=CheckpointConfig(save=args.save, save_interval=args.save_interval, load=args.load,
                                    no_load_optim=args.no_load_optim, no_load_rng=args.no_load_rng,
                                    reset_progress=args.reset_progress, finetune=args.finetune,
                                    fallback=args.checkpoint_fallback, universal=args.universal_checkpoint,
                                    save_retain=args.save_retain),
        logging=LoggingConfig(log_interval=args.log_interval, eval_interval=args.eval_interval,
                              eval_iters=args.eval_iters, tensorboard_dir=args.tensorboard_dir,
                              exit_interval=args.exit_interval, exit_duration_minutes=args.exit_duration_in_mins,
                              kill_switch_path=args.kill_switch_path, exit_signal_handler=args.exit_signal_handler,
                              wandb=wandb_config(args)),
        data=data,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        seed=args.seed,
        norm_target_loss=args.norm_target_loss,
        nonfinite_loss=args.nonfinite_loss,
        deepspeed_config=args.deepspeed_config,
        deepspeed_json=deepspeed_json,
        dry_run=args.dry_run,
        eval_tasks=None if args.eval_tasks is None else EvalTasksConfig(
            path=args.eval_tasks,
            interval=args.eval_interval if args.eval_tasks_interval is None else args.eval_tasks_interval,
            length_normalize=args.eval_tasks_length_normalize, prepend_bos=args.eval_tasks_prepend_bos),
        lora=lora,
    )
    validation.validate(train)
    return train
