"""Each fused kernel against the reference path it replaces: the chunked LM head + vocab-parallel
cross entropy at TP=1 and TP=2 (two gloo processes), loss and gradients; FlexAttention (ALiBi,
packed causal, prefix LM) forward on CPU, forward and backward on a GPU; the compiled bias + GeLU
and bias + dropout + residual, alone and in a whole model (CPU; also bf16 and fp16 on a GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from helpers.bloom_workers import packed_batch
from helpers.compilation import compiled_frames, fresh_compilation
from helpers.distributed import gloo_world
from helpers.distributed import free_port

from megatron.models.common.loss import loss_weights
from megatron.kernels.fused_bias import bias_dropout_add, bias_gelu, fused
from megatron.kernels.lm_head_loss import lm_head_loss
from megatron.models.common.alibi import alibi_slopes
from megatron.models.common.attention import flex_attention, reference_attention
from megatron.models.bloom.model import BloomModel
from megatron.models.common.loss import packed_loss
from helpers.tiny import tiny_config
from megatron.models.common.lm_head import lm_logits
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel
from megatron.utils.megatron_core import parallel_state

VOCAB, HIDDEN = 256, 32
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the GPU variants: run by `pytest -m gpu` (bench/gpu_check.sh), skipped without CUDA
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")]


def _lm_head_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 24, HIDDEN, generator=g)
    weight = torch.randn(VOCAB, HIDDEN, generator=g) * 0.5
    labels = torch.randint(0, VOCAB, (2, 24), generator=g)
    segment_ids = torch.tensor([[1] * 10 + [2] * 12 + [0] * 2, [1] * 24])
    loss_mask = (torch.rand(2, 24, generator=g) < 0.3).float() * (segment_ids > 0)
    return hidden, weight, labels, segment_ids, loss_mask


def _lm_head_gradients(fused: bool, norm_target_loss: bool, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    hidden, weight, labels, segment_ids, loss_mask = (t.to(device) for t in _lm_head_case())
    hidden = hidden.to(dtype).requires_grad_()
    weight = weight.chunk(tp)[rank].to(dtype).clone().requires_grad_()
    if fused:
        loss = lm_head_loss(hidden, weight, labels, loss_weights(loss_mask, segment_ids, norm_target_loss),
                            chunk_tokens=5)
    else:
        loss = packed_loss(lm_logits(hidden, weight, gather=False), labels, loss_mask, segment_ids, norm_target_loss)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def _differences(tp: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    initialize_parallel(tp_size=tp)
    differences = {}
    for norm in (False, True):
        fused, reference = _lm_head_gradients(True, norm, device, dtype), _lm_head_gradients(False, norm, device, dtype)
        for name, a, b in zip(("loss", "hidden grad", "weight grad"), fused, reference):
            differences[f"{name} norm={norm}"] = float((a - b).abs().max() / b.abs().max())
    return differences


def _tp2_worker(rank: int, port: int, out: str) -> None:
    with gloo_world(rank, 2, port):
        differences = _differences(2)
        torch.save(differences, f"{out}.{rank}")


def test_chunked_lm_head_loss_matches_the_reference_at_tp1():
    with gloo_world(0, 1, free_port()):
        differences = _differences(1)
    assert max(differences.values()) < 1e-5, differences


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=ON_GPU, id="bf16")])
def test_chunked_lm_head_loss_in_half_precision_on_a_gpu_matches_the_reference(dtype):
    with gloo_world(0, 1, free_port()):
        differences = _differences(1, "cuda", dtype)
    assert max(differences.values()) < 2e-2, differences


def test_chunked_lm_head_loss_in_fp16_keeps_the_small_gradients():
    """fp16's loss scale comes only in the backward, and the unscaled gradient entries of a large
    vocabulary (w * softmax: 1e-3 * 2e-5 here) are below fp16's smallest: they must not flush to
    zero before it (they are formed in fp32). As the reference path, loss x 1024 in fp16, against
    fp32."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(1000, 16, generator=g), torch.randn(50000, 16, generator=g) * 0.02
    labels, weights = torch.randint(0, 50000, (1000,), generator=g), torch.full((1000,), 1e-3)

    def weight_gradient(dtype):
        h, w = (t.to(dtype).requires_grad_() for t in (hidden.clone(), weight.clone()))
        (lm_head_loss(h, w, labels, weights) * 1024).backward()
        return w.grad.float()

    half, full = weight_gradient(torch.float16), weight_gradient(torch.float32)
    assert float((half == 0).float().mean()) < 1e-3  # before the fp32 accumulation: 97% zeros
    assert float((half - full).abs().max() / full.abs().max()) < 2e-3


