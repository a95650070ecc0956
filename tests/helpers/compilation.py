"""What `torch.compile` compiled in this process, as torch._dynamo counts it. Compiled functions
(`fused()`, the compiled FlexAttention) are cached per process, so a test that counts starts from
`fresh_compilation()` and does not depend on which tests ran before it."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters


def fresh_compilation() -> None:
    """Drop all compiled code and every count: the next call of a compiled function compiles it
    again, whatever ran before."""
    torch._dynamo.reset()
    counters.clear()


def compiled_frames() -> int:
    """Functions `torch.compile` has compiled since the last `fresh_compilation()`, each
    recompilation counted again. Eager FlexAttention, which traces its score and mask functions
    with dynamo's graph capture but compiles nothing, does not count (its captures do show in
    `counters["stats"]["unique_graphs"]`)."""
    return counters["frames"]["ok"]
