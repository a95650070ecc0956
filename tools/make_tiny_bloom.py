#!/usr/bin/env python3
"""Write a small randomly initialised HF BLOOM (`BloomForCausalLM` folder with the tokenizer) over
a local tokenizer: the "pretrained" starting point of the CPU demo. Nothing is downloaded.

    python tools/make_tiny_bloom.py --tokenizer-dir demo/tokenizer --output-dir demo/bloom-tiny \\
        --hidden-size 128 --num-layers 4 --num-attention-heads 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import BloomConfig, BloomForCausalLM

from megatron.checkpoint.conversion import copy_tokenizer_files
from megatron.data.tokenizer import HFTokenizer
from megatron.utils.atomic_files import atomic_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-attention-heads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = HFTokenizer(args.tokenizer_dir)
    torch.manual_seed(args.seed)
    config = BloomConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden_size, n_layer=args.num_layers,
                         n_head=args.num_attention_heads, bos_token_id=tokenizer.eod, eos_token_id=tokenizer.eod,
                         pad_token_id=tokenizer.pad, hidden_dropout=0.0, attention_dropout=0.0)
    out = Path(args.output_dir)
    with atomic_folder(out) as tmp:
        BloomForCausalLM(config).save_pretrained(tmp)
        copy_tokenizer_files(args.tokenizer_dir, tmp)
    print(f"wrote {out}: a random {args.num_layers}-layer BLOOM, hidden {args.hidden_size}")


if __name__ == "__main__":
    main()
