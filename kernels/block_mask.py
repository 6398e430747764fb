"""The block-causal training mask as tiles: which key tiles each query tile skips, reads whole, or must mask.

Tokens keep the teacher's order, [audio | video] streams each [prefix | clean chunks | noisy chunks], so one chunk's
tokens are two runs, not one block; nothing is reordered. Whether query i sees key j depends only on the (kind,
chunk) of each — `visible` below, the formula of `TokenLayout.mask` — so a tile's class follows from the set of
(kind, chunk) codes present in its rows and in its columns, like FlexAttention's `BlockMask`:

- full: every present (query code, key code) pair is visible — the kernel runs it without a mask;
- partial: some are — the kernel evaluates `visible` per element from the per-token kind and chunk arrays;
- empty: none are — the kernel never loads it.

A last tile that runs past the sequence end is partial, so the bounds check lives in the masked path only.
Built once per layout on the CPU (a few small matmuls over tile × code presence), then kept on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

EMPTY, PARTIAL, FULL = 0, 1, 2


def visible(q_kind, q_chunk, k_kind, k_chunk, window):
    """Whether a query of (q_kind, q_chunk) reads a key of (k_kind, k_chunk): `TokenLayout.mask`, elementwise.

    Kinds are the teacher's PREFIX 0, CLEAN 1, NOISY 2. The Triton kernel carries its own copy
    (`triton_block_causal._visible`); the tests hold both against `TokenLayout.mask`.
    """
    in_window = (k_chunk >= q_chunk - window) & (k_chunk <= q_chunk)
    clean_sees = (q_kind == 1) & (k_kind == 1) & in_window
    noisy_sees = (q_kind == 2) & (
        ((k_kind == 1) & in_window & (k_chunk < q_chunk)) | ((k_kind == 2) & (k_chunk == q_chunk))
    )
    return (k_kind == 0) | clean_sees | noisy_sees


@dataclass
class TileLists:
    """Per row tile, the column tiles to visit: the partial ones first in `partial_index[r, :partial_count[r]]`,
    the full ones in `full_index[r, :full_count[r]]`; int32, on the kernel's device."""

    partial_count: Tensor
    partial_index: Tensor
    full_count: Tensor
    full_index: Tensor

    @staticmethod
    def from_classes(classes: Tensor, device: torch.device) -> TileLists:
        lists = []
        for cls in (PARTIAL, FULL):
            hit = classes == cls
            order = torch.argsort((~hit).to(torch.int8), dim=1, stable=True)  # the hits first, in column order
            lists += [hit.sum(1).to(torch.int32), order.to(torch.int32)]
        return TileLists(*(t.contiguous().to(device) for t in lists))


@dataclass
class BlockCausalMask:
    """The teacher's block-causal mask for one layout and window, with tile lists built on demand per tiling.

    `layout` is anything with per-token `kind` and `chunk` tensors [T] (a `TokenLayout`); `mask()` gives the
    dense [T, T] mask (the layout's own `mask` when it has one) for the reference path.
    """

    layout: object
    window: int
    kind: Tensor = field(init=False)
    chunk: Tensor = field(init=False)
    _lists: dict = field(init=False, default_factory=dict)
    _device_arrays: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = self.layout.kind.detach().to("cpu", torch.int32)
        self.chunk = self.layout.chunk.detach().to("cpu", torch.int32)
        if self.kind.shape != self.chunk.shape or self.kind.dim() != 1:
            raise ValueError("a block-causal layout needs kind and chunk tensors of one shape [T]")

    @property
    def tokens(self) -> int:
        return self.kind.shape[0]

    def mask(self) -> Tensor:
        """The dense visibility mask [T, T] (True = visible), on the CPU."""
        if hasattr(self.layout, "mask"):
            return self.layout.mask(self.window)
        return visible(self.kind[:, None], self.chunk[:, None], self.kind[None], self.chunk[None], self.window)

    def arrays(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """kind and chunk [T] int32 on `device`."""
        if device not in self._device_arrays:
            self._device_arrays[device] = (self.kind.to(device), self.chunk.to(device))
        return self._device_arrays[device]

    def _codes(self) -> tuple[Tensor, Tensor]:
        """Each token's (kind, chunk) code [T], and the visibility between codes [codes, codes] (float64 0/1)."""
        chunks = int(self.chunk.max()) + 1 if self.tokens else 0
        code = (self.kind.long() * (chunks + 1) + self.chunk.long() + 1).clamp(min=0)
        rep = torch.arange(3 * (chunks + 1))
        rep_kind, rep_chunk = rep // (chunks + 1), rep % (chunks + 1) - 1
        pair_visible = visible(rep_kind[:, None], rep_chunk[:, None], rep_kind[None], rep_chunk[None], self.window)
        return code, pair_visible.double()

    def visible_pairs(self) -> int:
        """How many (query, key) pairs the mask lets through: the work of one head, for FLOP counts."""
        code, pair_visible = self._codes()
        count = torch.bincount(code, minlength=pair_visible.shape[0]).double()
        return int(count @ pair_visible @ count)

    def classes(self, block_m: int, block_n: int) -> Tensor:
        """EMPTY / PARTIAL / FULL per (query tile of block_m, key tile of block_n): [Mt, Nt] int8, on the CPU."""
        code, pair_visible = self._codes()
        tokens = self.tokens

        def presence(block: int) -> Tensor:  # [tiles, codes]: which codes occur in each tile
            present = torch.zeros(-(-tokens // block), pair_visible.shape[0], dtype=torch.float64)
            present[torch.arange(tokens) // block, code] = 1.0
            return present

        rows, cols = presence(block_m), presence(block_n)
        some = rows @ pair_visible @ cols.T > 0
        hidden = rows @ (1 - pair_visible) @ cols.T > 0
        return (some.to(torch.int8) + (some & ~hidden).to(torch.int8)).contiguous()

    def tiles(self, block_m: int, block_n: int, device: torch.device, by_key: bool = False) -> TileLists:
        """Tile lists per query tile (the forward, dQ), or per key tile with `by_key` (dK, dV)."""
        key = (block_m, block_n, by_key, device)
        if key not in self._lists:
            classes = self.classes(block_m, block_n)
            last = block_m if by_key else block_n  # the size of the tiles being visited
            if by_key:
                classes = classes.T.contiguous()
            if self.tokens % last:  # the last visited tile runs past the end: bounds-checked in the masked path
                classes[:, -1] = torch.where(classes[:, -1] == FULL, PARTIAL, classes[:, -1])
            self._lists[key] = TileLists.from_classes(classes, device)
        return self._lists[key]