def test_chunked_lm_head_loss_scales_its_gradients_by_the_loss_scale_once():
    """A scaled loss (loss scale, 1 / accumulation steps) scales the gradients formed in the
    forward; they are handed over in place, so a second backward through the same loss is refused."""
    hidden, weight, labels, segment_ids, loss_mask = _lm_head_case()
    weights = loss_weights(loss_mask, segment_ids, False)
    leaves = [hidden.requires_grad_(), weight.requires_grad_()]
    plain = torch.autograd.grad(lm_head_loss(hidden, weight, labels, weights), leaves)
    loss = lm_head_loss(hidden, weight, labels, weights) * 3
    scaled = torch.autograd.grad(loss, leaves, retain_graph=True)
    for a, b in zip(scaled, plain):
        torch.testing.assert_close(a, 3 * b)
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(loss, leaves)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_chunked_lm_head_loss_matches_the_reference_at_tp2(tmp_path):
    out = str(tmp_path / "differences")
    mp.spawn(_tp2_worker, args=(free_port(), out), nprocs=2)
    for rank in range(2):
        differences = torch.load(f"{out}.{rank}")
        assert max(differences.values()) < 1e-5, (rank, differences)


def test_chunked_lm_head_loss_skips_tokens_without_weight_and_keeps_no_graph_in_eval():
    hidden, weight, labels, segment_ids, loss_mask = _lm_head_case()
    weights = loss_weights(loss_mask, segment_ids, False)
    with torch.no_grad():
        loss = lm_head_loss(hidden, weight, labels, weights)
    assert not loss.requires_grad
    changed = hidden.clone()
    changed[weights == 0] = 1e6  # tokens without loss weight never reach the LM head
    with torch.no_grad():
        assert lm_head_loss(changed, weight, labels, weights) == loss


# (dtype, tolerance): fp32 everywhere; the half precisions training uses where they run fast
HALF = [pytest.param(torch.bfloat16, 2e-2, marks=ON_GPU, id="bf16"),
        pytest.param(torch.float16, 5e-3, marks=ON_GPU, id="fp16")]
PRECISIONS = [pytest.param(torch.float32, 1e-5, id="fp32"), *HALF]


@pytest.mark.parametrize("dtype,tolerance", PRECISIONS)
@pytest.mark.parametrize("prefix_lm", [False, True])
def test_flex_attention_matches_the_reference(prefix_lm, dtype, tolerance):
    """Forward on CPU (FlexAttention has no CPU backward); forward and backward on a GPU, where
    half-precision inputs are compared with the reference computed in fp32 from the same values."""
    g = torch.Generator().manual_seed(0)
    batch, heads, seq, head_dim = 2, 4, 200, 16
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=g).to(DEVICE, dtype) for _ in range(3))
    segment_ids = torch.tensor([[1] * 70 + [2] * 90 + [0] * 40, [1] * 150 + [2] * 50], device=DEVICE)
    is_inputs = (torch.arange(seq, device=DEVICE) % 50 < 20).expand(batch, seq) if prefix_lm else None
    slopes = alibi_slopes(heads)
    if DEVICE == "cuda":
        for t in (q, k, v):
            t.requires_grad_()
    flex = flex_attention(q, k, v, slopes, segment_ids, is_inputs)
    reference = reference_attention(*(t.float() for t in (q, k, v)), slopes, segment_ids, is_inputs)
    keep = segment_ids > 0  # padding queries' outputs are never used
    atol = max(tolerance, 1e-5)
    torch.testing.assert_close(flex.transpose(1, 2)[keep].float(), reference.transpose(1, 2)[keep],
                               rtol=max(tolerance, 1e-4), atol=atol)
    if DEVICE == "cuda":
        grad = torch.randn(flex.shape, device=DEVICE)
        for a, b in zip(torch.autograd.grad(flex, (q, k, v), grad.to(dtype)),
                        torch.autograd.grad(reference, (q, k, v), grad)):
            torch.testing.assert_close(a.float(), b.float(), rtol=max(tolerance, 1e-3), atol=max(tolerance, 1e-4))


@pytest.mark.parametrize("dtype,tolerance", PRECISIONS)
def test_flex_attention_with_grouped_kv_heads_and_no_alibi_matches_the_reference(dtype, tolerance):
    """The Llama family's call: 8 query heads over 2 KV heads (`enable_gqa`), no score modifier;
    forward on CPU, forward and backward on a GPU."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 8, 200, 16, generator=g).to(DEVICE, dtype)
    k, v = (torch.randn(2, 2, 200, 16, generator=g).to(DEVICE, dtype) for _ in range(2))
    segment_ids = torch.tensor([[1] * 70 + [2] * 90 + [0] * 40, [1] * 150 + [2] * 50], device=DEVICE)
    if DEVICE == "cuda":
        for t in (q, k, v):
            t.requires_grad_()
    flex = flex_attention(q, k, v, None, segment_ids)
    reference = reference_attention(*(t.float() for t in (q, k, v)), None, segment_ids)
    keep = segment_ids > 0
    torch.testing.assert_close(flex.transpose(1, 2)[keep].float(), reference.transpose(1, 2)[keep],
                               rtol=max(tolerance, 1e-4), atol=max(tolerance, 1e-5))
    if DEVICE == "cuda":
        grad = torch.randn(flex.shape, device=DEVICE)
        for a, b in zip(torch.autograd.grad(flex, (q, k, v), grad.to(dtype)),
                        torch.autograd.grad(reference, (q, k, v), grad)):
            torch.testing.assert_close(a.float(), b.float(), rtol=max(tolerance, 1e-3), atol=max(tolerance, 1e-4))


def test_flex_attention_rebuilds_its_block_mask_for_changed_segments():
    """Two segments of 256 leave whole 128-blocks masked (skipped); one segment of 512 in the same
    tensor, changed in place, must not reuse that block mask."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 512, 16, generator=g).to(DEVICE) for _ in range(3))
    slopes = alibi_slopes(2)
    segment_ids = torch.tensor([[1] * 256 + [2] * 256], device=DEVICE)
    for _ in range(2):
        torch.testing.assert_close(flex_attention(q, k, v, slopes, segment_ids),
                                   reference_attention(q, k, v, slopes, segment_ids), rtol=1e-4, atol=1e-5)
        segment_ids[0, 256:] = 1


