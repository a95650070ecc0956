"""Attention over packed xP3 rows as one Triton kernel (FlashAttention-2), forward and backward:
ALiBi computed from each head's slope (or none, for RoPE models, which rotate q and k before),
grouped-query attention (query head h reads KV head h // group), causal AND same-segment masking
(optionally bidirectional among a pair's inputs, the prefix-LM mode), and attention dropout,
without ever materialising the `[s, s]` scores or the dropout mask.

- Forward: one program per (query block, batch x head) keeps a running max and sum (online
  softmax, fp32) and saves the log-sum-exp of each row for the backward.
- Backward: one kernel per (key block, KV head) accumulates dk and dv over the group's query heads
  in turn, one per query block accumulates dq (no atomics, so gradients are deterministic); both
  recompute the probabilities from the saved log-sum-exp.
- Block skipping: segments are contiguous, so query row i sees keys only in `[row_start, row_end)`
  (its segment's start up to itself, or to its pair's last input in the prefix-LM mode) and key
  column j is seen only by queries in `[col_start, col_end)`. `visible_ranges` computes these per
  row on the host; each program loads the rows of its block and visits only the key (or query)
  blocks between their minimum and maximum: other pairs' and padding blocks are never loaded.
  Padding rows (segment 0) see only themselves, as in the other backends.
- Dropout: keep element (i, j) of head (b, h) when `tl.rand(seed[b, h], i * s + j) >= p`, scaled
  by 1 / (1 - p) as `torch.nn.functional.dropout`. The seeds are drawn from the current generator
  (the layer calls the backend inside the tensor-parallel RNG fork: each TP rank its own masks), so
  a recomputation or a resumed run draws the same seeds, and the backward regenerates the same
  mask from them. `dropout_keep_mask` materialises that mask, for tests.

Block sizes are autotuned per row length, head dimension and mode on a GPU; under Triton's CPU
interpreter (`TRITON_INTERPRET=1`) one small configuration runs. Rows may be up to 46,340 tokens
(the dropout offset `i * s + j` is a 32-bit counter; longer ones are refused).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# (BLOCK_M, BLOCK_N, warps, stages) per kernel for A100/H100, chosen so that head dim 128 with
# dropout compiles without register spills (ptxas -v for sm_80 and sm_90a)
GPU_CONFIGS = {
    "forward": ((128, 64, 8, 2), (64, 64, 4, 2)),
    "dkdv": ((32, 64, 8, 2), (32, 64, 4, 2), (16, 64, 4, 2)),
    "dq": ((64, 64, 4, 2), (64, 32, 4, 2)),
}


def _configs(kernel: str) -> list[triton.Config]:
    """The block sizes to try on a GPU; one small one in the interpreter, where trying several
    would only multiply the (slow) work."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in GPU_CONFIGS[kernel]]


TUNING_KEY = ["seq", "group", "HEAD_DIM", "PREFIX_LM", "DROPOUT", "ALIBI"]


@triton.jit
def _keep(seed, rows, cols, seq, p):
    """The dropout mask of a tile: True where the element is kept."""
    return tl.rand(seed, rows[:, None] * seq + cols[None, :]) >= p


