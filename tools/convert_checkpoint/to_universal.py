#!/usr/bin/env python3
"""Make a DeepSpeed universal checkpoint of one of our training checkpoints (ZeRO-1, any TP/PP/DP),
to resume it at another layout with `--load DIR --universal-checkpoint`:

    python tools/convert_checkpoint/to_universal.py --checkpoint-dir checkpoints/run1 [--tag global_step400]

Writes `DIR/TAG_universal` with DeepSpeed's own converter (`python -m
deepspeed.checkpoint.ds_to_universal`), our progress.json and a manifest, then `DIR/latest_universal`;
nothing is left behind if any step fails."""

from __future__ import annotations

import argparse
import sys

from megatron.checkpoint.layout import CheckpointError
from megatron.checkpoint.universal import make_universal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True, help="our checkpoint folder (with `latest`)")
    parser.add_argument("--tag", default=None, help="default: the checkpoint `latest` names")
    args = parser.parse_args(argv)
    try:
        out = make_universal(args.checkpoint_dir, args.tag)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}; resume it with --load {args.checkpoint_dir} --universal-checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
