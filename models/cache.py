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

from dataclasses import dataclass

import torch
from torch import Tensor

from sonate import kernels
from sonate.models.config import SonateConfig
from sonate.models.positions import chunk_rope_tables, prefix_rope_tables


class KVCache:
    """Sinks and chunk ring for `batch` rows (session slots × CFG branches), preallocated once.

    Any subset of rows can make its next chunk together (continuous batching): `gather(rows)` gathers their
    windows into the first len(rows) rows of the visible buffers; each row keeps its own chunk count
    (`next_chunk`, the one position counter, moved only by `advance` and `rollback`).
    """

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

    def rollback(self, chunk: int, rows: Tensor) -> None:
        """Make `chunk` the next chunk of `rows`, as if nothing after it had been generated."""
        made = self.next_chunk[rows.cpu()]
        oldest = int(made.max()) - self.cfg.max_rollback_chunks
        if not max(0, oldest) <= chunk <= int(made.min()):
            raise ValueError(f"cannot roll back to chunk {chunk}: the ring holds chunks from {max(0, oldest)} on")
        self.next_chunk[rows.cpu()] = chunk

    def gather(self, rows: Tensor) -> ChunkView:
        """Assemble the visible sinks and window of `rows` [n] for their next chunk, into the first n rows of
        the visible buffers; the returned view is what that chunk's attention reads and writes."""
        cfg = self.cfg
        sinks, chunk, window = cfg.prefix_tokens, cfg.chunk_tokens, cfg.window_chunks
        made = self.next_chunk[rows.cpu()]  # [n] the index of the chunk each row makes now
        rows = rows.to(self.ring_k.device)
        n = len(rows)
        past = made[:, None] - 1 - torch.arange(window)  # [n, W], newest first
        slots = past.remainder(cfg.ring_chunks).to(self.ring_k.device)
        self.kv_lengths[:n] = sinks + chunk + (past >= 0).sum(1) * chunk
        pairs = ((self.ring_k, self.visible_k, self.window_rope), (self.ring_v, self.visible_v, None))
        for ring, visible, rope in pairs:
            gathered = ring[:, rows[:, None], :, slots]  # [n, W, layers, Hkv, chunk, D]
            gathered = gathered.permute(2, 0, 3, 1, 4, 5).flatten(3, 4)  # [layers, n, Hkv, W·chunk, D]
            if rope is not None:
                gathered = kernels.apply_rope(gathered, *rope)
            visible[:, :n, :, sinks + chunk :] = gathered
        self.visible_k[:, :n, :, :sinks] = self.sink_k[:, rows]
        self.visible_v[:, :n, :, :sinks] = self.sink_v[:, rows]
        ring_slots = made.remainder(cfg.ring_chunks).to(self.ring_k.device)
        return ChunkView(rows, ring_slots, self.visible_k[:, :n], self.visible_v[:, :n], self.kv_lengths[:n])

    def advance(self, view: ChunkView) -> None:
        """The chunk of `view` is in the ring: its rows make the next chunk next."""
        self.next_chunk[view.rows.cpu()] += 1


@dataclass
class ChunkView:
    """One chunk of some cache rows, as `KVCache.gather` assembled it: the rows, the ring slot the chunk's K/V
    go to, and the visible K/V its attention reads (views of the cache's buffers, valid until the next gather)."""

    rows: Tensor  # [n] cache rows, on the cache's device
    ring_slots: Tensor  # [n] the ring slot of the chunk being made
    visible_k: Tensor  # [layers, n, Hkv, sinks + (1 + W)·chunk, D], rotated: [sinks | current chunk | window]
    visible_v: Tensor  # [layers, n, Hkv, sinks + (1 + W)·chunk, D]
    kv_lengths: Tensor  # [n] valid keys per row


class ChunkAttention:
    """Attention of the current chunk's tokens over [sinks | current chunk | window] of `view`.

    With `write`, the chunk's un-rotated keys and values go into its ring slot (the clean pass).
    """

    def __init__(self, cache: KVCache, view: ChunkView, write: bool) -> None:
        self.cache = cache
        self.view = view
        self.write = write

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cache, view = self.cache, self.view
        sinks, chunk = cache.cfg.prefix_tokens, cache.cfg.chunk_tokens
        visible_k, visible_v = view.visible_k[layer], view.visible_v[layer]
        q = kernels.apply_rope(q, *cache.current_rope)
        visible_k[:, :, sinks : sinks + chunk] = kernels.apply_rope(k, *cache.current_rope)
        visible_v[:, :, sinks : sinks + chunk] = v
        if self.write:
            cache.ring_k[layer, view.rows, :, view.ring_slots] = k
            cache.ring_v[layer, view.rows, :, view.ring_slots] = v
        return kernels.chunk_attention(q, visible_k, visible_v, view.kv_lengths)


class PrefixAttention:
    """Attention of the prefix tokens of `rows` among themselves, storing their keys and values as the sinks."""

    def __init__(self, cache: KVCache, rows: Tensor) -> None:
        self.cache = cache
        self.rows = rows.to(cache.sink_k.device)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k = kernels.apply_rope(k, *self.cache.prefix_rope)  # zeroes the rotated channels: position-free
        self.cache.sink_k[layer, self.rows] = k
        self.cache.sink_v[layer, self.rows] = v
        return kernels.chunk_attention(q, k, v)
