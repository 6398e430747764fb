"""Triton RoPE, rotate-half layout: channel i pairs with i + D/2, full-head cos/sin tables [T, D].

`out[i] = x[i]·cos[i] − x[i+D/2]·sin[i]`, `out[i+D/2] = x[i+D/2]·cos[i+D/2] + x[i]·sin[i+D/2]` — the same products
as `x·cos + rotate_half(x)·sin`, so channels a table leaves at cos 1, sin 0 pass through and cos = sin = 0 zeroes
them (the position-free sinks). x is read through its strides (the transformer hands over [B, T, H, D] tensors
transposed to [B, H, T, D]); leading dims beyond two are flattened. One program per (block of tokens, leading
index); each loads both halves of its rows once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rope_kernel(
    X, COS, SIN, OUT, inner, tokens,
    stride_x0, stride_x1, stride_xt, stride_xd,
    stride_ct, stride_cd, stride_st, stride_sd,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    lead = tl.program_id(1)
    i0, i1 = (lead // inner).to(tl.int64), (lead % inner).to(tl.int64)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = (t < tokens)[:, None]
    d = tl.arange(0, HALF)[None, :]
    x_row = X + i0 * stride_x0 + i1 * stride_x1 + t[:, None] * stride_xt
    first = tl.load(x_row + d * stride_xd, mask=ok, other=0.0).to(tl.float32)
    second = tl.load(x_row + (d + HALF) * stride_xd, mask=ok, other=0.0).to(tl.float32)
    c_row, s_row = COS + t[:, None] * stride_ct, SIN + t[:, None] * stride_st
    cos1 = tl.load(c_row + d * stride_cd, mask=ok, other=0.0).to(tl.float32)
    cos2 = tl.load(c_row + (d + HALF) * stride_cd, mask=ok, other=0.0).to(tl.float32)
    sin1 = tl.load(s_row + d * stride_sd, mask=ok, other=0.0).to(tl.float32)
    sin2 = tl.load(s_row + (d + HALF) * stride_sd, mask=ok, other=0.0).to(tl.float32)
    out_row = OUT + (lead.to(tl.int64) * tokens + t[:, None]) * (2 * HALF)
    dtype = OUT.dtype.element_ty
    tl.store(out_row + d, (first * cos1 - second * sin1).to(dtype), mask=ok)
    tl.store(out_row + d + HALF, (second * cos2 + first * sin2).to(dtype), mask=ok)


def supports(x: Tensor, cos: Tensor, sin: Tensor) -> str | None:
    """Why this kernel cannot take these inputs, or None when it can."""
    if x.dim() < 2:
        return "x must be [..., T, D]"
    tokens, dim = x.shape[-2:]
    for table in (cos, sin):
        if table.dim() < 2 or table.dim() > x.dim() or any(n != 1 for n in table.shape[:-2]):
            return "cos and sin must be [T, D] tables (leading dims of 1 at most)"
        if table.shape[-1] != dim or table.shape[-2] not in (1, tokens):
            return f"cos and sin must be [T, D] with T = {tokens}, D = {dim}"
    if dim < 2 or dim & (dim - 1):
        return f"head_dim must be a power of two (got {dim})"
    return None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`reference.apply_rope`: x [..., T, D]; cos, sin [T, D]. Returns a new contiguous tensor shaped like x, in the
    promoted dtype of x and the tables."""
    tokens, dim = x.shape[-2:]
    dtype = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), sin.dtype)
    out = torch.empty(x.shape, device=x.device, dtype=dtype)
    if out.numel() == 0:
        return out
    x4 = x.reshape(-1, *x.shape[-3:]) if x.dim() > 4 else x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))
    cos, sin = (table.reshape(table.shape[-2:]).expand(tokens, dim) for table in (cos, sin))
    block = max(1, (4096 if x.device.type == "cuda" else 16384) // dim)  # the interpreter: few programs
    grid = (triton.cdiv(tokens, block), x4.shape[0] * x4.shape[1])
    _rope_kernel[grid](
        x4, cos, sin, out, x4.shape[1], tokens, *x4.stride(), *cos.stride(), *sin.stride(),
        HALF=dim // 2, BLOCK_T=block, num_warps=1 if x.device.type != "cuda" else 4,
    )  # fmt: skip
    return out
