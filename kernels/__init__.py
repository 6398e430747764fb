"""Attention and fused ops behind one dispatch point.

`SONATE_KERNELS` picks the implementation: `auto` (default), or `reference` (PyTorch) to force it. Every
caller in the project goes through the functions here, never to an implementation directly.
"""

from __future__ import annotations

import os

from sonate.kernels import reference

BACKENDS = ("auto", "reference")


def backend() -> str:
    """The implementation in use: `reference` (PyTorch SDPA and eager ops)."""
    choice = os.environ.get("SONATE_KERNELS", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"SONATE_KERNELS={choice!r}: choose one of {', '.join(BACKENDS)}")
    return "reference"


chunk_attention = reference.chunk_attention
masked_attention = reference.masked_attention
modulated_norm = reference.modulated_norm
gated_residual = reference.gated_residual
apply_rope = reference.apply_rope

__all__ = [
    "apply_rope",
    "backend",
    "chunk_attention",
    "gated_residual",
    "masked_attention",
    "modulated_norm",
]
