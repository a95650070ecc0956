#!/usr/bin/env python3
"""Convert one of our checkpoints (any TP/PP: what training saves, or what hf_to_megatron.py
wrote) into a HF folder that `AutoModelForCausalLM.from_pretrained` loads as the checkpoint's
family's class (`BloomForCausalLM`, `LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`),
with its rope configuration, tying, biases and the true vocabulary:

    python tools/convert_checkpoint/megatron_to_hf.py --checkpoint-dir checkpoints/run1 \\
        --output-dir bloomz-run1-hf --tokenizer-dir bloom-560m --max-shard-size 2GB

Merges tensor-parallel shards (checking that replicated tensors agree), removes the vocabulary
padding, writes safetensors sharded by size, config.json and the tokenizer files.

A LoRA checkpoint (adapters only) is exported one of two ways (without either it is refused,
exit status 2):

    --lora-format peft   the adapters as a HF PEFT adapter folder (adapter_config.json +
                         adapter_model.safetensors) for `PeftModel.from_pretrained` on the HF base
                         (--base-model-name-or-path: what its config names as the base);
    --merge-lora         the model: the base checkpoint it records plus each adapter's B @ A x scaling,
                         in the base weight's dtype."""

from __future__ import annotations

import argparse
import re
import sys

from megatron.checkpoint.conversion import convert_megatron_to_hf
from megatron.checkpoint.layout import CheckpointError
from megatron.checkpoint.metadata import read_metadata
from megatron.checkpoint.peft_format import export_peft_adapter
from megatron.models import get_model_spec

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2GB or 500MB")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True, help="our checkpoint (the folder with `latest`)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--tokenizer-dir", default=None, help="copy the tokenizer files from here")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("2GB"))
    lora = parser.add_mutually_exclusive_group()
    lora.add_argument("--lora-format", choices=["peft"], default=None,
                      help="a LoRA checkpoint's adapters as a HF PEFT adapter folder")
    lora.add_argument("--merge-lora", action="store_true",
                      help="a LoRA checkpoint merged into the base checkpoint it records, as a HF model")
    parser.add_argument("--base-model-name-or-path", default=None,
                        help="with --lora-format peft: the HF base model adapter_config.json names")
    args = parser.parse_args(argv)
    try:
        meta = read_metadata(args.checkpoint_dir)
        spec = get_model_spec(meta.family)
        if meta.lora is None and (args.lora_format or args.merge_lora):
            print(f"error: {args.checkpoint_dir} holds a model, not LoRA adapters: export it without "
                  "--lora-format/--merge-lora", file=sys.stderr)
            return 2
        if meta.lora is not None and not (args.lora_format or args.merge_lora):
            print(f"error: {args.checkpoint_dir} holds LoRA adapters only: export them with --lora-format peft, "
                  "or merged into their base with --merge-lora", file=sys.stderr)
            return 2
        if args.lora_format == "peft":
            out = export_peft_adapter(args.checkpoint_dir, args.output_dir, spec, args.base_model_name_or_path)
        else:
            out = convert_megatron_to_hf(args.checkpoint_dir, args.output_dir, spec, args.tokenizer_dir,
                                         args.max_shard_size, merge_lora=args.merge_lora)
    except (CheckpointError, ValueError, FileNotFoundError) as error:  # also replicated shards that disagree
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
