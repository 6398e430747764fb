"""The per-sequence KV cache of the streaming sampler: sinks, then a ring of chunks, as fixed-shape tensors.

Layout, per layer: `sink_*` [B, Hkv, prefix_tokens, D] holds the prefix (position-free keys);
`ring_*` [B, Hkv, ring_chunks, chunk_tokens, D] holds the keys and values of the last `ring_chunks`
chunks, key *un-rotated*. Chunk j lives in slot j mod ring_chunks. The ring has `window_chunks` slots the
model reads plus `max_rollback_chunks` so an interruption can roll back without losing context.

Rotate on read: before each chunk, the W newest chunks are gathered newest-first into a contiguous
`visible_*` buffer [B, Hkv, prefix + (1 + W)·chunk, D] laid out [sinks | current chunk | window], the window
keys rotated as if the current chunk sat at chunk W. RoPE depends only on distances and the sinks have no
position, so this equals absolute positions in exact arithmetic while every angle the model sees stays
inside the trained context, however long the stream runs. Sequences whose window is not yet full carry
fewer valid keys (`kv_lengths`), which is all the attention needs to know: no element mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sonate import kernels
from sonate.models.config import SonateConfig
from sonate.models.positions import chunk_rope_tables, prefix_rope_tables


class KVCache:
    """Sinks and chunk ring for a batch of sequences (sessions × CFG branches), preallocated once."""

    def __init__(self, cfg: SonateConfig, batch: int, device: torch.device | str = "cpu", dtype=torch.float32):
        self.cfg = cfg
        self.batch = batch
        layers, heads, dim = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
        sinks, chunk, window = cfg.prefix_tokens, cfg.chunk_tokens, cfg.window_chunks

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=device, dtype=dtype)

        self.sink_k = zeros(layers, batch, heads, sinks, dim)
        self.sink_v = zeros(layers, batch, heads, sinks, dim)
        self.ring_k = zeros(layers, batch, heads, cfg.ring_chunks, chunk, dim)
        self.ring_v = zeros(layers, batch, heads, cfg.ring_chunks, chunk, dim)
        self.visible_k = zeros(layers, batch, heads, sinks + (1 + window) * chunk, dim)
        self.visible_v = zeros(layers, batch, heads, sinks + (1 + window) * chunk, dim)
        self.next_chunk = torch.zeros(batch, dtype=torch.int64)  # index of the chunk each sequence makes next
        self.kv_lengths = torch.zeros(batch, dtype=torch.int64, device=device)
        # the current chunk always sits at chunk W; window slot i (newest first) at chunk W - 1 - i
        cos, sin = chunk_rope_tables(cfg, torch.arange(window, -1, -1))
        self.current_rope = (cos[0].to(device, dtype), sin[0].to(device, dtype))
        self.window_rope = (cos[1:].flatten(0, 1).to(device, dtype), sin[1:].flatten(0, 1).to(device, dtype))
        self.prefix_rope = tuple(t.to(device, dtype) for t in prefix_rope_tables(cfg))

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        tensors = (self.sink_k, self.sink_v, self.ring_k, self.ring_v, self.visible_k, self.visible_v)
        return sum(t.numel() * t.element_size() for t in tensors)

    def reset(self) -> None:
        """Forget every chunk (the sinks stay until the next prefill)."""
        self.next_chunk.zero_()

    def rollback(self, chunk: int) -> None:
        """Make `chunk` the next chunk of every sequence, as if nothing after it had been generated."""
        oldest = int(self.next_chunk.max()) - self.cfg.max_rollback_chunks
        if not max(0, oldest) <= chunk <= int(self.next_chunk.min()):
            raise ValueError(f"cannot roll back to chunk {chunk}: the ring holds chunks from {max(0, oldest)} on")
        self.next_chunk.fill_(chunk)

    def begin_chunk(self) -> None:
        """Assemble the visible sinks and window of every sequence for its next chunk."""
        cfg = self.cfg
        sinks, chunk, window = cfg.prefix_tokens, cfg.chunk_tokens, cfg.window_chunks
        past = self.next_chunk[:, None] - 1 - torch.arange(window)  # [B, W], newest first
        slots = past.remainder(cfg.ring_chunks).to(self.ring_k.device)
        rows = torch.arange(self.batch, device=slots.device)[:, None]
        self.kv_lengths.copy_(sinks + chunk + (past >= 0).sum(1) * chunk)
        pairs = ((self.ring_k, self.visible_k, self.window_rope), (self.ring_v, self.visible_v, None))
        for ring, visible, rope in pairs:
            gathered = ring[:, rows, :, slots]  # [B, W, layers, Hkv, chunk, D]
            gathered = gathered.permute(2, 0, 3, 1, 4, 5).flatten(3, 4)  # [layers, B, Hkv, W·chunk, D]
            if rope is not None:
                gathered = kernels.apply_rope(gathered, *rope)
            visible[:, :, :, sinks + chunk :] = gathered
        self.visible_k[:, :, :, :sinks] = self.sink_k
        self.visible_v[:, :, :, :sinks] = self.sink_v

    def end_chunk(self) -> None:
        """The chunk's clean K/V are in the ring: advance every sequence by one chunk."""
        self.next_chunk += 1


class ChunkAttention:
    """Attention of the current chunk's tokens over [sinks | current chunk | window] of the cache.

    With `write`, the chunk's un-rotated keys and values go into its ring slot (the clean pass).
    """

    def __init__(self, cache: KVCache, write: bool) -> None:
        self.cache = cache
        self.write = write

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cache = self.cache
        sinks, chunk = cache.cfg.prefix_tokens, cache.cfg.chunk_tokens
        q = kernels.apply_rope(q, *cache.current_rope)
        cache.visible_k[layer, :, :, sinks : sinks + chunk] = kernels.apply_rope(k, *cache.current_rope)
        cache.visible_v[layer, :, :, sinks : sinks + chunk] = v
        if self.write:
            rows = torch.arange(cache.batch, device=k.device)
            slots = cache.next_chunk.remainder(cache.cfg.ring_chunks).to(k.device)
            cache.ring_k[layer, rows, :, slots] = k
            cache.ring_v[layer, rows, :, slots] = v
        return kernels.chunk_attention(q, cache.visible_k[layer], cache.visible_v[layer], cache.kv_lengths)


class PrefixAttention:
    """Attention of the prefix tokens among themselves, storing their keys and values as the sinks."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k = kernels.apply_rope(k, *self.cache.prefix_rope)  # zeroes the rotated channels: position-free
        self.cache.sink_k[layer] = k
        self.cache.sink_v[layer] = v
        return kernels.chunk_attention(q, k, v)
