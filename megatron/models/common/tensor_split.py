"""How a whole tensor is cut over tensor-parallel ranks and put back together, for every family's
state-dict adapter: along one dimension (column-parallel rows, row-parallel columns, the
vocabulary), optionally as several fused sub-tensors each cut on its own (SwiGLU's gate and up:
rank r holds `[gate_r; up_r]`, never a slice of `[gate; up]`), or replicated (checked equal when
merged)."""

from __future__ import annotations

import torch


def split(name: str, tensor: torch.Tensor, tp_size: int, dim: int | None, parts: int = 1) -> list[torch.Tensor]:
    """`tp_size` shards of `tensor` (copies when `dim` is None); with `parts`, the tensor is that
    many equal sub-tensors along `dim`, each split alone and rank r's pieces concatenated."""
    if dim is None:
        return [tensor] * tp_size
    if tensor.shape[dim] % (tp_size * parts):
        raise ValueError(f"{name}: dimension {dim} of size {tensor.shape[dim]} does not split "
                         f"into {tp_size} tensor-parallel parts" + (f" of {parts} fused tensors" if parts > 1 else ""))
    pieces = [torch.chunk(sub, tp_size, dim=dim) for sub in torch.chunk(tensor, parts, dim=dim)]
    return [torch.cat([sub[rank] for sub in pieces], dim=dim) for rank in range(tp_size)]


def merge(name: str, shards: list[torch.Tensor], dim: int | None, where: str, parts: int = 1) -> torch.Tensor:
    """The inverse of `split`; replicated tensors must agree across ranks."""
    if dim is not None:
        pieces = [torch.chunk(shard, parts, dim=dim) for shard in shards]
        return torch.cat([rank_pieces[p] for p in range(parts) for rank_pieces in pieces], dim=dim)
    for rank, shard in enumerate(shards[1:], start=1):
        if not torch.equal(shard, shards[0]):
            difference = (shard.float() - shards[0].float()).abs().max().item()
            raise ValueError(f"{where}: replicated parameter {name!r} differs between tensor-parallel "
                             f"ranks 0 and {rank} (max abs difference {difference:.3g})")
    return shards[0]
