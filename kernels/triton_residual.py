"""Triton gate + residual: `x + gate · y` (the AdaLN-Zero update) in one read of each input and one write.

x, y: [B, T, C]; gate broadcastable to them ([B, T or 1, C], usually a strided slice of the modulation tensor).
Every operand is read through its strides. One program per (block of token rows, block of channels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _gated_residual_kernel(
    X, Y, GATE, OUT, rows, tokens, channels,
    stride_xb, stride_xt, stride_xc,
    stride_yb, stride_yt, stride_yc,
    stride_gb, stride_gt, stride_gc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    b, t = (row // tokens).to(tl.int64)[:, None], (row % tokens).to(tl.int64)[:, None]
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    ok = (row < rows)[:, None] & (c < channels)
    x = tl.load(X + b * stride_xb + t * stride_xt + c * stride_xc, mask=ok).to(tl.float32)
    y = tl.load(Y + b * stride_yb + t * stride_yt + c * stride_yc, mask=ok).to(tl.float32)
    gate = tl.load(GATE + b * stride_gb + t * stride_gt + c * stride_gc, mask=ok).to(tl.float32)
    tl.store(OUT + row.to(tl.int64)[:, None] * channels + c, (x + gate * y).to(OUT.dtype.element_ty), mask=ok)


def supports(x: Tensor, y: Tensor, gate: Tensor) -> str | None:
    """Why this kernel cannot take these inputs, or None when it can."""
    if x.dim() != 3:
        return f"x must be [B, T, C] (got {x.dim()} dims)"
    try:
        shape = torch.broadcast_shapes(x.shape, y.shape, gate.shape)
    except RuntimeError:
        return "x, y and gate must broadcast together"
    if shape != x.shape:
        return "y and gate must broadcast to x's shape"
    return None


def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """`reference.gated_residual`: a new contiguous [B, T, C] tensor in the promoted dtype of the three."""
    batch, tokens, channels = x.shape
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), gate.dtype)
    out = torch.empty(x.shape, device=x.device, dtype=dtype)
    if out.numel() == 0:
        return out
    y, gate = y.expand(x.shape), gate.expand(x.shape)
    block_c = min(1024, triton.next_power_of_2(channels))
    block_r = max(1, (2048 if x.device.type == "cuda" else 16384) // block_c)  # the interpreter: few programs
    rows = batch * tokens
    grid = (triton.cdiv(rows, block_r), triton.cdiv(channels, block_c))
    _gated_residual_kernel[grid](
        x, y, gate, out, rows, tokens, channels, *x.stride(), *y.stride(), *gate.stride(),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4 if x.device.type == "cuda" else 1,
    )  # fmt: skip
    return out
