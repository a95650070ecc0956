#!/usr/bin/env python3
"""Benchmark of one training step (forward, backward, AdamW) on whatever device is there, for
BLOOM and Llama-family shapes on packed rows of xP3-like pairs, in three versions on the same
pairs:

  (a) ours: the family's model with `--lm-head-loss chunked`, its compiled fusions (BLOOM's bias
      + GeLU and bias + dropout + residual; the Llama family's dropout + residual), and
      `--attention-backend flex` (on GPUs; FlexAttention has no CPU backward);
  (b) ours on the reference path (SDPA over a materialised mask, full logits);
  (c) transformers' model (`BloomForCausalLM`, `LlamaForCausalLM`; eager attention) on the same
      pairs one per row, padded to the longest: what a user of the plain HF trainer gets;
  (d) (a) with LoRA (`--lora-rank`, default 16, alpha 2r, every linear layer of the blocks; 0
      leaves it out): the model frozen, AdamW on the adapters alone, as `finetune_xp3.py
      --lora-rank` trains; its step time and peak memory against (a)'s, the full finetune of
      the same shape, as ratios from the same run.

Reported per version: tokens/s (real tokens, no padding), target tokens/s, model TFLOPs per
device and MFU (formula printed; peaks of known GPUs), peak memory (the GPU's allocator, or the
process's resident memory on a CPU); then the ratios against (c) and (b). Then the LM head + loss
alone (`bench/lm_head.py`). Then attention alone, forward + backward, against the sequence length:
the materialised path vs FlexAttention (GPU) vs our Triton kernel (on CPU in Triton's interpreter,
which only proves it runs). Counted model FLOPs are those of the real tokens (packing waste and
padding are not work).

    python bench/train_step.py --model 560m --model 1b7           # on a GPU, bf16
    python bench/train_step.py --model llama-3.2-1b               # Llama-3.2-1B's shape, on a GPU
    python bench/train_step.py --model 560m --lora-rank 0            # without the LoRA version
    python bench/train_step.py --model tiny --steps 2 --dtype fp32 \
        --attention-seq-lengths 64 --attention-heads 2              # a CPU smoke run (TRITON_INTERPRET=1)
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from harness import DTYPES, packed_pairs, start_one_process, timed
from lm_head import bench_lm_head
from transformers import AutoModelForCausalLM

from megatron.models import get_model_spec
from megatron.models.common.loss import loss_weights
from megatron.models.common.alibi import alibi_slopes
from megatron.models.common import lora
from megatron.models.common.attention import flex_attention, reference_attention, triton_attention
from megatron.models.common.parallel_config import model_parallel_config
from megatron.models.spec import with_options
from megatron.train.metrics import peak_tflops

LLAMA_3_2_1B = dict(num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, head_dim=64, ffn_hidden_size=8192,
                    rope_theta=500000.0, rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                    rope_high_freq_factor=4.0, rope_original_max_positions=8192, tie_word_embeddings=True)
SHAPES = {  # name -> (family, its model config's shape fields, vocabulary, micro-batch rows)
    "560m": ("bloom", dict(num_layers=24, hidden_size=1024, num_heads=16), 250880, 4),
    "1b7": ("bloom", dict(num_layers=24, hidden_size=2048, num_heads=16), 250880, 2),
    "tiny": ("bloom", dict(num_layers=2, hidden_size=64, num_heads=4), 1024, 2),
    "llama-3.2-1b": ("llama", LLAMA_3_2_1B, 128256, 4),
    "llama-tiny": ("llama", dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, ffn_hidden_size=128),
                   1024, 2),
}
# the fused paths of (a), those a family's config has
FUSED = dict(lm_head_loss="chunked", bias_gelu_fusion=True, bias_dropout_fusion=True)
VERSIONS = ("(a) ours, fused", "(b) ours, reference path", "(c) transformers, padded")


def padded_pairs(pairs: list[tuple[int, int]], vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """The same pairs one per row for transformers: right-padded, labels -100 outside targets."""
    longest = max(i + t for i, t in pairs)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (len(pairs), longest), generator=g)
    attention = torch.zeros(len(pairs), longest, dtype=torch.long)
    labels = torch.full((len(pairs), longest), -100)
    for row, (i, t) in enumerate(pairs):
        attention[row, :i + t] = 1
        labels[row, i:i + t] = ids[row, i:i + t]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def ours_step(spec, config, dtype: torch.dtype, device: str, batch: dict[str, torch.Tensor], lora_rank: int = 0):
    """With `lora_rank`, adapters on every linear layer of the blocks and the rest frozen."""
    model = spec.build_model(config, model_parallel_config(dtype), init_seed=0)
    if lora_rank:
        settings = lora.LoraConfig(rank=lora_rank, alpha=2 * lora_rank, targets=spec.lora_targets)
        for layer, block in enumerate(model.layers):
            lora.attach(block, settings, layer, seed=0, tp_rank=0, tp_size=1)
        lora.freeze_all_but_adapters(model)
    model.to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, fused=device == "cuda")
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch, norm_target_loss=True).backward()
        optimizer.step()
    return step


def hf_step(config, dtype: torch.dtype, device: str, batch: dict[str, torch.Tensor]):
    """transformers' model of our `config` (the family's `to_hf`: no dropout, the same shape)."""
    hf_config = config.to_hf(config.vocab_size)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").to(device=device, dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
    return step


def bench_model(name: str, dtype_name: str, steps: int, seq: int, device: str, lora_rank: int) -> None:
    family, fields, vocab, rows = SHAPES[name]
    spec = get_model_spec(family)
    dtype = DTYPES[dtype_name]
    batch, pairs = packed_pairs(rows, seq, vocab, seed=0)
    real_tokens = sum(i + t for i, t in pairs)
    target_tokens = int(loss_weights(batch["loss_mask"], batch["segment_ids"], True).gt(0).sum())
    base = spec.config_class(vocab_size=vocab, **fields)
    flops = spec.flops_per_token(base, seq) * real_tokens
    peak = peak_tflops(dtype_name)
    fused_config = with_options(base, attention_backend="flex" if device == "cuda" else "reference", **FUSED)
    versions = {
        VERSIONS[0]: lambda: ours_step(spec, fused_config, dtype, device, batch),
        VERSIONS[1]: lambda: ours_step(spec, base, dtype, device, batch),
        VERSIONS[2]: lambda: hf_step(base, dtype, device, padded_pairs(pairs, vocab, seed=0)),
    }
    lora_version = f"(d) ours, fused, LoRA r{lora_rank}"
    if lora_rank:
        versions[lora_version] = lambda: ours_step(spec, fused_config, dtype, device, batch, lora_rank)
    kv = base.num_kv_heads
    print(f"\n{name} ({family}): {base.num_layers} layers, hidden {base.hidden_size}, {base.num_heads} heads"
          + (f" over {kv} KV heads" if kv != base.num_heads else "") + f", vocabulary {vocab}; {dtype_name}; "
          f"{rows} packed rows of {seq} = {len(pairs)} pairs, {real_tokens} real tokens, {target_tokens} targets; "
          f"model FLOPs per token: {spec.flops_formula}")
    results = {}
    for version, build in versions.items():
        try:
            seconds, memory = timed(build(), steps, device)
        except torch.OutOfMemoryError:
            print(f"{version:<26} out of memory")
            continue
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        tflops = flops / seconds / 1e12
        results[version] = real_tokens / seconds, target_tokens / seconds, seconds, memory
        print(f"{version:<26} {real_tokens / seconds:>10,.0f} tok/s {target_tokens / seconds:>9,.0f} target tok/s "
              f"{tflops:>7.1f} TFLOPs" + (f" MFU {tflops / peak:6.1%}" if peak else "") + f"  peak {memory:6.1f} GiB")
    fused, reference, hf = VERSIONS
    for version, against in ((fused, hf), (reference, hf), (fused, reference)):
        if version in results and against in results:
            print(f"{version} / {against}: target tokens/s x{results[version][1] / results[against][1]:.2f}")
    if lora_version in results and fused in results:
        (*_, seconds, memory), (*_, full_seconds, full_memory) = results[lora_version], results[fused]
        print(f"LoRA r{lora_rank} / full ((d) / (a)): step time x{seconds / full_seconds:.2f}, "
              f"peak memory x{memory / full_memory:.2f}")
    bench_lm_head(base.hidden_size, vocab, batch, dtype, device, steps, warmup=2)


def bench_attention(seq_lengths: list[int], dtype: torch.dtype, device: str, heads: int, steps: int,
                    head_dim: int = 64) -> None:
    backends = {"reference": reference_attention, "flex": flex_attention, "triton": triton_attention}
    if device != "cuda":
        del backends["flex"]  # FlexAttention has no CPU backward
    print(f"\nattention alone (forward + backward), {heads} heads x {head_dim}, packed rows of xP3-like pairs")
    print(f"{'seq':>6}" + "".join(f" {name + ' ms':>13}" for name in backends)
          + "".join(f" {name + ' speed-up':>17}" for name in list(backends)[1:]))
    slopes = alibi_slopes(heads)
    for seq in seq_lengths:
        batch, _ = packed_pairs(1, seq, 1000, seed=seq)
        segments = batch["segment_ids"].to(device)
        q, k, v = (torch.randn(1, heads, seq, head_dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        row = []
        for backend in backends.values():
            def step(backend=backend):
                out = backend(q, k, v, slopes, segments)
                torch.autograd.grad(out.float().sum(), (q, k, v))
            try:
                row.append(timed(step, steps, device)[0] * 1e3)
            except torch.OutOfMemoryError:
                row.append(float("nan"))
        print(f"{seq:>6}" + "".join(f" {ms:>13.2f}" for ms in row) + "".join(f" {row[0] / ms:>16.2f}x" for ms in row[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=sorted(SHAPES), help="default: 560m and 1b7")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attention-seq-lengths", type=int, nargs="*", default=None,
                        help="default: 512 1024 2048 4096 8192 on a GPU, none on a CPU")
    parser.add_argument("--attention-heads", type=int, default=16)
    parser.add_argument("--lora-rank", type=int, default=16,
                        help="the LoRA version's rank (alpha 2r, every linear layer of the blocks); 0: no LoRA version")
    args = parser.parse_args()
    device = start_one_process(default_port=29511)
    for name in args.model or ["560m", "1b7"]:
        bench_model(name, args.dtype, args.steps, args.seq_length, device, args.lora_rank)
    seq_lengths = args.attention_seq_lengths
    if seq_lengths is None:
        seq_lengths = [512, 1024, 2048, 4096, 8192] if device == "cuda" else []
    if seq_lengths:
        bench_attention(seq_lengths, DTYPES[args.dtype], device, args.attention_heads, args.steps)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