@triton.jit
def _scores(q, k, rows, cols, slope, seg_rows, seg_cols, in_rows, in_cols, seq, scale,
            PREFIX_LM: tl.constexpr, ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled q.k (+ ALiBi), -inf where the key is not visible: causal (or both inputs of the
    pair) AND the same segment AND not padding; each row sees itself."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if ALIBI:
        s += slope * (cols[None, :] - rows[:, None]).to(tl.float32)
    visible = cols[None, :] <= rows[:, None]
    if PREFIX_LM:
        visible = visible | (in_rows[:, None] & in_cols[None, :])
    allowed = (seg_rows[:, None] == seg_cols[None, :]) & (seg_rows[:, None] > 0) & visible
    allowed = (allowed | (rows[:, None] == cols[None, :])) & (cols[None, :] < seq)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def _span(starts_ptr, ends_ptr, offs, seq, BLOCK: tl.constexpr, OTHER: tl.constexpr):
    """The block-aligned range `[lo, hi)` of the other axis that this block's rows (or columns)
    may see: from the smallest start, rounded down to a block of `OTHER`, to the largest end."""
    inside = offs < seq
    lo = tl.min(tl.load(starts_ptr + offs, mask=inside, other=seq), axis=0)
    hi = tl.max(tl.load(ends_ptr + offs, mask=inside, other=0), axis=0)
    return (lo // OTHER) * OTHER, hi


@triton.jit
def _tile(head, offs, stride, dims, seq, HEAD_DIM: tl.constexpr):
    """Rows `offs` of one head's `[s, head_dim]` matrix at `head` (zeros past the row's end and
    the head dimension)."""
    return tl.load(head + offs[:, None].to(tl.int64) * stride + dims[None, :],
                   mask=(offs[:, None] < seq) & (dims[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def _store_tile(head, offs, dims, seq, value, HEAD_DIM: tl.constexpr):
    """Rows `offs` of one head's contiguous `[s, head_dim]` output at `head`."""
    tl.store(head + offs[:, None] * HEAD_DIM + dims[None, :], value.to(head.dtype.element_ty),
             mask=(offs[:, None] < seq) & (dims[None, :] < HEAD_DIM))


@triton.jit
def _slope(Slopes, h, ALIBI: tl.constexpr):
    """Head h's ALiBi slope (0 without ALiBi, never read)."""
    if ALIBI:
        return tl.load(Slopes + h)
    return 0.0


@triton.jit
def _positions(Segments, IsInputs, b, offs, seq, outside):
    """Segment ids (`outside` past the row's end) and input flags of positions `offs` of row b."""
    inside = offs < seq
    return (tl.load(Segments + b * seq + offs, mask=inside, other=outside),
            tl.load(IsInputs + b * seq + offs, mask=inside, other=0) != 0)


@triton.jit
def _backward_rows(q_head, do_head, lse_head, delta_head, rows, dims, stride_qs, seq, HEAD_DIM: tl.constexpr):
    """What the backward needs of query rows `rows`: q, dO, log-sum-exp and rowsum(dO * O)."""
    inside = rows < seq
    return (_tile(q_head, rows, stride_qs, dims, seq, HEAD_DIM), _tile(do_head, rows, HEAD_DIM, dims, seq, HEAD_DIM),
            tl.load(lse_head + rows, mask=inside, other=0.0), tl.load(delta_head + rows, mask=inside, other=0.0))


@triton.jit
def _backward_tile(q, k, v, do, lse, delta, rows, cols, slope, seed, seg_rows, seg_cols, in_rows, in_cols, seq,
                   scale, p, PREFIX_LM: tl.constexpr, DROPOUT: tl.constexpr, ALIBI: tl.constexpr,
                   PRECISION: tl.constexpr):
    """The probabilities after dropout (for dv) and the gradient of the scores (for dq, dk) of
    one tile, recomputed from the saved log-sum-exp and the regenerated mask."""
    probs = tl.exp(_scores(q, k, rows, cols, slope, seg_rows, seg_cols, in_rows, in_cols, seq, scale,
                           PREFIX_LM, ALIBI, PRECISION) - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    if DROPOUT:
        keep = _keep(seed, rows, cols, seq, p)
        dropped = tl.where(keep, probs / (1.0 - p), 0.0)
        dp = tl.where(keep, dp / (1.0 - p), 0.0)
    else:
        dropped = probs
    return dropped, probs * (dp - delta[:, None])


@triton.autotune(configs=_configs("forward"), key=TUNING_KEY)
@triton.jit
def _forward_kernel(Q, K, V, O, LSE, Slopes, Seeds, Segments, IsInputs, RowStart, RowEnd, Visited,
                    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                    stride_vb, stride_vh, stride_vs, heads, group, seq, scale, p,
                    HEAD_DIM: tl.constexpr, D: tl.constexpr, PREFIX_LM: tl.constexpr, DROPOUT: tl.constexpr,
                    ALIBI: tl.constexpr, RECORD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    block, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit addresses past 2**31 elements
    b, h = bh // heads, bh % heads
    k_head, v_head = K + b * stride_kb + (h // group) * stride_kh, V + b * stride_vb + (h // group) * stride_vh
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    q = _tile(Q + b * stride_qb + h * stride_qh, rows, stride_qs, dims, seq, HEAD_DIM)
    seg_rows, in_rows = _positions(Segments, IsInputs, b, rows, seq, -1)
    slope, seed = _slope(Slopes, h, ALIBI), tl.load(Seeds + bh)
    lo, hi = _span(RowStart + b * seq, RowEnd + b * seq, rows, seq, BLOCK_M, BLOCK_N)
    if RECORD:
        tl.store(Visited + (bh * seq + block) * 2, lo // BLOCK_N)
        tl.store(Visited + (bh * seq + block) * 2 + 1, tl.cdiv(hi, BLOCK_N))
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k, v = _tile(k_head, cols, stride_ks, dims, seq, HEAD_DIM), _tile(v_head, cols, stride_vs, dims, seq, HEAD_DIM)
        seg_cols, in_cols = _positions(Segments, IsInputs, b, cols, seq, -2)
        s = _scores(q, k, rows, cols, slope, seg_rows, seg_cols, in_rows, in_cols, seq, scale, PREFIX_LM, ALIBI,
                    PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        probs = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        if DROPOUT:
            probs = tl.where(_keep(seed, rows, cols, seq, p), probs / (1.0 - p), 0.0)
        acc = acc * alpha[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    _store_tile(O + bh * seq * HEAD_DIM, rows, dims, seq, acc / l_safe[:, None], HEAD_DIM)
    tl.store(LSE + bh * seq + rows, m_i + tl.log(l_safe), mask=rows < seq)


@triton.autotune(configs=_configs("dkdv"), key=TUNING_KEY)
@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, Delta, DK, DV, Slopes, Seeds, Segments, IsInputs, ColStart, ColEnd,
                 stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                 stride_vb, stride_vh, stride_vs, heads, group, seq, scale, p,
                 HEAD_DIM: tl.constexpr, D: tl.constexpr, PREFIX_LM: tl.constexpr, DROPOUT: tl.constexpr,
                 ALIBI: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (key block, batch x KV head): dk and dv summed over the KV head's group of
    query heads, one after the other (deterministic, no atomics)."""
    block, bkv = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit addresses past 2**31 elements
    kv_heads = heads // group
    b, kvh = bkv // kv_heads, bkv % kv_heads
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D)
    k = _tile(K + b * stride_kb + kvh * stride_kh, cols, stride_ks, dims, seq, HEAD_DIM)
    v = _tile(V + b * stride_vb + kvh * stride_vh, cols, stride_vs, dims, seq, HEAD_DIM)
    seg_cols, in_cols = _positions(Segments, IsInputs, b, cols, seq, -2)
    lo, hi = _span(ColStart + b * seq, ColEnd + b * seq, cols, seq, BLOCK_N, BLOCK_M)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    for member in range(0, group):
        h = kvh * group + member
        bh = b * heads + h
        q_head = Q + b * stride_qb + h * stride_qh
        slope, seed = _slope(Slopes, h, ALIBI), tl.load(Seeds + bh)
        for start in range(lo, hi, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q, do, lse, delta = _backward_rows(q_head, DO + bh * seq * HEAD_DIM, LSE + bh * seq, Delta + bh * seq,
                                               rows, dims, stride_qs, seq, HEAD_DIM)
            seg_rows, in_rows = _positions(Segments, IsInputs, b, rows, seq, -1)
            dropped, ds = _backward_tile(q, k, v, do, lse, delta, rows, cols, slope, seed, seg_rows, seg_cols,
                                         in_rows, in_cols, seq, scale, p, PREFIX_LM, DROPOUT, ALIBI, PRECISION)
            dv += tl.dot(tl.trans(dropped.to(do.dtype)), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    _store_tile(DK + bkv * seq * HEAD_DIM, cols, dims, seq, dk * scale, HEAD_DIM)
    _store_tile(DV + bkv * seq * HEAD_DIM, cols, dims, seq, dv, HEAD_DIM)


@triton.autotune(configs=_configs("dq"), key=TUNING_KEY)
@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, Delta, DQ, Slopes, Seeds, Segments, IsInputs, RowStart, RowEnd,
               stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
               stride_vb, stride_vh, stride_vs, heads, group, seq, scale, p,
               HEAD_DIM: tl.constexpr, D: tl.constexpr, PREFIX_LM: tl.constexpr, DROPOUT: tl.constexpr,
               ALIBI: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    block, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit addresses past 2**31 elements
    b, h = bh // heads, bh % heads
    k_head, v_head = K + b * stride_kb + (h // group) * stride_kh, V + b * stride_vb + (h // group) * stride_vh
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    q, do, lse, delta = _backward_rows(Q + b * stride_qb + h * stride_qh, DO + bh * seq * HEAD_DIM, LSE + bh * seq,
                                       Delta + bh * seq, rows, dims, stride_qs, seq, HEAD_DIM)
    seg_rows, in_rows = _positions(Segments, IsInputs, b, rows, seq, -1)
    slope, seed = _slope(Slopes, h, ALIBI), tl.load(Seeds + bh)
    lo, hi = _span(RowStart + b * seq, RowEnd + b * seq, rows, seq, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k, v = _tile(k_head, cols, stride_ks, dims, seq, HEAD_DIM), _tile(v_head, cols, stride_vs, dims, seq, HEAD_DIM)
        seg_cols, in_cols = _positions(Segments, IsInputs, b, cols, seq, -2)
        ds = _backward_tile(q, k, v, do, lse, delta, rows, cols, slope, seed, seg_rows, seg_cols, in_rows, in_cols,
                            seq, scale, p, PREFIX_LM, DROPOUT, ALIBI, PRECISION)[1]
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    _store_tile(DQ + bh * seq * HEAD_DIM, rows, dims, seq, dq * scale, HEAD_DIM)


@triton.jit
def _mask_kernel(Mask, Seeds, seq, p, BLOCK: tl.constexpr):
    block_m, block_n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = block_m * BLOCK + tl.arange(0, BLOCK)
    cols = block_n * BLOCK + tl.arange(0, BLOCK)
    keep = _keep(tl.load(Seeds + bh), rows, cols, seq, p)
    tl.store(Mask + bh * seq * seq + rows[:, None] * seq + cols[None, :], keep.to(tl.int8),
             mask=(rows[:, None] < seq) & (cols[None, :] < seq))


def visible_ranges(segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """`(row_start, row_end, col_start, col_end)`, int32 `[b, s]`: query row i sees only keys in
    `[row_start, row_end)`, key column j is seen only by queries in `[col_start, col_end)`; a
    superset of the mask for any layout, exact for contiguous segments."""
    batch, seq = segment_ids.shape
    device = segment_ids.device
    positions = torch.arange(seq, device=device).expand(batch, seq)
    # one slot per (row, segment id); ids above `seq` share the last slot (a superset, still
    # right), so no device sync is needed to size the table
    segments = segment_ids.long()
    index = (segments.clamp(0, seq) + (seq + 1) * torch.arange(batch, device=device)[:, None]).flatten()
    slots = batch * (seq + 1)

    def reduce(where: torch.Tensor, how: str, empty: int) -> torch.Tensor:
        out = torch.full((slots,), empty, dtype=torch.long, device=device)
        out.scatter_reduce_(0, index, torch.where(where, positions, empty).flatten(), how)  # `empty` is neutral
        return out[index].view(batch, seq)

    real = segments > 0
    everything = torch.ones_like(real)
    row_start = torch.where(real, reduce(everything, "amin", seq), positions)
    row_end = positions + 1
    col_start = positions
    col_end = torch.where(real, reduce(everything, "amax", -1) + 1, positions + 1)
    if is_inputs is not None:
        inputs = is_inputs.bool() & real
        row_end = torch.where(inputs, reduce(inputs, "amax", -1) + 1, row_end)  # up to the pair's last input
        col_start = torch.where(inputs, reduce(inputs, "amin", seq), col_start)  # from the pair's first input
    return tuple(t.to(torch.int32).contiguous() for t in (row_start, row_end, col_start, col_end))


MAX_SEQ = 46340  # rows * seq + cols, the dropout counter, stays below 2**31


def _common(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, prefix_lm: bool,
            alibi: bool) -> dict:
    heads, seq, head_dim = q.shape[1], q.shape[2], q.shape[3]
    if seq > MAX_SEQ:
        raise ValueError(f"the Triton attention kernel takes rows of up to {MAX_SEQ} tokens, not {seq}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share a dtype, not {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or heads % k.shape[1]:
        raise ValueError(f"k and v ({tuple(k.shape)}, {tuple(v.shape)}) must have a number of heads that divides "
                         f"q's {heads}")
    return dict(stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qs=q.stride(2),
                stride_kb=k.stride(0), stride_kh=k.stride(1), stride_ks=k.stride(2),
                stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vs=v.stride(2),
                heads=heads, group=heads // k.shape[1], seq=seq, scale=head_dim**-0.5, p=float(dropout_p),
                HEAD_DIM=head_dim, D=max(16, triton.next_power_of_2(head_dim)), PREFIX_LM=prefix_lm,
                DROPOUT=dropout_p > 0, ALIBI=alibi,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def _head_dim_strided(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _FlashAttention(torch.autograd.Function):
    """The kernels as one autograd node: saves q, k, v, the output, the log-sum-exp and the
    dropout seeds (never the probabilities or the mask)."""

    @staticmethod
    def forward(ctx, q, k, v, slopes, segment_ids, is_inputs, dropout_p, seeds):
        prefix_lm = is_inputs is not None
        segments = segment_ids.to(device=q.device, dtype=torch.int32).contiguous()
        inputs = (is_inputs if prefix_lm else torch.zeros_like(segment_ids)).to(device=q.device, dtype=torch.int32).contiguous()
        ranges = visible_ranges(segment_ids, is_inputs)
        q, k, v = (_head_dim_strided(t) for t in (q, k, v))
        slopes = _slopes(slopes, q.device)
        out, lse = launch_forward(q, k, v, slopes, seeds, segments, inputs, ranges, dropout_p, prefix_lm)[:2]
        ctx.save_for_backward(q, k, v, out, lse, slopes, seeds, segments, inputs, *ranges)
        ctx.dropout_p, ctx.prefix_lm, ctx.alibi = dropout_p, prefix_lm, slopes.numel() > 0
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, slopes, seeds, segments, inputs, row_start, row_end, col_start, col_end = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1)
        batch, heads, seq, _ = q.shape
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        common = _common(q, k, v, ctx.dropout_p, ctx.prefix_lm, ctx.alibi)
        _dkdv_kernel[lambda meta: (triton.cdiv(seq, meta["BLOCK_N"]), batch * k.shape[1])](
            q, k, v, grad_out, lse, delta, dk, dv, slopes, seeds, segments, inputs, col_start, col_end, **common)
        _dq_kernel[lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), batch * heads)](
            q, k, v, grad_out, lse, delta, dq, slopes, seeds, segments, inputs, row_start, row_end, **common)
        return dq, dk, dv, None, None, None, None, None


def _slopes(slopes: torch.Tensor | None, device) -> torch.Tensor:
    """The slopes as the kernels read them (fp32, contiguous); empty without ALiBi."""
    if slopes is None:
        return torch.empty(0, dtype=torch.float32, device=device)
    return slopes.to(device=device, dtype=torch.float32).contiguous()


def launch_forward(q, k, v, slopes, seeds, segments, inputs, ranges, dropout_p, prefix_lm, record=False):
    """The forward kernel on prepared inputs: `(out, lse, visited)`, where with `record` the
    visited tensor holds, per (batch x head, query block), the key blocks `[first, last)` it read.
    `slopes` None (or empty): no ALiBi."""
    slopes = _slopes(slopes, q.device)
    batch, heads, seq, _ = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq), dtype=torch.float32, device=q.device)
    visited = torch.zeros((batch * heads, seq, 2) if record else (1,), dtype=torch.int32, device=q.device)
    _forward_kernel[lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), batch * heads)](
        q, k, v, out, lse, slopes, seeds, segments, inputs, ranges[0], ranges[1], visited,
        RECORD=record, **_common(q, k, v, dropout_p, prefix_lm, slopes.numel() > 0))
    return out, lse, visited


def draw_seeds(batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """One dropout seed per (batch, head), from the current generator of `device`."""
    return torch.randint(0, 2**31 - 1, (batch * heads,), dtype=torch.int64, device=device)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor | None,
                    segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """`[b, heads, s, head_dim]` attention of packed rows (the `attention` interface of
    `models/common/attention.py`: k and v `[b, kv_heads, s, head_dim]`, `slopes` None without
    ALiBi), differentiable in q, k and v."""
    batch, heads = q.shape[:2]
    seeds = (draw_seeds(batch, heads, q.device) if dropout_p > 0
             else torch.zeros(batch * heads, dtype=torch.int64, device=q.device))
    return _FlashAttention.apply(q, k, v, slopes, segment_ids, is_inputs, float(dropout_p), seeds)


def dropout_keep_mask(seeds: torch.Tensor, batch: int, heads: int, seq: int, p: float) -> torch.Tensor:
    """The kernel's dropout mask for `seeds` (from `draw_seeds`), `[b, heads, s, s]` bool: what
    the attention kernels regenerate tile by tile and never store."""
    mask = torch.empty((batch * heads, seq, seq), dtype=torch.int8, device=seeds.device)
    block = 16
    _mask_kernel[(triton.cdiv(seq, block), triton.cdiv(seq, block), batch * heads)](mask, seeds, seq, float(p),
                                                                                     BLOCK=block)
    return mask.view(batch, heads, seq, seq).bool()
