#!/usr/bin/env python3
"""Benchmark of packing: efficiency (non-pad tokens / all tokens) of the greedy and best-fit
strategies, and the time to build the packing index of one epoch (shuffle, pack in C++, shuffle
rows: `megatron.data.packing.pack_epochs`) for many pairs.

Lengths follow xP3 (`synthetic.corpus.xp3_like_pair_lengths`): log-normal inputs
(median 100 tokens, sigma 1: a long tail), targets mostly 1-20 tokens (10% longer, up to 200).

    python bench/packing.py --pairs 10000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from synthetic.corpus import xp3_like_pair_lengths
from megatron.data.packing import PackingConfig, pack_epochs, packing_efficiency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[2048, 512])
    args = parser.parse_args()

    inputs, targets = xp3_like_pair_lengths(args.pairs)
    print(f"{args.pairs:,} pairs; input median {np.median(inputs):.0f} tokens, "
          f"p99 {np.percentile(inputs, 99):.0f}; target median {np.median(targets):.0f}")
    print(f"{'seq_length':>10} {'strategy':>9} {'rows':>11} {'efficiency':>11} {'skipped':>9} {'build s':>8}")
    for seq_length in args.seq_lengths:
        efficiency = {}
        for strategy in ("greedy", "best_fit"):
            config = PackingConfig(seq_length, strategy)
            start = time.perf_counter()
            index = pack_epochs(inputs, targets, config, num_samples=1, name="bench")
            seconds = time.perf_counter() - start
            kept = index["input_lengths"]
            rows = len(index["offsets"]) - 1
            efficiency[strategy] = packing_efficiency(kept, targets, index["pairs"], rows, config.capacity)
            print(f"{seq_length:>10} {strategy:>9} {rows:>11,} {100 * efficiency[strategy]:>10.2f}% "
                  f"{int((kept == 0).sum()):>9,} {seconds:>8.2f}")
        print(f"{'':>10} best_fit wastes {(1 - efficiency['best_fit']) / (1 - efficiency['greedy']):.3f}x "
              f"the pad tokens of greedy")


if __name__ == "__main__":
    main()
