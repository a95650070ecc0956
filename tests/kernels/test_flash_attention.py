"""Our Triton attention kernel (`--attention-backend triton`) against the reference backend, on CPU
in Triton's interpreter (conftest sets TRITON_INTERPRET=1 where there is no GPU; small shapes):
forward and the three gradients without dropout for several packed layouts, head counts and TP
slices; with dropout, its own mask applied in plain PyTorch attention gives its output and
gradients; the query blocks visit exactly the key blocks the segment layout allows; and the whole
model trains with it (recomputation included). The Llama family's case too: no ALiBi, 1, 2 or 3
query heads per KV head, with and without dropout. GPU variants (bf16, fp16, bigger shapes) run
where CUDA is."""

from __future__ import annotations

import pytest
import torch
from helpers.bloom_workers import packed_batch
from helpers.distributed import free_port, gloo_world
from helpers.tiny import sharpen_attention, tiny_config

from megatron.models.bloom.model import BloomModel
from megatron.models.llama.config import LlamaModelConfig
from megatron.models.llama.model import LlamaModel
from megatron.models.common.alibi import alibi_slopes, alibi_slopes_for_rank
from megatron.models.common.attention import alibi_bias, attention_mask, reference_attention
from megatron.models.common.parallel_config import model_parallel_config
from megatron.models.common.tp_random import tensor_parallel_rng
from megatron.train.distributed import initialize_parallel

triton_kernel = pytest.importorskip("megatron.kernels.flash_attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")

# Packed rows of 50 tokens (not a multiple of the 16-row blocks the interpreter uses): three pairs
# crossing block boundaries and padding, and one pair filling the row.
SEGMENTS = torch.tensor([[1] * 13 + [2] * 20 + [3] * 9 + [0] * 8, [1] * 50])
INPUTS = torch.zeros(2, 50, dtype=torch.bool)
INPUTS[0, :5] = INPUTS[0, 13:25] = INPUTS[0, 33:35] = INPUTS[1, :30] = True


def _qkv(heads: int, seq: int = 50, head_dim: int = 16, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, seq, head_dim, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3)]


def _output_and_gradients(attention, q, k, v, *args):
    out = attention(q, k, v, *args)
    grad = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape).to(out.dtype)
    return [out, *torch.autograd.grad(out, (q, k, v), grad)]


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
@pytest.mark.parametrize("heads, slopes", [(5, alibi_slopes(5)), (6, alibi_slopes(6)),
                                           (6, alibi_slopes_for_rank(12, 1, 2))], ids=["5_heads", "6_heads", "tp_slice"])
def test_forward_and_gradients_match_the_reference(heads, slopes, prefix_lm):
    q, k, v = _qkv(heads)
    args = (slopes, SEGMENTS.to(DEVICE), INPUTS.to(DEVICE) if prefix_lm else None)
    ours = _output_and_gradients(triton_kernel.flash_attention, q, k, v, *args)
    reference = _output_and_gradients(reference_attention, q, k, v, *args)
    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("head_dim", [24, 64])
