"""PyTorch reference implementations of the attention and fused ops; the ground truth kernels are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, kv_lengths: Tensor | None = None) -> Tensor:
    """Attention of every query to the first `kv_lengths[b]` keys of its sequence; no other mask.

    q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D] with H a multiple of Hkv (grouped-query attention);
    kv_lengths: [B] int, or None for all Tk keys. Returns [B, H, Tq, D].
    """
    mask = None
    if kv_lengths is not None:
        longest, shortest = int(kv_lengths.max()), int(kv_lengths.min())
        k, v = k[:, :, :longest], v[:, :, :longest]  # keys no sequence can see cost nothing
        if shortest < longest:
            key_index = torch.arange(longest, device=k.device)
            mask = (key_index[None, :] < kv_lengths[:, None].to(k.device))[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention under a boolean visibility mask [Tq, Tk] (True = visible); shapes as `chunk_attention`."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor, layout, window: int) -> Tensor:
    """Attention under the teacher-forcing mask `layout.mask(window)` of a `TokenLayout`; shapes as
    `chunk_attention`."""
    return masked_attention(q, k, v, layout.mask(window).to(q.device))


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """AdaLN: `layer_norm(x) * (1 + scale) + shift`, norm without affine weights; x: [B, T, C]."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift


def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """`x + gate * y`: the AdaLN-Zero residual update."""
    return x + gate * y


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of each head: `x·cos + rotate_half(x)·sin`.

    x: [..., T, D]; cos, sin: [T, D] (or broadcastable), built by `sonate.models.positions.rope_tables`.
    Channels a table leaves at cos 1, sin 0 pass through; where both are 0 they are zeroed — that is how
    the position-free sink keys are made.
    """
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin
