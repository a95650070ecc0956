#!/usr/bin/env python3
"""Zero-shot accuracy of a model on prompted multiple-choice examples (`tools/make_eval_prompts.py`)
by rank classification, as the BLOOMZ paper reports it: the median over prompts per dataset and
language, the mean over languages, BLOOM's seen and unseen languages apart (docs/evaluation.md), or
with --finetuned-languages the languages each task was finetuned in and the held-out ones apart.

One of our checkpoints, at the TP x PP the flags give, data-parallel over the examples:

    torchrun --nproc-per-node 4 tools/evaluate.py --checkpoint-dir checkpoints/bloomz-560m \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 \\
        --tokenizer-name-or-path bloom-560m --tasks eval_tasks/ --output-json accuracy.json \\
        --per-example-output scores.jsonl --plot accuracy.png

or a HF model folder (BLOOM or the Llama family) with transformers (the reference; one process):
`--hf-dir bloomz-560m`. A LoRA checkpoint is scored on the base checkpoint it records, its
adapters attached.
The choices of all examples are packed as (inputs, choice) pairs into rows of --seq-length, so one
forward pass scores many of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from megatron.checkpoint.conversion import base_of_adapters
from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.layout import CheckpointError
from megatron.checkpoint.metadata import read_metadata
from megatron.data.tokenizer import HFTokenizer
from megatron.evaluation.accuracy import format_table
from megatron.evaluation.choice_rows import EncodedChoices
from megatron.evaluation.examples import ExampleError, read_examples
from megatron.models import get_model_spec
from megatron.models.common.parallel_config import model_parallel_config
from megatron.models.spec import with_options
from megatron.train.arguments import attention_backend
from megatron.train.distributed import start_processes
from megatron.train.engine import add_adapters, load_weights
from megatron.train.errors import ConfigError
from megatron.train.task_eval import ZeroShotTasks, score_pairs
from megatron.train.validation import check_layout, data_parallel_size
from megatron.utils.atomic_files import atomic_file, write_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--tasks", required=True, metavar="FILE_OR_DIR", help="multiple-choice examples (jsonl)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint-dir", help="one of our checkpoints (the tag 'latest' names)")
    model.add_argument("--hf-dir", help="a HF model folder, scored with transformers (AutoModelForCausalLM)")
    parser.add_argument("--tokenizer-name-or-path", required=True)
    parser.add_argument("--length-normalize", action="store_true",
                        help="score a choice by its mean token log-probability (default: the sum, t-zero's rule)")
    parser.add_argument("--prepend-bos", action="store_true",
                        help="put the tokenizer's BOS token before each example's inputs, as data preprocessed "
                             "with --prepend-bos inputs have it (Llama 3); --hf-dir gets the same tokens")
    parser.add_argument("--seq-length", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--micro-batch-size", type=int, default=4,
                        help="packed rows per forward pass (with --hf-dir: pairs per forward pass)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true")
    precision.add_argument("--fp16", action="store_true")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--pp-partition-method", default="type:transformer|embedding")
    parser.add_argument("--attention-backend", choices=["auto", "reference", "flex", "triton"], default="auto",
                        help="auto: flex on GPUs, reference on CPU (no dropout at evaluation)")
    parser.add_argument("--distributed-backend", choices=["nccl", "gloo"], default=None)
    parser.add_argument("--distributed-timeout-minutes", type=float, default=10.0)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    output = parser.add_argument_group("output")
    output.add_argument("--output-json", help="the aggregates (accuracy per prompt, medians, means)")
    output.add_argument("--per-example-output", help="jsonl: id, dataset, language, prompt, scores, prediction, label")
    output.add_argument("--plot", metavar="FILE.png", help="a bar chart of accuracy per dataset and language")
    output.add_argument("--baseline", metavar="JSON", help="another run's --output-json, shown beside (before/after)")
    output.add_argument("--finetuned-languages", metavar="JSON",
                        help='{"dataset": ["language", ...]}: the languages each dataset\'s task was finetuned in; '
                             "the table, means and plot then split languages into those and the held-out ones "
                             "(instead of BLOOM's pretraining languages)")
    return parser


def _precision(args) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def hf_pair_scores(folder: str, encoded: EncodedChoices, micro: int, dtype: torch.dtype) -> np.ndarray:
    """Every pair's summed log-probability under transformers' model, pairs unpacked (right-padded
    batches of `micro` pairs)."""
    from transformers import AutoModelForCausalLM
    from tqdm import tqdm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=dtype).to(device).eval()
    sums = np.zeros(encoded.num_pairs)
    for start in tqdm(range(0, encoded.num_pairs, micro), desc="scoring", unit="batch"):
        pairs = range(start, min(start + micro, encoded.num_pairs))
        sequences = [np.concatenate([encoded.inputs[p], encoded.choices[p]]) for p in pairs]
        width = max(len(s) for s in sequences)
        tokens = torch.zeros(len(sequences), width, dtype=torch.long)
        attention = torch.zeros(len(sequences), width, dtype=torch.long)
        for i, sequence in enumerate(sequences):
            tokens[i, :len(sequence)] = torch.from_numpy(sequence)
            attention[i, :len(sequence)] = 1
        with torch.no_grad():
            logits = model(input_ids=tokens.to(device), attention_mask=attention.to(device)).logits
        for i, p in enumerate(pairs):  # the log-softmax of the positions before the choice tokens only
            begin, end = len(encoded.inputs[p]), len(sequences[i])
            log_probs = torch.log_softmax(logits[i, begin - 1:end - 1].float(), dim=-1).cpu()
            sums[p] = log_probs.gather(1, tokens[i, begin:end, None]).double().sum().item()
    return sums


def checkpoint_pair_scores(args, tasks: ZeroShotTasks, vocab_size: int) -> np.ndarray:
    """Every pair's summed log-probability under our checkpoint at TP x PP x DP (this process's
    part; all ranks return all of them)."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    dp = data_parallel_size(int(os.environ.get("WORLD_SIZE", "1")), tp, pp)
    try:
        meta = read_metadata(args.checkpoint_dir)
        spec = get_model_spec(meta.family)
        reader = CheckpointReader(args.checkpoint_dir, spec)
        if meta.lora is not None:  # adapters only: on the base they record
            adapters, reader = reader, base_of_adapters(args.checkpoint_dir, spec)
    except CheckpointError as error:
        raise ConfigError(f"--checkpoint-dir {error}") from None
    gpu = torch.cuda.is_available()
    options = dict(hidden_dropout=0.0, attention_dropout=0.0, lm_head_loss="reference",
                   attention_backend=attention_backend(args.attention_backend, 0.0, gpu), bias_gelu_fusion=gpu,
                   bias_dropout_fusion=gpu)
    config = with_options(reader.config, **options)
    if vocab_size > config.vocab_size:
        raise ConfigError(f"--tokenizer-name-or-path has {vocab_size} tokens, more than the checkpoint's "
                          f"embedding ({config.vocab_size} rows)")
    check_layout(spec, config, tp, pp, args.pp_partition_method)
    try:
        config.check_sequence_length(args.seq_length)
    except ValueError as error:
        raise ConfigError(f"--checkpoint-dir {args.checkpoint_dir}: {error}") from None
    start_processes(tp, pp, args.distributed_backend, args.distributed_timeout_minutes)
    module = spec.build_pipeline(config, model_parallel_config(torch.float32, device="cpu"), dp,
                                 args.pp_partition_method, False, False)
    load_weights(module, spec, reader.layer, is_pipeline=True)
    if meta.lora is not None:
        add_adapters(module, spec, config, meta.lora, seed=0, is_pipeline=True)
        load_weights(module, spec, adapters.layer, is_pipeline=True, adapters_only=True)
    engine, *_ = deepspeed.initialize(model=module, config={
        "train_micro_batch_size_per_gpu": args.micro_batch_size, "train_batch_size": args.micro_batch_size * dp,
        "zero_optimization": {"stage": 0}, "bf16": {"enabled": args.bf16}, "fp16": {"enabled": args.fp16},
        "steps_per_print": 10**9})
    return score_pairs(engine, tasks.rows, args.micro_batch_size, show_progress=dist.get_rank() == 0)


