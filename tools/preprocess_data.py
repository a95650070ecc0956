#!/usr/bin/env python3
"""Tokenize xP3-style jsonl into Megatron indexed datasets (`{prefix}_{key}_document.{bin,idx}`).

xP3 use, one pass writing both datasets:
    python tools/preprocess_data.py --input data/xp3_fr.jsonl --json-keys inputs targets \\
        --prepend-space targets --append-eod targets \\
        --tokenizer-name-or-path bigscience/tokenizer-folder --output-prefix out/xp3_fr --workers 8

For a tokenizer that expects its BOS token (Llama 3), add `--prepend-bos inputs`.
"""

from __future__ import annotations

import argparse
import sys

from megatron.data.indexed_dataset import IndexedDatasetError
from megatron.data.preprocess import BadRowError, KeySpec, PreprocessConfig, preprocess


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input")
    group.add_argument("--input", nargs="+", required=True,
                       help="jsonl / jsonl.gz files, folders (searched recursively) or globs")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="keys to tokenize, one output dataset each (default: text)")
    group.add_argument("--skip-bad-rows", action="store_true",
                       help="skip unusable rows and count them by reason instead of stopping")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-name-or-path", required=True,
                       help="a local HF tokenizer folder or tokenizer.json (nothing is downloaded)")
    group.add_argument("--tokenizer-type", default="PretrainedFromHF", choices=["PretrainedFromHF"],
                       help="accepted for Megatron-DeepSpeed scripts; only PretrainedFromHF exists")
    group.add_argument("--append-eod", nargs="*", metavar="KEY",
                       help="append the end-of-document token; alone: to every key, "
                            "with keys: to those only (xP3: --append-eod targets)")
    group.add_argument("--prepend-space", nargs="*", metavar="KEY",
                       help="prepend a space before tokenizing; alone: to every key, "
                            "with keys: to those only (xP3: --prepend-space targets)")
    group.add_argument("--prepend-bos", nargs="*", metavar="KEY",
                       help="put the tokenizer's beginning-of-sequence token first; alone: in every key, "
                            "with keys: in those only (xP3 for Llama 3: --prepend-bos inputs)")
    group = parser.add_argument_group("output")
    group.add_argument("--output-prefix", required=True,
                       help="writes {prefix}_{key}_document.bin/.idx per key")
    group.add_argument("--dataset-impl", default="mmap", choices=["mmap"],
                       help="accepted for Megatron scripts; the format is always mmap (MMIDIDX)")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    group.add_argument("--log-interval", type=int, default=10000,
                       help="report progress every this many documents (0: never)")
    args = parser.parse_args(argv)

    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if len(set(args.json_keys)) != len(args.json_keys):
        parser.error(f"--json-keys names a key twice: {args.json_keys}")
    for flag in ("append_eod", "prepend_space", "prepend_bos"):
        unknown = set(getattr(args, flag) or []) - set(args.json_keys)
        if unknown:
            parser.error(f"--{flag.replace('_', '-')} names {sorted(unknown)}, "
                         f"which are not among --json-keys {args.json_keys}")
    return args


def applies_to(selection: list[str] | None, key: str) -> bool:
    """A per-key flag: absent (None) applies to no key, bare ([]) to all, else to those named."""
    return selection is not None and (not selection or key in selection)


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    keys = [KeySpec(key, applies_to(args.prepend_space, key), applies_to(args.append_eod, key),
                    applies_to(args.prepend_bos, key))
            for key in args.json_keys]
    return PreprocessConfig(inputs=args.input, keys=keys, tokenizer=args.tokenizer_name_or_path,
                            output_prefix=args.output_prefix, workers=args.workers,
                            skip_bad_rows=args.skip_bad_rows, log_interval=args.log_interval)


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(parse_args(argv))
    try:
        summary = preprocess(config)
    except (BadRowError, FileNotFoundError, IndexedDatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        print("no output written", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
