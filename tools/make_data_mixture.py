#!/usr/bin/env python3
"""Write the data-mixture files of a multilingual run from its preprocessed datasets: the
training group (one entry per dataset, weighted by its preprocessed bytes, or by bytes^(1/T) with
`--temperature T`) and one validation group per dataset on its held-out tail, for finetune_xp3.py's
`--train-weighted-split-paths-path` and `--valid-weighted-split-paths-path`; with
`--budget-tokens N`, each dataset's share of a run of N tokens, its training pairs and the epochs
of them it will see (oversampled small languages show before a launch):

    python tools/make_data_mixture.py data/xp3_ak data/xp3_ar ... data/xp3_zu \\
        --train-output data/xp3_train.txt --valid-output data/xp3_valid.txt --valid-fraction 0.01 \\
        --temperature 3.3 --budget-tokens 13e9
"""

from __future__ import annotations

import argparse
import shlex
import sys

from megatron.data.indexed_dataset import IndexedDatasetError
from megatron.data.mixture import budget, measure, train_group, valid_groups, weights
from megatron.utils.atomic_files import write_atomically


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="+", metavar="PREFIX",
                        help="pairs datasets (PREFIX_inputs_document / PREFIX_targets_document)")
    parser.add_argument("--train-output", required=True, help="the training mixture file")
    parser.add_argument("--valid-output", default=None, help="the validation groups file")
    parser.add_argument("--valid-fraction", type=float, default=0.0,
                        help="the last fraction of each dataset's pairs kept for validation")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="weights proportional to size^(1/T): 1 (default) is xP3's by-size mixture; larger T "
                             "samples small languages more (mT5: alpha 0.3, T of about 3.3)")
    parser.add_argument("--budget-tokens", type=float, default=None, metavar="N",
                        help="print each dataset's share of a run of N tokens (about train-samples x seq-length), "
                             "its training pairs and how many epochs of them it sees")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        parser.error(f"--temperature {args.temperature}: must be positive")
    if args.budget_tokens is not None and args.budget_tokens <= 0:
        parser.error(f"--budget-tokens {args.budget_tokens:g}: must be positive")
    if not 0 <= args.valid_fraction < 1:
        parser.error(f"--valid-fraction {args.valid_fraction}: must be in [0, 1)")
    if (args.valid_output is None) != (args.valid_fraction == 0):
        parser.error("give --valid-output and a positive --valid-fraction together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        entries = [measure(prefix) for prefix in args.prefixes]
    except (FileNotFoundError, IndexedDatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_atomically(args.train_output,
                     shlex.quote(train_group(entries, args.valid_fraction, args.temperature)) + "\n")
    shares = weights(entries, args.temperature)
    for e, share in zip(entries, shares):
        print(f"{e.name}: {e.pairs:,} pairs, {e.bytes / 2**20:,.1f} MiB, weight {share:.4%}")
    print(f"wrote {args.train_output}: {len(entries)} datasets, temperature {args.temperature:g}")
    if args.budget_tokens is not None:
        print(f"a run of {args.budget_tokens:,.0f} tokens sees:")
        for name, share, pairs, epochs in budget(entries, shares, args.valid_fraction, int(args.budget_tokens)):
            print(f"  {name}: {share:.4%} of the tokens, {pairs:,} training pairs, {epochs:.2f} epochs")
    if args.valid_output:
        groups, left_out = valid_groups(entries, args.valid_fraction)
        write_atomically(args.valid_output, "".join(shlex.quote(g) + "\n" for g in groups))
        print(f"wrote {args.valid_output}: {len(groups)} validation groups"
              + (f"; too small to hold out any pair: {', '.join(left_out)}" if left_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
