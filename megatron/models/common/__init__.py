"""Pieces any decoder family can use: ALiBi, the packed-row attention backends, the tied LM head,
the packed-batch loss, activation recomputation, the tensor-parallel RNG and megatron-core's
parallel config."""
