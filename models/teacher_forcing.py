"""The teacher-forcing one-pass forward: [prefix | clean chunks | noisy chunks] under the block-causal mask.

This is the computation training calls, and the streaming sampler must agree with it to float precision.
Noisy chunk k sees the prefix, the clean chunks k-W … k-1 and itself; clean chunk k sees the prefix and the
clean chunks k-W … k; the prefix sees only itself. A clean chunk and a noisy chunk of the same index sit at
the same time position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sonate import kernels
from sonate.models.conditioning import PrefixTokens
from sonate.models.config import SonateConfig
from sonate.models.positions import chunk_rope_tables, prefix_rope_tables
from sonate.models.transformer import ChunkPhonemes, SonateModel

PREFIX, CLEAN, NOISY = 0, 1, 2


@dataclass
class TokenLayout:
    """Which segment each token of the joint sequence [audio stream | video stream] belongs to.

    kind: PREFIX, CLEAN or NOISY per token; chunk: its chunk index (-1 for the prefix);
    segment: index into the per-segment conditioning [prefix, clean 0…, noisy …].
    """

    kind: Tensor
    chunk: Tensor
    segment: Tensor
    audio_tokens: int

    def mask(self, window: int) -> Tensor:
        """The block-causal visibility mask [T, T], True where a query may read a key."""
        qk, kk = self.kind[:, None], self.kind[None, :]
        qc, kc = self.chunk[:, None], self.chunk[None, :]
        in_window = (kc >= qc - window) & (kc <= qc)
        clean_sees = (qk == CLEAN) & (kk == CLEAN) & in_window
        noisy_sees = (qk == NOISY) & (((kk == CLEAN) & in_window & (kc < qc)) | ((kk == NOISY) & (kc == qc)))
        return (kk == PREFIX) | clean_sees | noisy_sees


def token_layout(cfg: SonateConfig, clean_chunks: int, noisy_chunks: list[int]) -> TokenLayout:
    """Layout of [prefix | clean chunks 0 … clean_chunks-1 | noisy chunks `noisy_chunks`] in each stream."""
    parts: list[tuple[int, int, int, int]] = []  # (kind, chunk, segment, tokens) runs
    segments = [(CLEAN, c) for c in range(clean_chunks)] + [(NOISY, c) for c in noisy_chunks]
    for stream_prefix, per_chunk in (
        (cfg.prefix_audio_tokens, cfg.chunk_audio_latents),
        (cfg.identity_tokens, cfg.chunk_video_tokens),
    ):
        parts.append((PREFIX, -1, 0, stream_prefix))
        parts += [(kind, chunk, 1 + i, per_chunk) for i, (kind, chunk) in enumerate(segments)]
    kind, chunk, segment = (torch.cat([torch.full((n,), run[field]) for *run, n in parts]) for field in range(3))
    audio_tokens = cfg.prefix_audio_tokens + len(segments) * cfg.chunk_audio_latents
    return TokenLayout(kind, chunk, segment, audio_tokens)


class MaskedAttention:
    """Joint attention over the whole one-pass sequence, each token rotated at its absolute position."""

    def __init__(self, cfg: SonateConfig, layout: TokenLayout, device: torch.device, window: int | None) -> None:
        chunks = int(layout.chunk.max()) + 1 if (layout.chunk >= 0).any() else 0
        chunk_tables = chunk_rope_tables(cfg, torch.arange(chunks))  # each [chunks, chunk_tokens, head_dim]
        prefix_tables = prefix_rope_tables(cfg)
        audio = cfg.chunk_audio_latents
        streams = (
            (slice(0, layout.audio_tokens), slice(0, audio)),
            (slice(layout.audio_tokens, None), slice(audio, None)),
        )
        tables = []
        for chunk_table, prefix_table in zip(chunk_tables, prefix_tables, strict=True):
            parts = []
            for tokens, chunk_part in streams:  # a chunk's tokens are [audio | video]
                chunk = layout.chunk[tokens]
                per_token = prefix_table[:1].repeat(len(chunk), 1)
                within = torch.arange(len(chunk)) - _run_starts(chunk)
                has_chunk = chunk >= 0
                per_token[has_chunk] = chunk_table[:, chunk_part][chunk[has_chunk], within[has_chunk]]
                parts.append(per_token)
            tables.append(torch.cat(parts).to(device))
        self.cos, self.sin = tables
        self.block_mask = kernels.block_causal_mask(layout, 1 << 20 if window is None else window)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = kernels.apply_rope(q, self.cos, self.sin)
        k = kernels.apply_rope(k, self.cos, self.sin)
        return kernels.block_causal_attention(q, k, v, self.block_mask)


def _run_starts(values: Tensor) -> Tensor:
    """For each element, the index where its run of equal consecutive values starts."""
    change = torch.ones_like(values, dtype=torch.bool)
    change[1:] = values[1:] != values[:-1]
    starts = torch.where(change, torch.arange(len(values)), torch.zeros_like(values))
    return torch.cummax(starts, dim=0).values


def teacher_forward(
    model: SonateModel,
    prefix: PrefixTokens,
    clean: tuple[Tensor, Tensor],
    clean_phonemes: ChunkPhonemes,
    noisy: tuple[Tensor, Tensor],
    noisy_phonemes: ChunkPhonemes,
    noisy_t: Tensor,
    noisy_chunks: list[int] | None = None,
    window: int | None = -1,
) -> tuple[Tensor, Tensor]:
    """Velocities of the noisy chunks, each seeing the clean chunks before it within the window.

    clean: (audio [B, K·chunk_audio_latents, Ca], video [B, K·chunk_video_latents, C, h, w]) for chunks
    0 … K-1; noisy: the same for the chunks `noisy_chunks` (default 0 … K-1, one noisy copy of each),
    at flow times noisy_t [B, len(noisy_chunks)]. `window`: clean chunks of context (-1: the model's window,
    None: all of them). Returns velocities shaped like `noisy`.
    """
    cfg = model.cfg
    clean_chunks = clean[0].shape[1] // cfg.chunk_audio_latents
    noisy_chunks = list(range(clean_chunks)) if noisy_chunks is None else noisy_chunks
    layout = token_layout(cfg, clean_chunks, noisy_chunks)
    window = cfg.window_chunks if window == -1 else window
    clean_a, clean_v = model.embed_chunks(*clean, clean_phonemes, prefix.reference)
    noisy_a, noisy_v = model.embed_chunks(*noisy, noisy_phonemes, prefix.reference)
    x_a = torch.cat((prefix.audio, clean_a, noisy_a), dim=1)
    x_v = torch.cat((prefix.video, clean_v, noisy_v), dim=1)
    batch = noisy_t.shape[0]
    t = torch.cat((torch.zeros(batch, 1 + clean_chunks, device=noisy_t.device), noisy_t), dim=1)
    mod_a, mod_v = model.modulation(t, prefix.timbre)  # [B, segments, 8, dim]
    device = x_a.device
    seg_a, seg_v = layout.segment[: layout.audio_tokens].to(device), layout.segment[layout.audio_tokens :].to(device)
    x_a, x_v = model.run_blocks(
        x_a, x_v, mod_a[:, seg_a], mod_v[:, seg_v], MaskedAttention(cfg, layout, device, window)
    )
    first_noisy_a = cfg.prefix_audio_tokens + clean_chunks * cfg.chunk_audio_latents
    first_noisy_v = cfg.identity_tokens + clean_chunks * cfg.chunk_video_tokens
    return model.heads(
        x_a[:, first_noisy_a:], x_v[:, first_noisy_v:], mod_a[:, seg_a[first_noisy_a:]], mod_v[:, seg_v[first_noisy_v:]]
    )
