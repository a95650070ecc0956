#!/usr/bin/env python3
"""Benchmark of the LM head + loss alone, forward and backward, on one micro-batch of packed rows
of xP3-like pairs (target-only loss): `--lm-head-loss chunked` against the full logits of the
reference path (`lm_logits` + megatron-core's vocab-parallel cross entropy). Reported: time per
step; the peak memory above the inputs (hidden states, weight), which includes the weight's
gradient `[vocab, hidden]` that both produce; that peak less the weight's gradient (what the
logits and the loss themselves hold); and the ratios chunked / reference.

    python bench/lm_head.py                                   # the BLOOM-1b7 head, bf16 (GPU)
    python bench/lm_head.py --rows 1 --dtype fp32 --steps 1   # on a CPU (peak resident memory)
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from harness import DTYPES, packed_pairs, start_one_process, timed

from megatron.models.common.loss import head_and_loss


def bench_lm_head(hidden: int, vocab: int, batch: dict[str, torch.Tensor], dtype: torch.dtype, device: str,
                  steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Seconds per step and peak GiB above the inputs, per method; printed as they come."""
    rows, seq = batch["tokens"].shape
    g = torch.Generator().manual_seed(0)
    states = (torch.randn(rows, seq, hidden, generator=g) * 0.5).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=g) * 0.02).to(device, dtype).requires_grad_()
    targets = {k: batch[k].to(device) for k in ("labels", "loss_mask", "segment_ids")}
    print(f"LM head + loss alone (forward + backward): {rows} x {seq} tokens "
          f"({int(targets['loss_mask'].sum())} targets), hidden {hidden}, vocabulary {vocab}, {dtype}")
    weight_grad = vocab * hidden * weight.element_size() / 2**30
    measured = {}
    for method in ("chunked", "reference"):  # chunked first: memory a freed run keeps cannot flatter it
        def step(method=method):
            loss = head_and_loss(states, weight, targets["labels"], targets["loss_mask"], targets["segment_ids"],
                                 True, method)
            torch.autograd.grad(loss, (states, weight))
        try:
            measured[method] = timed(step, steps, device, warmup=warmup, above_start=True)
        except torch.OutOfMemoryError:
            print(f"  {method:<10} out of memory")
            continue
        seconds, peak = measured[method]
        print(f"  {method:<10} {seconds * 1e3:10.1f} ms  peak above inputs {peak:6.2f} GiB, "
              f"less the weight's gradient {peak - weight_grad:6.2f} GiB")
    if len(measured) == 2:
        (time_chunked, peak_chunked), (time_reference, peak_reference) = measured["chunked"], measured["reference"]
        memory = (f"{peak_chunked / peak_reference:.2f}, less the weight's gradient "
                  f"{(peak_chunked - weight_grad) / (peak_reference - weight_grad):.2f}"
                  if peak_reference > weight_grad else "not measurable here")
        print(f"  chunked / reference: time {time_chunked / time_reference:.2f}, peak memory {memory}")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=250880)
    parser.add_argument("--rows", type=int, default=2, help="packed rows in the micro-batch")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = start_one_process(default_port=29512)
    batch, _ = packed_pairs(args.rows, args.seq_length, args.vocab_size, seed=0)
    bench_lm_head(args.hidden_size, args.vocab_size, batch, DTYPES[args.dtype], device, args.steps, args.warmup)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
