#!/usr/bin/env python3
"""Multitask finetuning on packed xP3 data (BLOOM -> BLOOMZ, and the same recipe for the Llama
family: Llama 3.x, Qwen2.5, Mistral) with tensor (Megatron), pipeline (DeepSpeed PipelineModule)
and data (ZeRO) parallelism. The family comes from `--load`'s checkpoint, or for a random model
from Megatron's architecture flags. Launch with `torchrun` or the `deepspeed` launcher; gloo on
CPU, NCCL on GPUs. Flags are Megatron's (docs/finetuning.md):

    torchrun --nproc-per-node 2 finetune_xp3.py --tensor-model-parallel-size 2 \\
        --load checkpoints/bloom-560m-tp2 --save checkpoints/bloomz-560m \\
        --tokenizer-name-or-path bloom-560m --seq-length 2048 --micro-batch-size 1 \\
        --global-batch-size 1024 --train-iters 1000 --lr 2e-5 --lr-decay-style constant \\
        --train-weighted-split-paths-path train.txt --valid-weighted-split-paths-path valid.txt \\
        --norm-target-loss --deepspeed --deepspeed_config ds_config.json
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch.distributed as dist

from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.metadata import CheckpointMetadata
from megatron.data.mtf_datasets import build_group
from megatron.data.tokenizer import HFTokenizer
from megatron.evaluation.examples import ExampleError, read_examples
from megatron.models.spec import ModelSpec
from megatron.train.arguments import parse_config
from megatron.train.checkpointing import SaveFailed, free_bytes, resume, verified
from megatron.train.config import TrainConfig
from megatron.train.distributed import seed_everything, start_processes
from megatron.train.engine import TrainingEngine, add_adapters, build_module, load_weights
from megatron.train.errors import ConfigError
from megatron.train.heartbeat import Heartbeat
from megatron.train.launch_plan import checkpoint_bytes, describe
from megatron.train.load_plan import LoadPlan, model_spec, plan_load, run_metadata
from megatron.train.lora_plan import LoraPlan, lora_plan
from megatron.train.loop import NonFiniteLoss, Trainer, log
from megatron.train.progress import TrainingProgress
from megatron.train.task_eval import ZeroShotTasks
from megatron.utils.megatron_core import parallel_state


def prepare(argv: list[str] | None) -> tuple[TrainConfig, ModelSpec, LoadPlan, LoraPlan | None, CheckpointMetadata,
                                             HFTokenizer, ZeroShotTasks | None]:
    """Everything that can fail on flags or files, before any process group or model exists."""
    train = parse_config(argv)
    try:
        tokenizer = HFTokenizer(train.model.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--tokenizer-name-or-path: {error}") from None
    plan = plan_load(train)
    spec = model_spec(train, plan)
    meta = run_metadata(train, spec, plan, tokenizer.vocab_size, tokenizer.eod, tokenizer.pad)
    lora = lora_plan(train, spec, plan)
    if lora is not None:  # its checkpoints: adapters only, naming their base
        meta = dataclasses.replace(meta, lora=lora.config, lora_base=lora.base)
    tasks = None
    if train.eval_tasks:
        try:
            tasks = ZeroShotTasks(read_examples(train.eval_tasks.path), tokenizer, train.data.seq_length,
                                  train.eval_tasks.length_normalize, prepend_bos=train.eval_tasks.prepend_bos)
        except ExampleError as error:
            raise ConfigError(f"--eval-tasks {error}") from None
        except ValueError as error:  # a tokenizer without a BOS
            raise ConfigError(f"--eval-tasks-prepend-bos: {error}") from None
    return train, spec, plan, lora, meta, tokenizer, tasks


def train_from(train: TrainConfig, spec: ModelSpec, plan: LoadPlan, lora: LoraPlan | None, meta: CheckpointMetadata,
               tokenizer: HFTokenizer, progress: TrainingProgress, tasks: ZeroShotTasks | None) -> int:
    """Build, load, train and save on the started process groups; the exit status."""
    config = meta.model
    module = build_module(train, spec, config)
    pipeline = train.parallel.uses_pipeline
    if lora is not None:  # the frozen base, then the adapters: fresh, or the weights of saved ones
        load_weights(module, spec, CheckpointReader(lora.base["folder"], spec, lora.base["tag"]).layer, pipeline)
        add_adapters(module, spec, config, lora.config, train.seed, pipeline)
        if lora.adapters is not None:
            load_weights(module, spec, CheckpointReader(lora.adapters[0], spec, lora.adapters[1]).layer, pipeline, adapters_only=True)
    elif plan.kind == "weights":
        load_weights(module, spec, CheckpointReader(plan.folder, spec, plan.tag).layer, pipeline)
    engine = TrainingEngine(train, spec, module, load_universal=plan.kind == "universal")
    seed_everything(train.seed, parallel_state.get_tensor_model_parallel_rank(),
                    parallel_state.get_pipeline_model_parallel_rank())
    if plan.kind in ("resume", "universal"):  # a universal checkpoint's layout may differ: RNG from --seed
        resume(engine, plan, load_rng=plan.kind == "resume" and not train.checkpoint.no_load_rng)
    if plan.kind == "universal" and (train.checkpoint.no_load_optim or train.checkpoint.finetune):
        engine.forget_optimizer_state()
    log(f"model: {config}; from {plan.kind}" + (f" {plan.folder}/{plan.tag}" if plan.tag else "")
        + ("; RNG reseeded from --seed (a universal checkpoint's layout may differ)" if plan.kind == "universal" else "")
        + f"; TP={train.parallel.tensor} PP={train.parallel.pipeline} DP={train.parallel.data} "
          f"ZeRO-{train.parallel.zero_stage} gradient accumulation {train.batch.gradient_accumulation}")

    packing = train.data.packing(train.seed, tokenizer.bos)
    train_data = build_group(train.data.train, packing, train.batch.train_samples, tokenizer.pad,
                             train.data.cache_path)
    eval_samples = train.logging.eval_iters * train.batch.global_batch
    valid_data = {group.name: build_group(group, packing, eval_samples, tokenizer.pad, train.data.cache_path)
                  for group in train.data.valid} if train.logging.eval_iters > 0 else {}

    if train.checkpoint.save and dist.get_rank() == 0:
        need, free = checkpoint_bytes(train, spec, config, meta.lora), free_bytes(Path(train.checkpoint.save))
        if free < need:
            print(f"warning: {train.checkpoint.save} has {free / 2**30:.2f} GiB free, less than one checkpoint "
                  f"(about {need / 2**30:.2f} GiB, the dry run's estimate)", flush=True)
    trainer = Trainer(train, engine, train_data, valid_data, progress, meta, tasks)
    try:
        trainer.run()
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except SaveFailed:  # reported by the rank that hit it; nothing half-written left
        return 1
    dist.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        train, spec, plan, lora, meta, tokenizer, tasks = prepare(argv)
        if train.dry_run:
            print(describe(train, spec, plan, meta.model, meta.lora))
            return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    par = train.parallel
    start_processes(par.tensor, par.pipeline, par.backend, par.timeout_minutes, world_size=par.world_size)
    try:  # the checkpoint's checksums, each rank its share of the files
        checked = verified(train, plan)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if checked != plan:
        plan, lora = checked, lora_plan(train, spec, checked)
    progress = plan.progress or TrainingProgress()
    heartbeat = Heartbeat(lambda: progress.iteration)
    try:
        status = train_from(train, spec, plan, lora, meta, tokenizer, progress, tasks)
    except Exception as error:  # most often a collective that failed or timed out: say who is missing
        print(f"error: rank {heartbeat.rank} (host {heartbeat.host}) stopped at iteration {progress.iteration}: "
              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}; {heartbeat.silent_ranks()}",
              file=sys.stderr, flush=True)
        raise
    heartbeat.stop()
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
