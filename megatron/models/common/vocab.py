"""Megatron's vocabulary padding rule (`--make-vocab-size-divisible-by`, `--pad-vocab-size-to`):
the embedding gets rows up to a size that splits evenly over tensor-parallel ranks."""

from __future__ import annotations


def padded_vocab_size(vocab_size: int, tp_size: int, divisible_by: int = 128, pad_to: int | None = None) -> int:
    """Megatron's rule: the next multiple of `divisible_by * tp_size`, or exactly `pad_to`."""
    if pad_to is not None:
        if pad_to < vocab_size or pad_to % tp_size:
            raise ValueError(
                f"--pad-vocab-size-to {pad_to} must be at least the vocabulary ({vocab_size}) "
                f"and divisible by --tensor-model-parallel-size {tp_size}"
            )
        return pad_to
    multiple = divisible_by * tp_size
    return -(-vocab_size // multiple) * multiple
