"""LoRA adapters (Hu et al. 2021) on megatron-core's tensor-parallel linear layers, by HF PEFT's
tensor-parallel rule (peft `tuners/lora/tp_layer.py`), so that each rank's `B @ A` has exactly
the shape of its weight shard and merging is local:

- column-parallel base (`query_key_value`, `dense_h_to_4h`): `lora_A` `[r, in]` replicated,
  `lora_B` `[out / tp, r]` split by output rows as the weight is (SwiGLU's fused gate/up rows
  included); A's rank-sized output goes through megatron-core's copy-to-TP region, so its gradient
  (and the input's) is all-reduced over the TP group;
- row-parallel base (`dense`, `dense_4h_to_h`): `lora_A` `[r, in / tp]` split by input columns,
  its rank-sized output all-reduced (the reduce-from-TP region), `lora_B` `[out, r]` replicated.

The adapter's output `B(A(dropout(x))) * scaling` is added to the base layer's output (before a
bias the block adds itself), `scaling` = alpha / r, or alpha / sqrt(r) with rsLoRA. Dropout on a
column-parallel layer's (replicated) input draws from the default generator, the same on every
TP rank; on a row-parallel layer's input shard from the tensor-parallel generator, as Megatron's
own dropout on split activations. A is drawn whole from the run's seed, the layer and the target
(PEFT's Kaiming-uniform), and sliced, so the run is the same at any TP; B starts at zero.

A fused layer (q/k/v, gate/up) has one A for its parts, or, as PEFT adapts the unfused HF
modules, one A per part (`LoraConfig.parts`: an imported PEFT adapter whose projections have their
own A, or adapt only some of them): A stacks the parts' `[r, in]` slices and B `[out, parts * r]`
is masked so that each output row reads its own part's slice only (the masked entries get no
gradient, so they stay zero and the adapter stays PEFT's).

Tensors are named as PEFT names them inside a target module, `<target>.lora_A.weight` and
`<target>.lora_B.weight`; `split_for_tp` and `merge_from_tp` apply the rule above to them by
the name of their base weight and the family's adapter, and the adapter's own rule to the rest.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megatron.models.common import tensor_split
from megatron.models.common.tp_random import tensor_parallel_rng
from megatron.utils.megatron_core import tensor_parallel

LORA_A = "lora_A"
LORA_B = "lora_B"


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0
    rslora: bool = False
    # None: a fused layer (q/k/v, gate/up) has one A for all its parts; else the family's part
    # modules (HF's names) that have their own A, as PEFT adapts the unfused HF model, the others
    # none: A stacked `[parts * r, in]`, B `[out, parts * r]` masked to each row's own part
    parts: tuple[str, ...] | None = None

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def _init_seed(seed: int, layer: int, path: str) -> int:
    return seed + zlib.crc32(f"{layer}:{path}".encode())


FusedRows = Callable[[str], "tuple[tuple[str, ...], torch.Tensor] | None"]


def attach(block: nn.Module, lora: LoraConfig, layer: int, seed: int, tp_rank: int, tp_size: int,
           fused_rows: FusedRows = lambda path: None) -> list[str]:
    """Adapters on every targeted linear of `block` (pipeline layer `layer`); their paths in it.
    With `lora.parts`, `fused_rows(path)` gives a fused layer's part names and the part of each
    of this rank's output rows (None for a layer that is not fused)."""
    attached = []
    for path, module in list(block.named_modules()):
        if path.rsplit(".", 1)[-1] not in lora.targets:
            continue
        parts = fused_rows(path) if lora.parts is not None else None
        if isinstance(module, tensor_parallel.ColumnParallelLinear):
            _attach(module, lora, _init_seed(seed, layer, path), tp_rank, tp_size, column=True, parts=parts)
        elif isinstance(module, tensor_parallel.RowParallelLinear):
            _attach(module, lora, _init_seed(seed, layer, path), tp_rank, tp_size, column=False)
        else:
            continue
        attached.append(path)
    return attached


def stacked_parts(lora: LoraConfig, parts: int) -> int:
    """How many rank slices A stacks for a layer fused from `parts` HF modules (1 unless
    `lora.parts`)."""
    return parts if lora.parts is not None else 1


def part_mask(lora: LoraConfig, names: tuple[str, ...], row_parts: torch.Tensor) -> torch.Tensor:
    """`[rows, parts * r]`: 1 where a row's own part's rank slice meets it, for the adapted parts."""
    mask = torch.zeros(len(row_parts), len(names) * lora.rank)
    for index, name in enumerate(names):
        if name in lora.parts:
            mask[row_parts == index, index * lora.rank:(index + 1) * lora.rank] = 1
    return mask


