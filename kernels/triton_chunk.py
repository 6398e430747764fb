"""Triton chunk attention: the queries of one chunk over [sinks | current chunk | window], per-sequence lengths.

FlashAttention-2 forward (online softmax, fp32 running max / sum / accumulator, exp2 with the softmax scale folded
into log2 units). Every given key is visible, so there is no element mask: a sequence's keys stop at
`kv_lengths[b]`, its full key tiles run unmasked and only its last, partial tile is bounds-masked.

Tiling: one program per (tile of BLOCK_M query rows, batch row, K/V head). The G query heads that share a K/V head
(grouped-query attention) are packed into the M dimension, rows ordered (head in group, token), so each K/V tile is
loaded once for all G heads. Keys arrive already rotated: the cache rotates on read, once per chunk, in
`KVCache.gather`, so no RoPE happens here.

Split-KV (flash-decoding): when the query rows make too few programs to fill the GPU, the key range is cut into
`splits` slices, each program writes a normalized partial output and its log-sum-exp, and a second kernel merges
them. The sampler's 1b chunk (4704 queries) never needs it; short query chunks against long caches do.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634
MAX_SPLITS = 16
MIN_TILES_PER_SPLIT = 4  # a split shorter than this costs more in the merge than it saves


@triton.jit
def _attend_tiles(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, start, end, kv_len, stride_kt, stride_vt, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """Fold key tiles [start, end) into the running (acc, l_i, m_i); MASKED bounds-checks against kv_len."""
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        if MASKED:
            valid = (n0 + offs_n) < kv_len
            k = tl.load(k_ptrs + n0 * stride_kt, mask=valid[:, None], other=0.0)
            v = tl.load(v_ptrs + n0 * stride_vt, mask=valid[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs + n0 * stride_kt)
            v = tl.load(v_ptrs + n0 * stride_vt)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # [M, N], log2 units
        if MASKED:
            s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile in range holds a valid key
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _chunk_attention_kernel(
    Q, K, V, OUT, LENS, O_PART, LSE_PART,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    n_heads, n_kv_heads, q_len, kv_max, group, qk_scale, tiles_per_split, n_rows,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LENS: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    pid_m, pid_bh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    kv_head = pid_bh % n_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # packed (head in group, token)
    row_ok = rows < group * q_len
    head = kv_head * group + rows // q_len
    token = rows % q_len
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + b * stride_qb + head[:, None] * stride_qh + token[:, None] * stride_qt + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs = K + b * stride_kb + kv_head * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + kv_head * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd

    kv_len = kv_max
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(LENS + b).to(tl.int32), kv_max)
    start, end = 0, kv_len
    if SPLIT:
        start = tl.minimum(split * tiles_per_split * BLOCK_N, kv_len)
        end = tl.minimum(start + tiles_per_split * BLOCK_N, kv_len)
    full_end = start + (end - start) // BLOCK_N * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, start, full_end, kv_len, stride_kt, stride_vt, qk_scale, BLOCK_N, False
    )
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, full_end, end, kv_len, stride_kt, stride_vt, qk_scale, BLOCK_N, True
    )
    empty = l_i == 0.0  # no key at all (kv_len 0, or an empty split): output 0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if SPLIT:
        part_row = split.to(tl.int64) * n_rows + (b * n_heads + head) * q_len + token  # O_PART: [splits, rows, D]
        tl.store(O_PART + part_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
        lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
        tl.store(LSE_PART + part_row, lse, mask=row_ok)
    else:
        o_ptrs = (
            OUT + b * stride_ob + head[:, None] * stride_oh + token[:, None] * stride_ot + offs_d[None, :] * stride_od
        )
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _merge_splits_kernel(
    OUT, O_PART, LSE_PART, n_rows, splits, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr
):  # fmt: skip
    """OUT[row] = Σ_s 2^(lse_s − M)·O_s / Σ_s 2^(lse_s − M) over the splits; OUT is contiguous [rows, D]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(splits):
        m = tl.maximum(m, tl.load(LSE_PART + s * n_rows + rows, mask=row_ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    for s in range(splits):
        weight = tl.math.exp2(tl.load(LSE_PART + s * n_rows + rows, mask=row_ok, other=float("-inf")) - m)
        part_row = s * n_rows + rows.to(tl.int64)
        part = tl.load(O_PART + part_row[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        total += weight
        acc += weight[:, None] * part
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(
        OUT + rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None],
    )


def supports(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why this kernel cannot take these inputs, or None when it can."""
    d = q.shape[-1]
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        return "q, k, v must be [B, H, T, D] with k and v alike"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must share one of float16, bfloat16, float32 (got {q.dtype}, {k.dtype}, {v.dtype})"
    if d < 16 or d > 256 or d & (d - 1) or k.shape[-1] != d:
        return f"head_dim must be a power of two in 16…256 (got {d})"
    if q.shape[1] % k.shape[1] or q.shape[0] != k.shape[0]:
        return "the query heads must be a multiple of the K/V heads, and the batches equal"
    return None


def _blocks(rows: int, head_dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for `rows` packed query rows."""
    block_m = max(16, min(128, triton.next_power_of_2(rows)))
    if device.type != "cuda":  # the interpreter pays per program: 64-wide tiles, still several per test
        return min(block_m, 64), 64, 1, 1
    if head_dim <= 64:
        return block_m, 64, 4, 3
    return block_m, 64, 8 if block_m == 128 else 4, 3


_SM_COUNT: dict[int, int] = {}


def _auto_splits(programs: int, kv_tiles: int, device: torch.device) -> int:
    """Split the keys when the query tiles fill less than one wave of the GPU's SMs."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    sms = _SM_COUNT[index]
    if programs >= sms:
        return 1
    return max(1, min(MAX_SPLITS, math.ceil(sms / programs), kv_tiles // MIN_TILES_PER_SPLIT))


def chunk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_lengths: Tensor | None = None,
    splits: int | None = None,
    blocks: tuple[int, int] | None = None,
) -> Tensor:
    """`reference.chunk_attention` in one launch (two with split-KV).

    q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D], any strides; kv_lengths: [B] int on q's device, or None.
    `splits` forces the split-KV count (default: chosen from the GPU's SM count); `blocks` forces
    (BLOCK_M, BLOCK_N). Rows of a sequence with no valid key come out 0.
    """
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_max = k.shape[1], k.shape[2]
    group = heads // kv_heads
    block_m, block_n, warps, stages = _blocks(group * q_len, head_dim, q.device)
    if blocks is not None:
        block_m, block_n = blocks
    m_tiles = triton.cdiv(group * q_len, block_m)
    kv_tiles = triton.cdiv(kv_max, block_n)
    if splits is None:
        splits = _auto_splits(m_tiles * batch * kv_heads, kv_tiles, q.device)
    tiles_per_split = triton.cdiv(max(kv_tiles, 1), splits)
    splits = triton.cdiv(max(kv_tiles, 1), tiles_per_split)  # no split left without a tile
    out = torch.empty(batch, heads, q_len, head_dim, device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    rows = batch * heads * q_len
    if splits > 1:
        o_part = torch.empty(splits, rows, head_dim, device=q.device, dtype=torch.float32)
        lse_part = torch.empty(splits, rows, device=q.device, dtype=torch.float32)
    else:
        o_part = lse_part = out  # unused
    lens = kv_lengths.to(q.device) if kv_lengths is not None else out  # unused without lengths
    grid = (m_tiles, batch * kv_heads, splits)
    _chunk_attention_kernel[grid](
        q, k, v, out, lens, o_part, lse_part,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, kv_heads, q_len, kv_max, group, LOG2E / math.sqrt(head_dim), tiles_per_split, rows,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_LENS=kv_lengths is not None, SPLIT=splits > 1,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if splits > 1:
        block_r = 32 if q.device.type != "cuda" else 64
        _merge_splits_kernel[(triton.cdiv(rows, block_r),)](
            out, o_part, lse_part, rows, splits, HEAD_DIM=head_dim, BLOCK_R=block_r, num_warps=4
        )
    return out