def _read_json(flag: str, path: str):
    """The JSON value in the file a flag names; an unreadable or invalid file is a ConfigError."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{flag} {path}: {error}") from None


def read_baseline(path: str | None) -> dict | None:
    """Another run's --output-json, checked before any scoring."""
    if path is None:
        return None
    baseline = _read_json("--baseline", path)
    if not isinstance(baseline, dict) or not isinstance(baseline.get("median_over_prompts"), dict):
        raise ConfigError(f"--baseline {path}: not an --output-json of tools/evaluate.py (no median_over_prompts)")
    return baseline


def read_finetuned_languages(path: str | None, datasets: set[str]) -> dict[str, list[str]] | None:
    """--finetuned-languages: every evaluated dataset with its list of language codes."""
    if path is None:
        return None
    listed = _read_json("--finetuned-languages", path)
    if not isinstance(listed, dict) or not all(
            isinstance(codes, list) and all(isinstance(code, str) for code in codes) for codes in listed.values()):
        raise ConfigError(f'--finetuned-languages {path}: not a JSON object {{"dataset": ["language", ...]}}')
    missing = sorted(datasets - set(listed))
    if missing:
        raise ConfigError(f"--finetuned-languages {path}: no entry for the evaluated datasets {', '.join(missing)}")
    return listed


