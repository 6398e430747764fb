"""Triton block-causal attention for the teacher-forcing training forward: forward and backward.

FlashAttention-2 with FlexAttention's block sparsity (`block_mask.BlockCausalMask`): each query tile walks only the
key tiles its lists name — full tiles with no mask at all, partial tiles with the visibility evaluated per element
in-kernel from the per-token kind and chunk arrays and the window (`_visible`), hidden tiles never. Tokens keep
the teacher's order.

- forward: one program per (query tile, batch, head); online softmax in fp32; stores O and the log-sum-exp
  (log2 units) for the backward.
- backward: Δ = rowsum(dO·O) in PyTorch; dK/dV with one program per (key tile, batch, K/V head), looping over the
  G query heads of its group and the query tiles that see it (the transposed lists); dQ with one program per
  (query tile, batch, head) over the key tiles. No atomics: every output tile has one owner.

q, k, v are made contiguous [B, H, T, D] (one copy of the transposed views the transformer hands over).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from sonate.kernels.block_mask import BlockCausalMask

LOG2E = 1.4426950408889634


@triton.jit
def _visible(q_kind, q_chunk, k_kind, k_chunk, window):
    """`block_mask.visible` (`TokenLayout.mask` elementwise) for the kernels' partial tiles; kinds PREFIX 0,
    CLEAN 1, NOISY 2. The tests hold both against `TokenLayout.mask`."""
    in_window = (k_chunk >= q_chunk - window) & (k_chunk <= q_chunk)
    clean_sees = (q_kind == 1) & (k_kind == 1) & in_window
    noisy_sees = (q_kind == 2) & (
        ((k_kind == 1) & in_window & (k_chunk < q_chunk)) | ((k_kind == 2) & (k_chunk == q_chunk))
    )
    return (k_kind == 0) | clean_sees | noisy_sees


@triton.jit
def _load_rows(ptr, rows, tokens, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """Rows `rows` of a contiguous [T, D] slice; bounds-checked only when MASKED."""
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = ptr + rows[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    if MASKED:  # noqa: SIM108 (a statement Triton resolves at compile time)
        x = tl.load(ptrs, mask=(rows < tokens)[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, q_kind, q_chunk, k_base, v_base, KIND, CHUNK, INDEX, count, tokens, window, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    for i in range(count):
        cols = tl.load(INDEX + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, cols, tokens, HEAD_DIM, MASKED)
        v = _load_rows(v_base, cols, tokens, HEAD_DIM, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        if MASKED:
            col_ok = cols < tokens
            k_kind = tl.load(KIND + cols, mask=col_ok, other=-1)
            k_chunk = tl.load(CHUNK + cols, mask=col_ok, other=0)
            seen = _visible(q_kind[:, None], q_chunk[:, None], k_kind[None, :], k_chunk[None, :], window)
            s = tl.where(seen & col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _forward_kernel(
    Q, K, V, OUT, LSE, KIND, CHUNK,
    PARTIAL_COUNT, PARTIAL_INDEX, FULL_COUNT, FULL_INDEX,
    n_heads, group, tokens, key_tiles, window, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    tile, bh = tl.program_id(0), tl.program_id(1)
    kv_bh = bh // n_heads * (n_heads // group) + bh % n_heads // group
    q_base = Q + bh.to(tl.int64) * tokens * HEAD_DIM
    k_base = K + kv_bh.to(tl.int64) * tokens * HEAD_DIM
    v_base = V + kv_bh.to(tl.int64) * tokens * HEAD_DIM
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < tokens
    q = _load_rows(q_base, rows, tokens, HEAD_DIM, True)
    q_kind = tl.load(KIND + rows, mask=row_ok, other=-1)
    q_chunk = tl.load(CHUNK + rows, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lists = tile * key_tiles
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, q_kind, q_chunk, k_base, v_base, KIND, CHUNK, FULL_INDEX + lists,
        tl.load(FULL_COUNT + tile), tokens, window, qk_scale, HEAD_DIM, BLOCK_N, False,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, q_kind, q_chunk, k_base, v_base, KIND, CHUNK, PARTIAL_INDEX + lists,
        tl.load(PARTIAL_COUNT + tile), tokens, window, qk_scale, HEAD_DIM, BLOCK_N, True,
    )  # fmt: skip
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))  # inf: p = 0 in backward
    offs_d = tl.arange(0, HEAD_DIM)
    o_ptrs = OUT + bh.to(tl.int64) * tokens * HEAD_DIM + rows[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * tokens + rows, lse, mask=row_ok)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, k_kind, k_chunk, q_base, do_base, lse_base, delta_base, KIND, CHUNK, INDEX, count,
    tokens, window, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    for i in range(count):
        rows = tl.load(INDEX + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base, rows, tokens, HEAD_DIM, MASKED)
        do = _load_rows(do_base, rows, tokens, HEAD_DIM, MASKED)
        if MASKED:
            row_ok = rows < tokens
            lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        else:
            lse = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale - lse[None, :])  # [N, M]
        if MASKED:
            q_kind = tl.load(KIND + rows, mask=row_ok, other=-1)
            q_chunk = tl.load(CHUNK + rows, mask=row_ok, other=0)
            seen = _visible(q_kind[None, :], q_chunk[None, :], k_kind[:, None], k_chunk[:, None], window)
            p_t = tl.where(seen & row_ok[None, :], p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision="ieee")
        dp_t = tl.dot(v, tl.trans(do), input_precision="ieee")
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision="ieee")
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KIND, CHUNK,
    PARTIAL_COUNT, PARTIAL_INDEX, FULL_COUNT, FULL_INDEX,
    n_kv_heads, group, tokens, query_tiles, window, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    tile, kv_bh = tl.program_id(0), tl.program_id(1)
    cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < tokens
    kv_offset = kv_bh.to(tl.int64) * tokens * HEAD_DIM
    k = _load_rows(K + kv_offset, cols, tokens, HEAD_DIM, True)
    v = _load_rows(V + kv_offset, cols, tokens, HEAD_DIM, True)
    k_kind = tl.load(KIND + cols, mask=col_ok, other=-1)
    k_chunk = tl.load(CHUNK + cols, mask=col_ok, other=0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    lists = tile * query_tiles
    full_count, partial_count = tl.load(FULL_COUNT + tile), tl.load(PARTIAL_COUNT + tile)
    first_head = kv_bh // n_kv_heads * n_kv_heads * group + kv_bh % n_kv_heads * group
    for g in range(group):
        bh = (first_head + g).to(tl.int64)
        q_base, do_base = Q + bh * tokens * HEAD_DIM, DO + bh * tokens * HEAD_DIM
        lse_base, delta_base = LSE + bh * tokens, DELTA + bh * tokens
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, k_kind, k_chunk, q_base, do_base, lse_base, delta_base, KIND, CHUNK,
            FULL_INDEX + lists, full_count, tokens, window, qk_scale, HEAD_DIM, BLOCK_M, False,
        )  # fmt: skip
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, k_kind, k_chunk, q_base, do_base, lse_base, delta_base, KIND, CHUNK,
            PARTIAL_INDEX + lists, partial_count, tokens, window, qk_scale, HEAD_DIM, BLOCK_M, True,
        )  # fmt: skip
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = kv_offset + cols[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(DK + ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, q_kind, q_chunk, k_base, v_base, KIND, CHUNK, INDEX, count, tokens, window, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    for i in range(count):
        cols = tl.load(INDEX + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, cols, tokens, HEAD_DIM, MASKED)
        v = _load_rows(v_base, cols, tokens, HEAD_DIM, MASKED)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale - lse[:, None])
        if MASKED:
            col_ok = cols < tokens
            k_kind = tl.load(KIND + cols, mask=col_ok, other=-1)
            k_chunk = tl.load(CHUNK + cols, mask=col_ok, other=0)
            seen = _visible(q_kind[:, None], q_chunk[:, None], k_kind[None, :], k_chunk[None, :], window)
            p = tl.where(seen & col_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    return dq


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KIND, CHUNK,
    PARTIAL_COUNT, PARTIAL_INDEX, FULL_COUNT, FULL_INDEX,
    n_heads, group, tokens, key_tiles, window, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    tile, bh = tl.program_id(0), tl.program_id(1)
    kv_bh = bh // n_heads * (n_heads // group) + bh % n_heads // group
    q_offset = bh.to(tl.int64) * tokens * HEAD_DIM
    k_base = K + kv_bh.to(tl.int64) * tokens * HEAD_DIM
    v_base = V + kv_bh.to(tl.int64) * tokens * HEAD_DIM
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < tokens
    q = _load_rows(Q + q_offset, rows, tokens, HEAD_DIM, True)
    do = _load_rows(DO + q_offset, rows, tokens, HEAD_DIM, True)
    lse = tl.load(LSE + bh.to(tl.int64) * tokens + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * tokens + rows, mask=row_ok, other=0.0)
    q_kind = tl.load(KIND + rows, mask=row_ok, other=-1)
    q_chunk = tl.load(CHUNK + rows, mask=row_ok, other=0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lists = tile * key_tiles
    dq = _dq_tiles(
        dq, q, do, lse, delta, q_kind, q_chunk, k_base, v_base, KIND, CHUNK, FULL_INDEX + lists,
        tl.load(FULL_COUNT + tile), tokens, window, qk_scale, HEAD_DIM, BLOCK_N, False,
    )  # fmt: skip
    dq = _dq_tiles(
        dq, q, do, lse, delta, q_kind, q_chunk, k_base, v_base, KIND, CHUNK, PARTIAL_INDEX + lists,
        tl.load(PARTIAL_COUNT + tile), tokens, window, qk_scale, HEAD_DIM, BLOCK_N, True,
    )  # fmt: skip
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = DQ + q_offset + rows[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def supports(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why these kernels cannot take these inputs, or None when they can."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[2] != k.shape[2]:
        return "q, k, v must be [B, H, T, D] over one sequence, k and v alike"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must share one of float16, bfloat16, float32 (got {q.dtype}, {k.dtype}, {v.dtype})"
    d = q.shape[-1]
    if d < 16 or d > 256 or d & (d - 1) or k.shape[-1] != d:
        return f"head_dim must be a power of two in 16…256 (got {d})"
    if q.shape[1] % k.shape[1] or q.shape[0] != k.shape[0]:
        return "the query heads must be a multiple of the K/V heads, and the batches equal"
    return None


def _blocks(head_dim: int, device: torch.device) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward, and of both backward kernels."""
    if device.type != "cuda":  # the interpreter: small tiles, so small tests still cross tile boundaries
        return (32, 32, 1, 1), (32, 32, 1, 1)
    forward = (128, 64, 8 if head_dim > 64 else 4, 3)
    backward = (64, 64, 8 if head_dim > 64 else 4, 2)
    return forward, backward


