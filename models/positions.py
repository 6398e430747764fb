"""Token positions on the shared time axis and their RoPE tables.

Time is counted in audio latent frames; a token sits at the centre of the span it covers, so an audio token
and a video token for the same instant share one temporal position. Video tokens also carry a 1-based
(row, column) on the latent grid; audio tokens sit at (0, 0). Prefix tokens have no position at all: their
rotated channels are zeroed (cos = sin = 0), so what a chunk reads from the sinks never depends on where
the chunk is — the property that lets the ring roll forever without leaving the trained context.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sonate.models.config import SonateConfig


def chunk_token_positions(cfg: SonateConfig) -> Tensor:
    """(time, row, column) of one chunk's tokens, chunk starting at time 0: [chunk_tokens, 3] float64.

    Order: the chunk's audio tokens, then its video tokens frame by frame, row-major.
    """
    audio_time = torch.arange(cfg.chunk_audio_latents, dtype=torch.float64) + 0.5
    audio = torch.stack((audio_time, torch.zeros_like(audio_time), torch.zeros_like(audio_time)), dim=-1)
    frame_time = (torch.arange(cfg.chunk_video_latents, dtype=torch.float64) + 0.5) * (
        cfg.audio_latents_per_video_latent
    )
    frames, rows, cols = torch.meshgrid(
        frame_time,
        torch.arange(1, cfg.video_token_rows + 1, dtype=torch.float64),
        torch.arange(1, cfg.video_token_cols + 1, dtype=torch.float64),
        indexing="ij",
    )
    video = torch.stack((frames, rows, cols), dim=-1).reshape(-1, 3)
    return torch.cat((audio, video))


def rope_tables(cfg: SonateConfig, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Full-head cos and sin for tokens at `positions` [..., 3]: each [..., head_dim].

    Channel i pairs with channel i + head_dim/2 (the rotate-half layout); the first pairs turn with time, the
    next with row, then column; the remaining pairs carry no position (cos 1, sin 0). Angles are computed in
    float64 and rounded once, so a shifted copy of the same chunk rotates identically up to that rounding.
    """
    angles = []
    for axis, channels in enumerate(cfg.rope_sections):
        freqs = cfg.rope_theta ** (-torch.arange(0, channels, 2, dtype=torch.float64) / channels)
        angles.append(positions[..., axis, None] * freqs)
    angle = torch.cat(angles, dim=-1)
    free = torch.zeros(*angle.shape[:-1], cfg.head_dim // 2 - angle.shape[-1], dtype=torch.float64)
    half = torch.cat((angle, free), dim=-1)
    full = torch.cat((half, half), dim=-1)
    return torch.cos(full).float(), torch.sin(full).float()


def prefix_rope_tables(cfg: SonateConfig) -> tuple[Tensor, Tensor]:
    """Tables for the prefix tokens, [prefix_tokens, head_dim]: cos = sin = 0 on the rotated channel pairs
    (which zeroes them), identity on the position-free ones."""
    cos, sin = rope_tables(cfg, torch.zeros(cfg.prefix_tokens, 3, dtype=torch.float64))
    rotated = sum(cfg.rope_sections) // 2
    for half in (0, cfg.head_dim // 2):
        cos[:, half : half + rotated] = 0
    return cos, sin


def chunk_rope_tables(cfg: SonateConfig, chunk_offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Tables for whole chunks placed `chunk_offsets` [N] chunks from time 0: each [N, chunk_tokens, R]."""
    base = chunk_token_positions(cfg)
    shift = torch.zeros(len(chunk_offsets), 1, 3, dtype=torch.float64)
    shift[:, 0, 0] = chunk_offsets.to(torch.float64) * cfg.chunk_audio_latents
    return rope_tables(cfg, base[None] + shift)