def test_flex_attention_compiles_once_for_new_micro_batches():
    """The first call compiles FlexAttention, once. Each call makes a new ALiBi closure and
    (for new segments) a new block mask: neither may make `torch.compile` compile again, or every
    layer of every step would pay a compilation."""

    def call(split: int) -> None:
        q, k, v = (torch.randn(1, 4, 256, 16, device=DEVICE) for _ in range(3))
        segment_ids = torch.tensor([[1] * split + [2] * (256 - split)], device=DEVICE)
        flex_attention(q, k, v, alibi_slopes(4), segment_ids)

    fresh_compilation()
    call(100)
    assert compiled_frames() == 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        for split in (60, 130, 200):
            call(split)
    assert compiled_frames() == 1


def _leaves(*shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_() for shape in shapes]


def _outputs_and_gradients(function, inputs, *args):
    output = function(*inputs, *args)
    grad = torch.ones_like(output) + torch.arange(output.shape[-1], device=output.device) / output.shape[-1]
    return [output, *torch.autograd.grad(output, inputs, grad)]


@pytest.mark.parametrize("dtype,tolerance", PRECISIONS)
def test_compiled_bias_gelu_matches_the_reference(dtype, tolerance):
    """Compiled at its first call, not again at the next."""
    inputs = _leaves((2, 24, 64), (64,), dtype=dtype)
    fresh_compilation()
    for a, b in zip(_outputs_and_gradients(fused(bias_gelu), inputs),
                    _outputs_and_gradients(bias_gelu, inputs)):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert compiled_frames() == 1
    _outputs_and_gradients(fused(bias_gelu), inputs)
    assert compiled_frames() == 1


@pytest.mark.parametrize("dtype,tolerance", PRECISIONS)
def test_compiled_bias_dropout_add_matches_the_reference(dtype, tolerance):
    """Without dropout (p=0, or eval) it is the reference; with dropout, each element is the
    residual plus either 0 or (x + bias) / (1 - p), a fraction p of them dropped, the gradient
    flowing through the kept ones only, and the same seed draws the same mask. Compiled once for
    each (p, training) it is called with, not again when called with them again."""
    p = 0.3
    x, bias, residual = inputs = _leaves((4, 64, 64), (64,), (4, 64, 64), dtype=dtype)
    fresh_compilation()
    for args in ((0.0, True), (p, False)):
        for a, b in zip(_outputs_and_gradients(fused(bias_dropout_add), inputs, *args),
                        _outputs_and_gradients(bias_dropout_add, inputs, *args)):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    torch.manual_seed(5)
    output = fused(bias_dropout_add)(x, bias, residual, p, True)
    assert compiled_frames() == 3
    torch.manual_seed(5)
    assert torch.equal(fused(bias_dropout_add)(x, bias, residual, p, True), output)
    assert compiled_frames() == 3
    x_grad, bias_grad, residual_grad = torch.autograd.grad(output.sum(), inputs)
    kept = (x_grad != 0).float()
    assert abs(1 - kept.mean().item() - p) < 0.03
    torch.testing.assert_close(x_grad.float(), kept / (1 - p), rtol=tolerance, atol=tolerance)
    expected = residual.float() + kept / (1 - p) * (x.float() + bias.float())
    torch.testing.assert_close(output.float(), expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(bias_grad.float(), (kept / (1 - p)).sum(dim=(0, 1)), rtol=tolerance, atol=tolerance * 256)
    assert torch.equal(residual_grad, torch.ones_like(residual))


def _model_loss_and_gradients(fusion: bool) -> list[torch.Tensor]:
    config = tiny_config(bias_gelu_fusion=fusion, bias_dropout_fusion=fusion)
    model = BloomModel(config, model_parallel_config(), init_seed=3).train()
    batch, _ = packed_batch()
    loss = model.loss(batch)
    return [loss, *torch.autograd.grad(loss, list(model.parameters()))]


def test_bloom_with_compiled_bias_fusions_matches_the_reference():
    """The whole model (dropout 0): the same loss and parameter gradients either way; both fused
    functions compiled, once each for all the blocks."""
    fresh_compilation()
    with gloo_world(0, 1, free_port()):
        initialize_parallel(1, 1)
        compiled = _model_loss_and_gradients(True)
        assert compiled_frames() == 2
        for a, b in zip(compiled, _model_loss_and_gradients(False)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