def write_outputs(args, tasks: ZeroShotTasks, pair_scores: np.ndarray, baseline: dict | None) -> None:
    results = tasks.results(pair_scores)
    report = {"model": args.checkpoint_dir or args.hf_dir, "tasks": args.tasks,
              "scoring": "mean log-probability" if args.length_normalize else "summed log-probability",
              "tokenization": tasks.encoded.tokenization, "seq_length": args.seq_length,
              "truncated_pairs": tasks.encoded.truncated_pairs, **results.report}
    print(format_table(report, baseline))
    print(f"average over datasets: {report['average']:.4f} ({report['examples']} examples, "
          f"{tasks.encoded.num_pairs} choices in {len(tasks.rows)} rows; {report['scoring']})")
    print(f"tokenization: {report['tokenization']}")
    if tasks.encoded.truncated_pairs:
        print(f"note: {tasks.encoded.truncated_pairs} (inputs, choice) pairs longer than --seq-length "
              f"{args.seq_length} kept their last input tokens")
    for path in (args.output_json, args.per_example_output, args.plot):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.output_json:
        write_atomically(args.output_json, json.dumps(report, indent=2) + "\n")
    if args.per_example_output:
        write_atomically(args.per_example_output, "".join(
            json.dumps({"id": e.id, "dataset": e.dataset, "language": e.language, "prompt": e.prompt,
                        "scores": scores, "prediction": prediction, "label": e.label}, ensure_ascii=False) + "\n"
            for e, scores, prediction in zip(tasks.examples, results.scores, results.predictions)))
    if args.plot:
        from megatron.evaluation.plot import plot_accuracy

        with atomic_file(args.plot) as partial:
            plot_accuracy(report, partial, f"zero-shot accuracy of {Path(report['model']).name}", baseline)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tokenizer = HFTokenizer(args.tokenizer_name_or_path)
        examples = read_examples(args.tasks)
        finetuned = read_finetuned_languages(args.finetuned_languages, {example.dataset for example in examples})
        tasks = ZeroShotTasks(examples, tokenizer, args.seq_length, args.length_normalize,
                              prepend_bos=args.prepend_bos, finetuned_languages=finetuned)
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--plot needs matplotlib: pip install -e '.[plot]'")
        baseline = read_baseline(args.baseline)
        if args.hf_dir:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ConfigError("--hf-dir runs in one process (transformers); launch it without torchrun")
            pair_scores = hf_pair_scores(args.hf_dir, tasks.encoded, args.micro_batch_size, _precision(args))
        else:
            pair_scores = checkpoint_pair_scores(args, tasks, tokenizer.vocab_size)
    except (ConfigError, ExampleError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_outputs(args, tasks, pair_scores, baseline)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