class _BlockCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: BlockCausalMask) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        batch, heads, tokens, head_dim = q.shape
        group = heads // k.shape[1]
        (block_m, block_n, warps, stages), _ = _blocks(head_dim, q.device)
        lists = mask.tiles(block_m, block_n, q.device)
        kind, chunk = mask.arrays(q.device)
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, tokens, device=q.device, dtype=torch.float32)
        grid = (triton.cdiv(tokens, block_m), batch * heads)
        _forward_kernel[grid](
            q, k, v, out, lse, kind, chunk,
            lists.partial_count, lists.partial_index, lists.full_count, lists.full_index,
            heads, group, tokens, lists.full_index.shape[1], mask.window, LOG2E / math.sqrt(head_dim),
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask = mask
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, out, lse = ctx.saved_tensors
        mask: BlockCausalMask = ctx.mask
        grad = grad.contiguous()
        batch, heads, tokens, head_dim = q.shape
        kv_heads = k.shape[1]
        group = heads // kv_heads
        _, (block_m, block_n, warps, stages) = _blocks(head_dim, q.device)
        kind, chunk = mask.arrays(q.device)
        delta = (out.float() * grad.float()).sum(-1)  # [B, H, T]
        sm_scale = 1 / math.sqrt(head_dim)
        qk_scale = LOG2E * sm_scale
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        by_key = mask.tiles(block_m, block_n, q.device, by_key=True)
        _dkdv_kernel[(triton.cdiv(tokens, block_n), batch * kv_heads)](
            q, k, v, grad, lse, delta, dk, dv, kind, chunk,
            by_key.partial_count, by_key.partial_index, by_key.full_count, by_key.full_index,
            kv_heads, group, tokens, by_key.full_index.shape[1], mask.window, qk_scale, sm_scale,
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        by_query = mask.tiles(block_m, block_n, q.device)
        _dq_kernel[(triton.cdiv(tokens, block_m), batch * heads)](
            q, k, v, grad, lse, delta, dq, kind, chunk,
            by_query.partial_count, by_query.partial_index, by_query.full_count, by_query.full_index,
            heads, group, tokens, by_query.full_index.shape[1], mask.window, qk_scale, sm_scale,
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return dq, dk, dv, None


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: BlockCausalMask) -> Tensor:
    """`reference.block_causal_attention`, differentiable in q, k, v. q: [B, H, T, D]; k, v: [B, Hkv, T, D]."""
    if mask.tokens != q.shape[2]:
        raise ValueError(f"the layout has {mask.tokens} tokens, the attention {q.shape[2]}")
    return _BlockCausalAttention.apply(q, k, v, mask)
