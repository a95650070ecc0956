"""The data flags (Megatron's names) and what they describe: named groups of weighted dataset
ranges, from `--data-path W1 P1 W2 P2 --split 95,5,0` or from the weighted-split form that the
BLOOMZ scripts used, `--train-weighted-split-paths "train: W1 0:0.95 P1, W2 0:0.95 P2"`."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass

from megatron.data.packing import OVERLONG_POLICIES, STRATEGIES, PackingConfig


@dataclass(frozen=True)
class DatasetRange:
    """Pairs [begin * n, end * n) of the pairs dataset at `prefix`, drawn with `weight`."""

    weight: float
    prefix: str
    begin: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class DataGroup:
    name: str
    datasets: tuple[DatasetRange, ...]


@dataclass(frozen=True)
class DataConfig:
    seq_length: int
    train: DataGroup | None = None
    valid: tuple[DataGroup, ...] = ()
    strategy: str = "best_fit"
    window: int = 1024
    overlong: str = "skip"
    cache_path: str | None = None

    def packing(self, seed: int, bos_id: int | None = None) -> PackingConfig:
        """The packing of these groups; `bos_id` (the tokenizer's BOS) stays first in inputs cut
        by `--overlong-pairs truncate_inputs`."""
        return PackingConfig(self.seq_length, self.strategy, self.window, self.overlong, seed, bos_id)


def parse_weighted_split_group(text: str, flag: str) -> DataGroup:
    """`"NAME: W START:END PREFIX, W START:END PREFIX"` -> DataGroup."""
    match = re.fullmatch(r"\s*([^\s:]+)\s*:\s*(\S.*)", text, flags=re.DOTALL)
    if not match:
        raise ValueError(f"{flag}: {text!r} is not of the form 'NAME: W START:END PREFIX, ...'")
    name, entries = match.groups()
    datasets = []
    for entry in entries.split(","):
        fields = entry.split()
        try:
            weight, span, prefix = fields
            begin, end = (float(x) for x in span.split(":"))
            weight = float(weight)
        except ValueError:
            raise ValueError(
                f"{flag}: {entry.strip()!r} in group {name!r} is not 'WEIGHT START:END PREFIX'"
            ) from None
        if not 0 <= begin <= end <= 1 or weight < 0:
            raise ValueError(f"{flag}: {entry.strip()!r}: need 0 <= START <= END <= 1 and WEIGHT >= 0")
        datasets.append(DatasetRange(weight, prefix, begin, end))
    return DataGroup(name, tuple(datasets))


def read_paths_file(path: str, flag: str) -> list[str]:
    """The quoted groups held in a `--*-weighted-split-paths-path` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: file not found")
    with open(path, encoding="utf-8") as f:
        return shlex.split(f.read())


def groups_from_data_path(data_path: list[str], split: str) -> tuple[DataGroup, DataGroup]:
    """`--data-path [W1] P1 [W2 P2 ...]` cut by `--split 95,5,0` into train and valid groups (the
    third part, Megatron's test split, is held out and never read)."""
    if len(data_path) == 1:
        weighted = [(1.0, data_path[0])]
    elif len(data_path) % 2 == 0:
        try:
            weighted = [(float(w), p) for w, p in zip(data_path[::2], data_path[1::2])]
        except ValueError:
            raise ValueError(f"--data-path: expected 'W1 PREFIX1 W2 PREFIX2 ...', got {data_path}") from None
    else:
        raise ValueError(f"--data-path: expected one prefix or weight/prefix pairs, got {data_path}")
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        raise ValueError(f"--split: {split!r} is not like '95,5,0'") from None
    parts = (parts + [0.0, 0.0])[:3]
    if any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split: {split!r} needs non-negative parts with a positive sum")
    bounds = [0.0]
    for part in parts:
        bounds.append(bounds[-1] + part / sum(parts))
    bounds[-1] = 1.0
    return tuple(
        DataGroup(name, tuple(DatasetRange(w, p, bounds[i], bounds[i + 1]) for w, p in weighted))
        for i, name in enumerate(("train", "valid"))
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data-path", nargs="*", default=None,
                       help="PREFIX, or W1 PREFIX1 W2 PREFIX2 ...: pairs datasets "
                            "(PREFIX_inputs_document / PREFIX_targets_document), cut by --split")
    group.add_argument("--split", default="969, 30, 1",
                       help="train,valid,test proportions of every --data-path dataset")
    for kind in ("train", "valid"):
        group.add_argument(f"--{kind}-weighted-split-paths", nargs="*", default=None,
                           help=f"{kind} groups 'NAME: W START:END PREFIX, ...'"
                                + (" (one group)" if kind == "train" else " (one or more)"))
        group.add_argument(f"--{kind}-weighted-split-paths-path", default=None,
                           help=f"a file holding the quoted --{kind}-weighted-split-paths groups")
    group.add_argument("--seq-length", type=int, required=True, help="tokens per packed row (+1 for labels)")
    group.add_argument("--packing-strategy", choices=STRATEGIES, default="best_fit",
                       help="best_fit: best-fit decreasing over a window of shuffled pairs (fewer pad "
                            "tokens); greedy: fill rows in shuffled order (Megatron-DeepSpeed)")
    group.add_argument("--packing-window", type=int, default=1024,
                       help="best_fit: shuffled pairs sorted together, and rows held open at once")
    group.add_argument("--overlong-pairs", choices=OVERLONG_POLICIES, default="skip",
                       help="pairs longer than a row: skip (counted) or cut their inputs from the left")
    group.add_argument("--data-cache-path", default=None,
                       help="folder for the packing and blending index caches (default: beside the data)")
    group.add_argument("--data-impl", default="mmap", choices=["mmap"],
                       help="accepted for Megatron scripts; the only format is mmap")
    group.add_argument("--dataloader-type", default="single", choices=["single"],
                       help="accepted for Megatron scripts; samples are consumed in order, resumably")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    groups = {}
    for kind in ("train", "valid"):
        texts = getattr(args, f"{kind}_weighted_split_paths")
        path = getattr(args, f"{kind}_weighted_split_paths_path")
        if texts and path:
            raise ValueError(f"give --{kind}-weighted-split-paths or its -path form, not both")
        if path:
            texts = read_paths_file(path, f"--{kind}-weighted-split-paths-path")
        flag = f"--{kind}-weighted-split-paths"
        groups[kind] = [parse_weighted_split_group(text, flag) for text in texts or []]
    if len(groups["train"]) > 1:
        raise ValueError("--train-weighted-split-paths takes exactly one group")
    weighted = any(groups.values())
    if weighted and args.data_path:
        raise ValueError("give --data-path (with --split) or the --*-weighted-split-paths flags, not both")
    if not weighted and not args.data_path:
        raise ValueError("no data: give --data-path or --train-weighted-split-paths")
    if args.data_path:
        train, valid = groups_from_data_path(args.data_path, args.split)
        groups = {"train": [train], "valid": [valid]}
    return DataConfig(
        seq_length=args.seq_length,
        train=groups["train"][0] if groups["train"] else None,
        valid=tuple(groups["valid"]),
        strategy=args.packing_strategy,
        window=args.packing_window,
        overlong=args.overlong_pairs,
        cache_path=args.data_cache_path,
    )
