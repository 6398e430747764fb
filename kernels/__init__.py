"""Attention and fused ops behind one dispatch point.

`SONATE_KERNELS` picks the implementation of every call:

- `auto` (default): the Triton kernels for CUDA tensors when Triton is installed, the PyTorch reference otherwise
  (CPU tensors, unsupported shapes or dtypes);
- `reference`: always the PyTorch reference;
- `triton`: always the Triton kernels — on CPU tensors through Triton's interpreter (`TRITON_INTERPRET=1`, set
  here before Triton is first imported; fp32/fp16 only, slow: for tests). Inputs a kernel cannot take are an
  error, not a silent fallback.

Only `block_causal_attention` has a backward; a call to any other op that autograd must record (grad mode on and
an input requiring grad: training) runs the reference under every setting.

Triton is imported on first use only, so sonate runs where it is not installed. Every caller in the project goes
through the functions here, never to an implementation directly. `masked_attention` (an arbitrary mask) always
runs the reference; the teacher's block-causal mask has its own kernel, `block_causal_attention`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from types import SimpleNamespace

import torch
from torch import Tensor

from sonate.kernels import reference
from sonate.kernels.block_mask import BlockCausalMask

BACKENDS = ("auto", "reference", "triton")


def _choice() -> str:
    choice = os.environ.get("SONATE_KERNELS", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"SONATE_KERNELS={choice!r}: choose one of {', '.join(BACKENDS)}")
    return choice


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend() -> str:
    """The implementation CUDA tensors get on this machine (`triton` or `reference`); CPU tensors get the
    reference unless `SONATE_KERNELS=triton`."""
    choice = _choice()
    if choice == "auto":
        return "triton" if torch.cuda.is_available() and _triton_installed() else "reference"
    return choice


@functools.cache
def triton_kernels() -> SimpleNamespace:
    """The Triton kernel modules (`chunk`, `block_causal`, `norm`, `residual`, `rope`), imported once — for tests
    and benchmarks that call a kernel directly. Without CUDA they are built for Triton's interpreter: this sets
    `TRITON_INTERPRET=1` first, which works only if nothing imported `triton` before (Triton 3.9 decorates its own
    library functions when it is imported); otherwise set it yourself at process start."""
    if not _triton_installed():
        raise RuntimeError("SONATE_KERNELS=triton needs the triton package (pip install triton; Linux only)")
    if not torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET"):
        if "triton" in sys.modules:
            raise RuntimeError(
                "Triton kernels on the CPU run in Triton's interpreter, and triton was imported before it could be "
                "switched on: start the process with TRITON_INTERPRET=1"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    from sonate.kernels import triton_block_causal, triton_chunk, triton_norm, triton_residual, triton_rope

    return SimpleNamespace(
        interpreted=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        chunk=triton_chunk,
        block_causal=triton_block_causal,
        norm=triton_norm,
        residual=triton_residual,
        rope=triton_rope,
    )


def _triton_for(op: str, inputs: tuple[Tensor, ...], why_not, differentiable: bool = False) -> SimpleNamespace | None:
    """The kernel modules if `op` on `inputs` runs on Triton, else None (the reference).

    `why_not(kernels)` says why the kernel cannot take the inputs, or None; forced Triton raises it. A kernel
    without a backward never gets a call autograd must record.
    """
    choice, x = _choice(), inputs[0]
    if choice == "reference" or (choice == "auto" and not (x.is_cuda and _triton_installed())):
        return None
    if not differentiable and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return None
    kernels = triton_kernels()
    reason = why_not(kernels)
    if reason is None and not x.is_cuda:
        if not kernels.interpreted:
            reason = "CPU tensors run on Triton only through its interpreter: start with TRITON_INTERPRET=1"
        elif x.dtype == torch.bfloat16:
            reason = "Triton's interpreter has no bfloat16 matmul: test in float32 or float16"
    if reason is None:
        return kernels
    if choice == "triton":
        raise ValueError(f"SONATE_KERNELS=triton: {op} cannot run on Triton: {reason}")
    return None


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, kv_lengths: Tensor | None = None) -> Tensor:
    """Attention of every query to the first `kv_lengths[b]` keys of its sequence; no other mask.

    q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D] with H a multiple of Hkv (grouped-query attention);
    kv_lengths: [B] int, or None for all Tk keys. Returns [B, H, Tq, D].
    """
    kernels = _triton_for("chunk_attention", (q, k, v), lambda ks: ks.chunk.supports(q, k, v))
    if kernels is None:
        return reference.chunk_attention(q, k, v, kv_lengths)
    return kernels.chunk.chunk_attention(q, k, v, kv_lengths)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention under a boolean visibility mask [Tq, Tk] (True = visible); always the reference (any mask)."""
    return reference.masked_attention(q, k, v, mask)


def block_causal_mask(layout, window: int) -> BlockCausalMask:
    """The teacher's block-causal mask of `layout` (a `TokenLayout`: per-token `kind` and `chunk`) and window W,
    to build once and pass to `block_causal_attention` for every layer (its tile lists are kept)."""
    return BlockCausalMask(layout, window)


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor, layout, window: int | None = None) -> Tensor:
    """Attention under `layout.mask(window)` — the teacher-forcing mask — differentiable in q, k, v.

    q: [B, H, T, D]; k, v: [B, Hkv, T, D]; layout: a `TokenLayout` with `window`, or a `block_causal_mask`
    (then `window` is omitted). Equals `masked_attention(q, k, v, layout.mask(window))`.
    """
    if isinstance(layout, BlockCausalMask):
        if window is not None and window != layout.window:
            raise ValueError(f"the block mask was built for window {layout.window}, not {window}")
        mask = layout
    elif window is None:
        raise ValueError("block_causal_attention needs the window W with a layout")
    else:
        mask = BlockCausalMask(layout, window)
    kernels = _triton_for("block_causal_attention", (q, k, v), lambda ks: ks.block_causal.supports(q, k, v), True)
    if kernels is None:
        return reference.masked_attention(q, k, v, mask.mask().to(q.device))
    return kernels.block_causal.block_causal_attention(q, k, v, mask)


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """AdaLN: `layer_norm(x) * (1 + scale) + shift`, norm without affine weights; x: [B, T, C]."""
    kernels = _triton_for("modulated_norm", (x, shift, scale), lambda ks: ks.norm.supports(x, shift, scale))
    if kernels is None:
        return reference.modulated_norm(x, shift, scale, eps)
    return kernels.norm.modulated_norm(x, shift, scale, eps)


def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """`x + gate * y`: the AdaLN-Zero residual update."""
    kernels = _triton_for("gated_residual", (x, y, gate), lambda ks: ks.residual.supports(x, y, gate))
    if kernels is None:
        return reference.gated_residual(x, y, gate)
    return kernels.residual.gated_residual(x, y, gate)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of each head: `x·cos + rotate_half(x)·sin`; x: [..., T, D], cos, sin:
    [T, D] from `sonate.models.positions.rope_tables` (cos = sin = 0 zeroes a channel: the position-free sinks)."""
    kernels = _triton_for("apply_rope", (x, cos, sin), lambda ks: ks.rope.supports(x, cos, sin))
    if kernels is None:
        return reference.apply_rope(x, cos, sin)
    return kernels.rope.apply_rope(x, cos, sin)


__all__ = [
    "BlockCausalMask",
    "apply_rope",
    "backend",
    "block_causal_attention",
    "block_causal_mask",
    "chunk_attention",
    "gated_residual",
    "masked_attention",
    "modulated_norm",
    "triton_kernels",
]
