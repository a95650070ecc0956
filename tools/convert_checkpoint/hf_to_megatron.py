#!/usr/bin/env python3
"""Convert a HF model folder (config.json + safetensors or .bin, sharded or not) into our
checkpoint at any tensor/pipeline size, to start finetuning from a pretrained model. The family
comes from config.json's `model_type`: BLOOM (`bloom`) or the Llama family (`llama`, `qwen2`,
`mistral`); a config field whose maths is not implemented is refused by name (exit status 2;
other bad inputs exit 1):

    python tools/convert_checkpoint/hf_to_megatron.py --hf-dir bloom-560m \\
        --output-dir checkpoints/bloom-560m-tp2-pp2 --target-tp 2 --target-pp 2

Streams one layer at a time; the output folder appears only when complete.

With --lora-dir, a HF PEFT LoRA adapter for the model in --hf-dir (its base: the config it is
read against) becomes one of our LoRA checkpoints at the target layout, for
`finetune_xp3.py --load BASE_CONVERTED --lora-load OUTPUT`; PEFT settings whose maths is not
implemented here (DoRA, biases, rank/alpha patterns, some layers only, modules that are not our
targets, different A's or only some of q/k/v or gate/up of one fused layer) are refused by name
(exit status 2):

    python tools/convert_checkpoint/hf_to_megatron.py --hf-dir llama-base --lora-dir my-peft-adapter \
        --output-dir checkpoints/adapter-tp2 --target-tp 2"""

from __future__ import annotations

import argparse
import sys

from megatron.checkpoint.conversion import convert_hf_to_megatron
from megatron.checkpoint.hf_reader import spec_of_hf_folder
from megatron.checkpoint.layout import CheckpointError
from megatron.models.spec import UnsupportedConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", required=True, help="a local HF model folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--target-tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--target-pp", type=int, default=1, help="pipeline-parallel size")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="pad the vocabulary to a multiple of this x TP (Megatron's rule)")
    parser.add_argument("--pad-vocab-size-to", type=int, default=None,
                        help="pad the vocabulary to exactly this size instead")
    parser.add_argument("--lora-dir", default=None,
                        help="convert this HF PEFT LoRA adapter (for the model in --hf-dir) instead of the model")
    args = parser.parse_args(argv)
    try:
        spec = spec_of_hf_folder(args.hf_dir)
        out = convert_hf_to_megatron(args.hf_dir, args.output_dir, spec, args.target_tp, args.target_pp,
                                     args.make_vocab_size_divisible_by, args.pad_vocab_size_to, args.lora_dir)
    except UnsupportedConfig as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    what = "LoRA adapters" if args.lora_dir else "family"
    print(f"wrote {out}: {spec.name} {what}, TP={args.target_tp}, PP={args.target_pp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
