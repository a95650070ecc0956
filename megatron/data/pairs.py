"""(input, target) pairs of a multitask dataset: `{prefix}_inputs_document` and
`{prefix}_targets_document` side by side, optionally restricted to a range of the pairs (a split)."""

from __future__ import annotations

import numpy as np

from megatron.data.index_cache import file_signature
from megatron.data.indexed_dataset import IndexedDataset, IndexedDatasetError


def pair_prefixes(prefix: str) -> tuple[str, str]:
    return f"{prefix}_inputs_document", f"{prefix}_targets_document"


class PairDataset:
    """Pairs `begin <= i < end` of the dataset at `prefix`; pair `j` of this view is pair
    `begin + j` of the files."""

    def __init__(self, prefix: str, begin: int = 0, end: int | None = None):
        self.prefix = str(prefix)
        inputs_prefix, targets_prefix = pair_prefixes(self.prefix)
        self._inputs = IndexedDataset(inputs_prefix)
        self._targets = IndexedDataset(targets_prefix)
        for ds in (self._inputs, self._targets):
            if len(ds.doc_idx) != len(ds) + 1:
                raise IndexedDatasetError(
                    f"{ds.prefix}: {len(ds)} sequences in {len(ds.doc_idx) - 1} documents; "
                    "a pairs dataset needs one sequence per document"
                )
        if len(self._inputs) != len(self._targets):
            raise IndexedDatasetError(
                f"{self.prefix}: {len(self._inputs)} inputs but {len(self._targets)} targets; "
                "both files must come from one preprocessing run"
            )
        total = len(self._inputs)
        end = total if end is None else end
        if not 0 <= begin <= end <= total:
            raise ValueError(f"{self.prefix}: pair range [{begin}, {end}) outside [0, {total})")
        self.begin, self.end = begin, end
        self.input_sizes = self._inputs.sizes[begin:end]
        self.target_sizes = self._targets.sizes[begin:end]

    def signature(self) -> dict:
        """What identifies this view's content, for index cache keys: its files and range."""
        files = [file_signature(f"{prefix}.idx") for prefix in pair_prefixes(self.prefix)]
        return {"files": files, "range": [self.begin, self.end]}

    def __len__(self) -> int:
        return self.end - self.begin

    def inputs(self, i: int, keep_last: int | None = None, keep_first_if: int | None = None) -> np.ndarray:
        """Input tokens of pair `i`; with `keep_last`, only that many: the last ones, or, when the
        inputs begin with the token `keep_first_if` (a BOS), that token and the last ones after it."""
        size = int(self.input_sizes[i])
        keep = size if keep_last is None else min(size, keep_last)
        if keep < size and keep_first_if is not None and keep >= 1:
            first = self._inputs.get(self.begin + i, 0, 1)
            if int(first[0]) == keep_first_if:
                return np.concatenate([first, self._inputs.get(self.begin + i, size - keep + 1, keep - 1)])
        return self._inputs.get(self.begin + i, size - keep, keep)

    def targets(self, i: int) -> np.ndarray:
        return self._targets[self.begin + i]
