"""Triton LayerNorm + AdaLN modulate: `layer_norm(x) · (1 + scale) + shift` in one pass over x.

One program per block of token rows: each row is read once, its mean and variance are taken in fp32 (two-pass, in
registers), and the modulated row is written once. shift and scale are read through their strides, so the
per-segment modulation views the transformer passes ([B, T or 1, C], slices of a [B, T, 6, C] tensor) are
never materialized.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _modulated_norm_kernel(
    X, SHIFT, SCALE, OUT, rows, tokens, channels, eps,
    stride_xb, stride_xt, stride_xc,
    stride_hb, stride_ht, stride_hc,
    stride_sb, stride_st, stride_sc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    b, t = (row // tokens).to(tl.int64)[:, None], (row % tokens).to(tl.int64)[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    ok = (row < rows)[:, None] & (c < channels)
    x = tl.load(X + b * stride_xb + t * stride_xt + c * stride_xc, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / channels
    centred = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / channels + eps)
    shift = tl.load(SHIFT + b * stride_hb + t * stride_ht + c * stride_hc, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * stride_sb + t * stride_st + c * stride_sc, mask=ok, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * (1.0 + scale) + shift
    tl.store(OUT + row.to(tl.int64)[:, None] * channels + c, y.to(OUT.dtype.element_ty), mask=ok)


def supports(x: Tensor, shift: Tensor, scale: Tensor) -> str | None:
    """Why this kernel cannot take these inputs, or None when it can."""
    if x.dim() != 3:
        return f"x must be [B, T, C] (got {x.dim()} dims)"
    try:
        torch.broadcast_shapes(shift.shape, scale.shape, x.shape)
    except RuntimeError:
        return "shift and scale must broadcast to x"
    if torch.broadcast_shapes(shift.shape, scale.shape, x.shape) != x.shape:
        return "shift and scale must broadcast to x's shape"
    if x.shape[-1] > 16384:
        return f"rows longer than 16384 channels (got {x.shape[-1]})"
    return None


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """`reference.modulated_norm`: x [B, T, C]; shift, scale broadcastable to it. Returns a new contiguous tensor
    in the promoted dtype of the three."""
    batch, tokens, channels = x.shape
    dtype = torch.promote_types(torch.promote_types(x.dtype, shift.dtype), scale.dtype)
    out = torch.empty(x.shape, device=x.device, dtype=dtype)
    if out.numel() == 0:
        return out
    shift, scale = shift.expand(x.shape), scale.expand(x.shape)  # stride 0 where broadcast: nothing copied
    block_c = triton.next_power_of_2(channels)
    if x.device.type == "cuda":  # a few thousand elements per program, a warp per 256 of them
        block_r, warps = max(1, 4096 // block_c), min(16, max(1, block_c // 256))
    else:  # the interpreter pays per program: few, large ones
        block_r, warps = max(1, 16384 // block_c), 1
    rows = batch * tokens
    _modulated_norm_kernel[(triton.cdiv(rows, block_r),)](
        x, shift, scale, out, rows, tokens, channels, eps,
        *x.stride(), *shift.stride(), *scale.stride(),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return out
