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
        key_index = torch.arange(k.shape[2], device=k.device)
        mask = (key_index[None, :] < kv_lengths[:, None].to(k.device))[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention under a boolean visibility mask [Tq, Tk] (True = visible); shapes as `chunk_attention`."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """AdaLN: `layer_norm(x) * (1 + scale) + shift`, norm without affine weights; x: [B, T, C]."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift


def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """`x + gate * y`: the AdaLN-Zero residual update."""
    return x + gate * y


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first `2 * cos.shape[-1]` channels of each head in interleaved pairs; the rest pass through.

    x: [B, H, T, D]; cos, sin: [T, R] or [B, 1, T, R] with 2R ≤ D. A token whose cos and sin are both 0
    gets its rotated channels zeroed: that is how the position-free sink keys are made.
    """
    rotated = 2 * cos.shape[-1]
    pairs = x[..., :rotated].unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat((out, x[..., rotated:]), dim=-1)