def test_head_dims_that_fill_part_of_a_tile_or_all_of_it(head_dim):
    """24 (padded to a 32-wide tile, the rest masked) and 64 (BLOOM-560m's), two heads."""
    q, k, v = _qkv(2, seq=40, head_dim=head_dim)
    args = (alibi_slopes(2), SEGMENTS[:, :40].to(DEVICE), INPUTS[:, :40].to(DEVICE))
    for a, b in zip(_output_and_gradients(triton_kernel.flash_attention, q, k, v, *args),
                    _output_and_gradients(reference_attention, q, k, v, *args)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def _attention_with_mask(q, k, v, slopes, segment_ids, keep, p):
    """Plain PyTorch attention with a given dropout mask (kept elements scaled by 1 / (1 - p))."""
    allowed = attention_mask(segment_ids) | torch.eye(q.shape[2], dtype=torch.bool, device=q.device)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + alibi_bias(slopes, q.shape[2], q.dtype, q.device)
    return (scores.masked_fill(~allowed, float("-inf")).softmax(-1) * keep / (1 - p)) @ v


def test_dropout_is_the_kernels_own_mask_applied_in_plain_attention():
    """Same seed: the output and gradients of plain attention with the mask the kernel
    regenerates (`dropout_keep_mask`), the PyTorch keep rate 1 - p, the same output again; and
    another tensor-parallel rank's generator draws other masks."""
    p, heads = 0.3, 6
    q, k, v = _qkv(heads, seq=40)
    segments, slopes = SEGMENTS[:, :40].to(DEVICE), alibi_slopes(heads)
    torch.manual_seed(5)
    ours = _output_and_gradients(triton_kernel.flash_attention, q, k, v, slopes, segments, None, p)
    torch.manual_seed(5)
    keep = triton_kernel.dropout_keep_mask(triton_kernel.draw_seeds(2, heads, q.device), 2, heads, 40, p)
    plain = _output_and_gradients(_attention_with_mask, q, k, v, slopes, segments, keep, p)
    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    kept = keep.float().mean().item()  # 19,200 draws: 5 standard deviations are 0.017
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / keep.numel()) ** 0.5
    torch.manual_seed(5)
    assert torch.equal(triton_kernel.flash_attention(q, k, v, slopes, segments, None, p), ours[0])
    masks = []
    for tp_rank in (0, 1):
        tensor_parallel_rng.seed(1234, tp_rank)
        with tensor_parallel_rng.fork(q.device):
            masks.append(triton_kernel.dropout_keep_mask(triton_kernel.draw_seeds(2, heads, q.device), 2, heads, 40, p))
    assert (masks[0] != masks[1]).float().mean() > 0.3  # independent masks differ in 2p(1-p) = 42%


def test_query_blocks_visit_only_the_key_blocks_of_their_segments():
    """Rows of 64 in blocks of 16 (the interpreter's), segments [0, 10) [10, 40) [40, 56) and
    padding [56, 64): each query block reads from the block holding its first row's segment start
    to its own diagonal block; in the prefix-LM mode also up to its pairs' last inputs."""
    if DEVICE == "cuda":
        pytest.skip("the block sizes are autotuned on a GPU; the interpreter's are 16 x 16")
    segments = torch.tensor([[1] * 10 + [2] * 30 + [3] * 16 + [0] * 8])
    inputs = torch.zeros(1, 64, dtype=torch.bool)
    inputs[0, 10:36] = True  # pair 2's inputs reach into block 2
    q, k, v = (t.detach() for t in _qkv(1, seq=64)[:3])
    visits = {}
    for name, is_inputs in (("causal", None), ("prefix_lm", inputs)):
        ranges = triton_kernel.visible_ranges(segments, is_inputs)
        flags = torch.zeros_like(segments) if is_inputs is None else is_inputs
        visited = triton_kernel.launch_forward(q[:1], k[:1], v[:1], alibi_slopes(1), torch.zeros(1, dtype=torch.int64),
                                               segments.int(), flags.int(), ranges, 0.0, is_inputs is not None,
                                               record=True)[2]
        visits[name] = [tuple(pair) for pair in visited[0, :4].tolist()]
    # block 0: pair 1 and the start of pair 2 | block 1: pair 2 from row 10 | block 2: pair 2, pair 3
    # | block 3: pair 3 from row 40, padding (itself only)
    assert visits["causal"] == [(0, 1), (0, 2), (0, 3), (2, 4)]
    assert visits["prefix_lm"] == [(0, 3), (0, 3), (0, 3), (2, 4)]  # row 10's input sees row 35 (block 2)
    row_start, row_end, col_start, col_end = triton_kernel.visible_ranges(segments, inputs)
    assert row_start[0, [0, 9, 10, 39, 40, 57]].tolist() == [0, 0, 10, 10, 40, 57]
    assert row_end[0, [0, 10, 35, 36, 57]].tolist() == [1, 36, 36, 37, 58]
    assert col_start[0, [5, 20, 36, 57]].tolist() == [5, 10, 36, 57]
    assert col_end[0, [0, 20, 45, 57]].tolist() == [10, 40, 56, 58]