def _attach(linear: nn.Module, lora: LoraConfig, seed: int, tp_rank: int, tp_size: int, column: bool,
            parts: tuple[tuple[str, ...], torch.Tensor] | None = None) -> None:
    dtype, device = linear.weight.dtype, linear.weight.device
    out_local, in_local = linear.weight.shape
    in_whole = in_local if column else in_local * tp_size
    width = lora.rank * (len(parts[0]) if parts else 1)
    whole_a = torch.empty(width, in_whole, dtype=torch.float32)
    nn.init.kaiming_uniform_(whole_a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
    a = whole_a if column else whole_a.chunk(tp_size, dim=1)[tp_rank]
    linear.lora_A = nn.Linear(in_local, width, bias=False, dtype=dtype, device=device)
    linear.lora_B = nn.Linear(width, out_local, bias=False, dtype=dtype, device=device)
    with torch.no_grad():
        linear.lora_A.weight.copy_(a)
        linear.lora_B.weight.zero_()
    if parts:  # B's entries outside each row's own part stay zero: no gradient reaches them
        linear.register_buffer("lora_mask", part_mask(lora, *parts).to(dtype=dtype, device=device), persistent=False)
    split = linear.lora_B.weight if column else linear.lora_A.weight
    tensor_parallel.set_tensor_model_parallel_attributes(split, is_parallel=True, dim=0 if column else 1, stride=1)
    linear.lora_scaling = lora.scaling
    linear.lora_dropout = lora.dropout
    linear.register_forward_hook(_column_branch if column else _row_branch)


def _dropout(linear: nn.Module, x: torch.Tensor, per_rank: bool) -> torch.Tensor:
    if not (linear.training and linear.lora_dropout > 0):
        return x
    with tensor_parallel_rng.fork(x.device) if per_rank else contextlib.nullcontext():
        return F.dropout(x, linear.lora_dropout, training=True)


def _column_branch(linear: nn.Module, args: tuple, output: tuple) -> tuple:
    hidden = tensor_parallel.copy_to_tensor_model_parallel_region(
        linear.lora_A(_dropout(linear, args[0], per_rank=False)))
    out, bias = output
    mask = getattr(linear, "lora_mask", None)
    delta = linear.lora_B(hidden) if mask is None else F.linear(hidden, linear.lora_B.weight * mask)
    return out + delta * linear.lora_scaling, bias


def _row_branch(linear: nn.Module, args: tuple, output: tuple) -> tuple:
    hidden = tensor_parallel.reduce_from_tensor_model_parallel_region(
        linear.lora_A(_dropout(linear, args[0], per_rank=True)))
    out, bias = output
    return out + linear.lora_B(hidden) * linear.lora_scaling, bias


def freeze_all_but_adapters(module: nn.Module) -> int:
    """Only LoRA tensors keep `requires_grad`; the number of adapter tensors."""
    count = 0
    for name, parameter in module.named_parameters():
        trainable = is_lora(name)
        parameter.requires_grad_(trainable)
        count += trainable
    return count


def is_lora(name: str) -> bool:
    return f".{LORA_A}." in f".{name}" or f".{LORA_B}." in f".{name}"


def base_weight(name: str) -> tuple[str, str]:
    """`x.lora_A.weight` -> (`x.weight`, 'A'); `x.lora_B.weight` -> (`x.weight`, 'B')."""
    for part, which in ((LORA_A, "A"), (LORA_B, "B")):
        suffix = f"{part}.weight"
        if name.endswith(suffix):
            return name.removesuffix(suffix) + "weight", which
    raise KeyError(f"{name}: not a LoRA tensor")


def _split_like_base(adapter, name: str) -> str | None:
    """The base weight whose TP split a LoRA tensor follows, or None if it is replicated."""
    base, which = base_weight(name)
    dim = adapter.tp_split_dim(base)
    column = dim == 0
    return base if (column and which == "B") or (dim == 1 and which == "A") else None


def split_for_tp(adapter, name: str, tensor: torch.Tensor, tp_size: int) -> list[torch.Tensor]:
    """This tensor's shards over `tp_size` ranks: a LoRA tensor by the rule above, the rest by
    the family's `adapter`."""
    if not is_lora(name):
        return adapter.split_for_tp(name, tensor, tp_size)
    base = _split_like_base(adapter, name)
    return adapter.split_for_tp(base, tensor, tp_size) if base else tensor_split.split(name, tensor, tp_size, None)


def merge_from_tp(adapter, name: str, shards: list[torch.Tensor], where: str) -> torch.Tensor:
    """The inverse of `split_for_tp`."""
    if not is_lora(name):
        return adapter.merge_from_tp(name, shards, where)
    base = _split_like_base(adapter, name)
    return adapter.merge_from_tp(base, shards, where) if base else tensor_split.merge(name, shards, None, where)


def delta_weight(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """What merging an adapter adds to its base weight, `B @ A * scaling`, in fp32."""
    return (lora_b.float() @ lora_a.float()) * scaling
