#!/usr/bin/env python3
"""Greedy generations of one or more HF model folders (BLOOM or the Llama family) for the first
prompts of an xP3-style jsonl, side by side with the expected targets: how the CPU demo shows
before/after finetuning.

    python tools/generate.py --input demo/xp3_demo_valid.jsonl --num-prompts 6 \\
        --model before=demo/bloom-tiny --model after=demo/bloomz-tiny
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM

from megatron.data.tokenizer import HFTokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="jsonl with inputs and targets")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--num-prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--prepend-bos", action="store_true",
                        help="the tokenizer's BOS before each prompt, as tools/preprocess_data.py --prepend-bos inputs "
                             "put it in the training data (Llama 3)")
    args = parser.parse_args(argv)

    with open(args.input, encoding="utf-8") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(args.num_prompts))]
    models = dict(spec.split("=", 1) for spec in args.model)
    tokenizer = HFTokenizer(next(iter(models.values())))
    try:
        bos = [tokenizer.require_bos("--prepend-bos")] if args.prepend_bos else []
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    outputs = {name: [] for name in models}
    for name, folder in models.items():
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        for row in rows:
            prompt = torch.tensor([bos + tokenizer.encode(row["inputs"])])
            with torch.no_grad():
                generated = model.generate(prompt, max_new_tokens=args.max_new_tokens, do_sample=False,
                                           eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad)
            new = [t for t in generated[0, prompt.shape[1]:].tolist() if t != tokenizer.eod]
            outputs[name].append(tokenizer.decode(new).strip())
    for i, row in enumerate(rows):
        print(f"--- {row.get('task', '')} ({row.get('language', '')})\n  prompt:   {row['inputs']!r}\n"
              f"  expected: {row['targets']!r}")
        for name in models:
            print(f"  {name + ':':9} {outputs[name][i]!r}")


if __name__ == "__main__":
    main()