def _model_loss_and_gradients(backend: str, checkpoint_activations: bool = False, dropout: float = 0.0,
                              family: str = "bloom"):
    if family == "bloom":
        config = tiny_config(attention_backend=backend, attention_dropout=dropout)
        model = BloomModel(config, model_parallel_config(), checkpoint_activations, init_seed=3).train()
    else:  # 4 heads over 2 KV heads, untied head, llama3 rope scaling
        config = LlamaModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                  ffn_hidden_size=48, rope_theta=100.0, rope_type="llama3", rope_factor=4.0,
                                  rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_positions=16,
                                  tie_word_embeddings=False, attention_backend=backend, attention_dropout=dropout)
        model = LlamaModel(config, model_parallel_config(), checkpoint_activations, init_seed=3).train()
    sharpen_attention(model)
    tensor_parallel_rng.seed(11, 0)
    batch, _ = packed_batch()
    loss = model.loss(batch)
    return [loss, *torch.autograd.grad(loss, list(model.parameters()))]


def test_bloom_with_the_triton_backend_matches_the_reference_and_recomputes_its_dropout():
    """The whole model: the reference backend's loss and gradients (dropout 0); with attention
    dropout, activation recomputation gives the gradients of the plain pass bit for bit (the
    recomputed forward draws the same seeds from the tensor-parallel generator)."""
    with gloo_world(0, 1, free_port()):
        initialize_parallel(1, 1)
        for a, b in zip(_model_loss_and_gradients("triton"), _model_loss_and_gradients("reference")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        plain = _model_loss_and_gradients("triton", dropout=0.3)
        recomputed = _model_loss_and_gradients("triton", checkpoint_activations=True, dropout=0.3)
        for a, b in zip(plain, recomputed):
            assert torch.equal(a, b)
        assert not torch.equal(plain[0], _model_loss_and_gradients("triton")[0])  # the dropout was at work


def test_llama_with_the_triton_backend_matches_the_reference_and_recomputes_its_dropout():
    """The same for the Llama family (grouped K/V, no ALiBi, RoPE, untied head)."""
    with gloo_world(0, 1, free_port()):
        initialize_parallel(1, 1)
        runs = {(backend, recompute, p): _model_loss_and_gradients(backend, recompute, p, family="llama")
                for backend, recompute, p in (("triton", False, 0.0), ("reference", False, 0.0),
                                              ("triton", False, 0.3), ("triton", True, 0.3))}
    for a, b in zip(runs["triton", False, 0.0], runs["reference", False, 0.0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(runs["triton", False, 0.3], runs["triton", True, 0.3]))
    assert not torch.equal(runs["triton", False, 0.3][0], runs["triton", False, 0.0][0])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_half_precision_on_a_gpu_matches_the_fp32_reference(dtype, tolerance, prefix_lm):
    """Head dims 64 and 128 (BLOOM's), rows of 1,000 tokens in several pairs, autotuned blocks."""
    for head_dim in (64, 128):
        q, k, v = _qkv(8, seq=1000, head_dim=head_dim, dtype=dtype)
        segments = torch.tensor([[1] * 300 + [2] * 450 + [3] * 200 + [0] * 50, [1] * 1000], device=DEVICE)
        inputs = (torch.arange(1000, device=DEVICE) % 300 < 100).expand(2, 1000) if prefix_lm else None
        ours = _output_and_gradients(triton_kernel.flash_attention, q, k, v, alibi_slopes(8), segments, inputs)
        reference = _output_and_gradients(reference_attention, *(t.detach().float().requires_grad_() for t in (q, k, v)),
                                          alibi_slopes(8), segments, inputs)
        keep = (segments > 0)[:, None, :, None]
        for a, b in zip(ours, reference):
            torch.testing.assert_close((a.float() * keep), b * keep, rtol=tolerance, atol=tolerance)


def test_a_cpu_run_without_the_interpreter_is_refused_by_name(monkeypatch, tmp_path):
    """Without a GPU the kernel runs only in Triton's interpreter: a launch without it stops at
    the flags with the way out named (a dry run, which plans a GPU launch, does not)."""
    from megatron.train.arguments import parse_config
    from megatron.train.errors import ConfigError

    if DEVICE == "cuda":
        pytest.skip("a GPU runs the compiled kernel")
    monkeypatch.delenv("TRITON_INTERPRET")
    argv = ["--tokenizer-name-or-path", "unused", "--seq-length", "8", "--num-layers", "1", "--hidden-size", "8",
            "--num-attention-heads", "1", "--micro-batch-size", "1", "--train-iters", "1", "--lr", "1e-3",
            "--data-path", "unused", "--attention-backend", "triton"]
    with pytest.raises(ConfigError, match="set TRITON_INTERPRET=1"):
        parse_config(argv, world_size=1)
    assert parse_config([*argv, "--dry-run"], world_size=1).model.attention_backend == "triton"


def _grouped(heads: int, kv_heads: int, seq: int = 50, head_dim: int = 16, dtype=torch.float32, seed: int = 0):
    """q of `heads` heads, k and v of `kv_heads` (grouped-query attention)."""
    q = _qkv(heads, seq=seq, head_dim=head_dim, dtype=dtype, seed=seed)[0]
    k, v = _qkv(kv_heads, seq=seq, head_dim=head_dim, dtype=dtype, seed=seed + 1)[:2]
    return q, k, v


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 2)], ids=["group_1", "group_2", "group_3"])
def test_grouped_query_attention_without_alibi_matches_the_reference(heads, kv_heads, prefix_lm):
    """The Llama family's case: no slopes, query head h reading KV head h // group; dk and dv
    summed over the group's query heads (odd row length, several pairs, padding)."""
    q, k, v = _grouped(heads, kv_heads)
    args = (None, SEGMENTS.to(DEVICE), INPUTS.to(DEVICE) if prefix_lm else None)
    ours = _output_and_gradients(triton_kernel.flash_attention, q, k, v, *args)
    reference = _output_and_gradients(reference_attention, q, k, v, *args)
    assert ours[2].shape == k.shape and ours[3].shape == v.shape
    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def test_grouped_query_dropout_is_the_kernels_own_mask_applied_in_plain_attention():
    """With 3 query heads per KV head and no ALiBi: plain attention over K/V repeated per query
    head, with the kernel's regenerated mask, gives its output and gradients (the repeat's
    backward sums each group, as the kernel's dk/dv programs do)."""
    p, heads, kv_heads = 0.3, 6, 2
    q, k, v = _grouped(heads, kv_heads, seq=40)
    segments = SEGMENTS[:, :40].to(DEVICE)
    torch.manual_seed(5)
    ours = _output_and_gradients(triton_kernel.flash_attention, q, k, v, None, segments, None, p)
    torch.manual_seed(5)
    keep = triton_kernel.dropout_keep_mask(triton_kernel.draw_seeds(2, heads, q.device), 2, heads, 40, p)

    def repeated(q, k, v, *args):
        group = heads // kv_heads
        return _attention_with_mask(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), *args)

    plain = _output_and_gradients(repeated, q, k, v, None, segments, keep, p)
    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_grouped_query_attention_in_half_precision_on_a_gpu_matches_the_fp32_reference(dtype, tolerance):
    """Llama-3-8B's head layout (32 query heads over 8 KV heads, head dim 128), rows of
    1,000 tokens in several pairs, no ALiBi, autotuned blocks."""
    q, k, v = _grouped(32, 8, seq=1000, head_dim=128, dtype=dtype)
    segments = torch.tensor([[1] * 300 + [2] * 450 + [3] * 200 + [0] * 50, [1] * 1000], device=DEVICE)
    ours = _output_and_gradients(triton_kernel.flash_attention, q, k, v, None, segments, None)
    reference = _output_and_gradients(reference_attention, *(t.detach().float().requires_grad_() for t in (q, k, v)),
                                      None, segments, None)
    keep = (segments > 0)[:, None, :, None]
    for a, b in zip(ours, reference):  # padding rows' outputs (and their share of dk, dv) are never used
        torch.testing.assert_close((a.float() * keep), b * keep, rtol=tolerance, atol=tolerance)
