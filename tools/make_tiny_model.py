#!/usr/bin/env python3
"""Write a small randomly initialised HF model (a `BloomForCausalLM`, or with `--family llama` a
`LlamaForCausalLM`: grouped-query attention, untied LM head, llama3 rope scaling) folder with the
tokenizer over a local tokenizer: the "pretrained" starting point of the CPU demo. Nothing is
downloaded.

    python tools/make_tiny_model.py --tokenizer-dir demo/tokenizer --output-dir demo/bloom-tiny \\
        --hidden-size 128 --num-layers 4 --num-attention-heads 8
    python tools/make_tiny_model.py --family llama --tokenizer-dir demo/tokenizer \\
        --output-dir demo/llama-tiny --num-key-value-heads 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig

from megatron.checkpoint.conversion import copy_tokenizer_files
from megatron.data.tokenizer import HFTokenizer
from megatron.utils.atomic_files import atomic_folder


def hf_config(args: argparse.Namespace, tokenizer: HFTokenizer):
    tokens = dict(bos_token_id=tokenizer.eod, eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad)
    if args.family == "bloom":
        return BloomConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden_size, n_layer=args.num_layers,
                           n_head=args.num_attention_heads, hidden_dropout=0.0, attention_dropout=0.0, **tokens)
    return LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
                       num_attention_heads=args.num_attention_heads, num_key_value_heads=args.num_key_value_heads,
                       intermediate_size=int(8 * args.hidden_size / 3 / 32) * 32, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 128},
                       max_position_embeddings=1024, rms_norm_eps=1e-5, **tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["bloom", "llama"], default="bloom")
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-attention-heads", type=int, default=8)
    parser.add_argument("--num-key-value-heads", type=int, default=4, help="llama: grouped-query attention's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = HFTokenizer(args.tokenizer_dir)
    torch.manual_seed(args.seed)
    config = hf_config(args, tokenizer)
    out = Path(args.output_dir)
    with atomic_folder(out) as tmp:
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        copy_tokenizer_files(args.tokenizer_dir, tmp)
    print(f"wrote {out}: a random {args.num_layers}-layer {'BLOOM' if args.family == 'bloom' else 'Llama'}, "
          f"hidden {args.hidden_size}")


if __name__ == "__main__":
    main()
