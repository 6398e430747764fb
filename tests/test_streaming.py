"""The central invariant: chunked streaming with the KV cache equals the teacher-forcing one-pass forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sonate.models.conditioning import Conditioning
from sonate.models.config import SonateConfig
from sonate.models.positions import chunk_rope_tables
from sonate.models.sampler import ChunkStream, Guidance, RecomputeStream, branch_conditioning, branch_phonemes
from sonate.models.teacher_forcing import CLEAN, NOISY, PREFIX, teacher_forward, token_layout
from sonate.models.transformer import ChunkPhonemes, SonateModel
from tests.conftest import random_conditioning, random_latents, random_phonemes, small_config

TOLERANCE = 1e-4  # fp32, max abs difference of velocities


def chunk_slice(cfg: SonateConfig, latents: tuple[torch.Tensor, torch.Tensor], k: int):
    """Chunk k of (audio, video) latents."""
    fa, fv = cfg.chunk_audio_latents, cfg.chunk_video_latents
    return latents[0][:, k * fa : (k + 1) * fa], latents[1][:, k * fv : (k + 1) * fv]


def teacher_rows(model: SonateModel, cond: Conditioning, clean, noisy, phonemes: ChunkPhonemes, t: torch.Tensor):
    """One-pass velocities for every noisy chunk of the rows of `cond`."""
    with torch.no_grad():
        return teacher_forward(model, model.conditioning(cond), clean, phonemes, noisy, phonemes, t)


@pytest.mark.parametrize("guided", [False, True], ids=["cfg-off", "cfg-on"])
@pytest.mark.parametrize("window", [2, 8], ids=["ring-rolls", "window-holds-all"])
def test_streaming_equals_one_pass(guided: bool, window: int) -> None:
    cfg = small_config(window_chunks=window)
    torch.manual_seed(0)
    model = SonateModel(cfg).eval()
    batch, chunks, seeds = 2, 5, [3, 4]
    cond = random_conditioning(cfg, batch)
    phonemes = random_phonemes(cfg, batch, chunks)
    clean, noisy = random_latents(cfg, batch, chunks, seed=1), random_latents(cfg, batch, chunks, seed=2)
    t = torch.rand(batch, chunks, generator=torch.Generator().manual_seed(5))
    guidance = Guidance(2.0, 1.5) if guided else Guidance()
    stream = ChunkStream.open_batch(model, cond, seeds, guidance)
    branches = 2 if guided else 1
    rows_cond = branch_conditioning(cfg, cond, seeds, branches)
    expected = teacher_rows(
        model,
        rows_cond,
        tuple(x.repeat(branches, *[1] * (x.dim() - 1)) for x in clean),
        tuple(x.repeat(branches, *[1] * (x.dim() - 1)) for x in noisy),
        branch_phonemes(cfg, phonemes, branches),  # the negative rows read dropped phonemes
        t.repeat(branches, 1),
    )
    with torch.no_grad():
        for k in range(chunks):
            view = stream.cache.gather(stream.rows(list(range(batch))))
            a, v = chunk_slice(cfg, noisy, k)
            a, v = a.repeat(branches, 1, 1), v.repeat(branches, 1, 1, 1, 1)
            ph = branch_phonemes(cfg, phonemes.select(k, 1, cfg), branches)
            got = stream.velocity(a, v, t[:, k].repeat(branches), ph, view)
            want = chunk_slice(cfg, expected, k)
            for g, w in zip(got, want, strict=True):
                assert (g - w).abs().max() <= TOLERANCE
                assert w.abs().mean() > 100 * TOLERANCE  # the velocities are not trivially small
            if guided:
                ga, gv = stream.guided_velocity(*chunk_slice(cfg, noisy, k), t[:, k], phonemes.select(k, 1, cfg), view)
                (ca, na), (cv, nv) = want[0].chunk(2), want[1].chunk(2)
                assert (ga - (na + 2.0 * (ca - na))).abs().max() <= TOLERANCE
                assert (gv - (nv + 1.5 * (cv - nv))).abs().max() <= TOLERANCE
            stream.clean_pass(*chunk_slice(cfg, clean, k), phonemes.select(k, 1, cfg), view)
            stream.cache.advance(view)


def test_velocity_depends_on_the_context_it_should(model: SonateModel, cfg: SonateConfig) -> None:
    """Negative control: a changed clean chunk before k moves noisy chunk k's velocity far beyond the tolerance;
    the clean copy of chunk k itself and later chunks do not move it at all (causality)."""
    batch, chunks, query = 1, 4, 2
    cond = random_conditioning(cfg, batch)
    phonemes = random_phonemes(cfg, batch, chunks)
    clean, noisy = random_latents(cfg, batch, chunks, seed=1), random_latents(cfg, batch, chunks, seed=2)
    t = torch.full((batch, chunks), 0.5)
    base = teacher_rows(model, cond, clean, noisy, phonemes, t)
    replacement = random_latents(cfg, batch, chunks, seed=9)
    fa, fv = cfg.chunk_audio_latents, cfg.chunk_video_latents
    for changed, visible in ((0, True), (1, True), (2, False), (3, False)):
        audio, video = clean[0].clone(), clean[1].clone()
        audio[:, changed * fa : (changed + 1) * fa] = replacement[0][:, changed * fa : (changed + 1) * fa]
        video[:, changed * fv : (changed + 1) * fv] = replacement[1][:, changed * fv : (changed + 1) * fv]
        other = teacher_rows(model, cond, (audio, video), noisy, phonemes, t)
        pairs = zip(chunk_slice(cfg, other, query), chunk_slice(cfg, base, query), strict=True)
        difference = max((o - b).abs().max() for o, b in pairs)
        assert difference > 100 * TOLERANCE if visible else difference == 0


def test_block_causal_mask_structure(cfg: SonateConfig) -> None:
    layout = token_layout(cfg, clean_chunks=4, noisy_chunks=[0, 1, 2, 3])
    mask = layout.mask(window=2)

    def sees(q_kind: int, q_chunk: int, k_kind: int, k_chunk: int) -> bool:
        q = ((layout.kind == q_kind) & (layout.chunk == q_chunk)).nonzero()[0, 0]
        k = ((layout.kind == k_kind) & (layout.chunk == k_chunk)).nonzero()[0, 0]
        return bool(mask[q, k])

    assert sees(NOISY, 3, PREFIX, -1) and sees(CLEAN, 0, PREFIX, -1)
    assert not sees(PREFIX, -1, CLEAN, 0) and not sees(PREFIX, -1, NOISY, 0)
    assert sees(NOISY, 3, CLEAN, 2) and sees(NOISY, 3, CLEAN, 1) and not sees(NOISY, 3, CLEAN, 0)
    assert not sees(NOISY, 3, CLEAN, 3) and sees(NOISY, 3, NOISY, 3) and not sees(NOISY, 3, NOISY, 2)
    assert sees(CLEAN, 3, CLEAN, 3) and sees(CLEAN, 3, CLEAN, 1) and not sees(CLEAN, 3, CLEAN, 0)
    assert not sees(CLEAN, 1, CLEAN, 2) and not sees(CLEAN, 2, NOISY, 2)


class ListReference:
    """A cache that keeps every chunk's K/V in a list and assembles the visible set explicitly each time,
    rotating keys at absolute positions (chunk j at time j) — the ring's opposite in every choice."""

    def __init__(self, cfg: SonateConfig) -> None:
        self.cfg = cfg
        self.sinks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.chunks: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []

    def rotate(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Rotate pairs (i, i + D/2) of the rotated channels, written out as a 2-D rotation."""
        cos, sin = chunk_rope_tables(self.cfg, torch.tensor([chunk]))
        half, pairs = x.shape[-1] // 2, sum(self.cfg.rope_sections) // 2
        cos, sin = cos[0, :, :pairs], sin[0, :, :pairs]
        first, second = x[..., :pairs], x[..., half : half + pairs]
        out = x.clone()
        out[..., :pairs] = first * cos - second * sin
        out[..., half : half + pairs] = first * sin + second * cos
        return out

    def prefix(self):
        reference = self

        class Prefix:
            def attend(self, layer, q, k, v):
                k = k.clone()
                half, pairs = k.shape[-1] // 2, sum(reference.cfg.rope_sections) // 2
                k[..., :pairs] = 0
                k[..., half : half + pairs] = 0
                reference.sinks[layer] = (k, v)
                return F.scaled_dot_product_attention(q, k, v)

        return Prefix()

    def chunk(self, index: int, write: bool):
        reference = self
        if write:
            self.chunks.append({})

        class Chunk:
            def attend(self, layer, q, k, v):
                visible = range(max(0, index - reference.cfg.window_chunks), index)
                keys = [reference.sinks[layer][0], reference.rotate(k, index)]
                values = [reference.sinks[layer][1], v]
                for j in visible:
                    keys.append(reference.rotate(reference.chunks[j][layer][0], j))
                    values.append(reference.chunks[j][layer][1])
                if write:
                    reference.chunks[index][layer] = (k, v)
                q = reference.rotate(q, index)
                return F.scaled_dot_product_attention(q, torch.cat(keys, dim=2), torch.cat(values, dim=2))

        return Chunk()


def test_ring_equals_list_reference() -> None:
    cfg = small_config(window_chunks=3, max_rollback_chunks=1)
    torch.manual_seed(1)
    model = SonateModel(cfg).eval()
    batch, chunks = 2, 3 * cfg.window_chunks
    cond = random_conditioning(cfg, batch)
    phonemes = random_phonemes(cfg, batch, chunks)
    clean, noisy = random_latents(cfg, batch, chunks, seed=1), random_latents(cfg, batch, chunks, seed=2)
    stream = ChunkStream.open_batch(model, cond, [0, 1], Guidance())
    reference = ListReference(cfg)
    with torch.no_grad():
        prefix = model.conditioning(cond)
        model.prefix_tokens(prefix, reference.prefix())
        for k in range(chunks):
            ph = phonemes.select(k, 1, cfg)
            view = stream.cache.gather(stream.rows(list(range(batch))))
            got = stream.velocity(*chunk_slice(cfg, noisy, k), 0.7, ph, view)
            x_a, x_v = model.embed_chunks(*chunk_slice(cfg, noisy, k), ph, prefix.reference)
            mod_a, mod_v = model.modulation(torch.full((batch, 1), 0.7), prefix.timbre)
            x_a, x_v = model.run_blocks(x_a, x_v, mod_a, mod_v, reference.chunk(k, write=False))
            want = model.heads(x_a, x_v, mod_a, mod_v)
            for g, w in zip(got, want, strict=True):
                assert (g - w).abs().max() <= TOLERANCE
            stream.clean_pass(*chunk_slice(cfg, clean, k), ph, view)
            stream.cache.advance(view)
            x_a, x_v = model.embed_chunks(*chunk_slice(cfg, clean, k), ph, prefix.reference)
            mod_a, mod_v = model.modulation(torch.zeros(batch, 1), prefix.timbre)
            model.run_blocks(x_a, x_v, mod_a, mod_v, reference.chunk(k, write=True))


def test_rollback_regenerates_identically(model: SonateModel, cfg: SonateConfig) -> None:
    cond = random_conditioning(cfg, 1)
    phonemes = random_phonemes(cfg, 1, 5)
    first = ChunkStream.open_batch(model, cond, [7], Guidance(2.0, 1.5))
    for k in range(5):
        first.generate(phonemes.select(k, 1, cfg))
    first.rollback(3)
    again = [first.generate(phonemes.select(k, 1, cfg)) for k in (3, 4)]

    straight = ChunkStream.open_batch(model, cond, [7], Guidance(2.0, 1.5))
    outputs = [straight.generate(phonemes.select(k, 1, cfg)) for k in range(5)]
    for (a, v), (a_ref, v_ref) in zip(again, outputs[3:], strict=True):
        assert torch.equal(a, a_ref) and torch.equal(v, v_ref)


def test_rollback_then_new_text_equals_a_run_that_had_it(model: SonateModel, cfg: SonateConfig) -> None:
    """After an interruption the next text continues from the rolled-back context, as if it had come first."""
    cond = random_conditioning(cfg, 1)
    old, new = random_phonemes(cfg, 1, 5, seed=1), random_phonemes(cfg, 1, 5, seed=2)
    interrupted = ChunkStream.open_batch(model, cond, [7], Guidance())
    for k in range(5):
        interrupted.generate(old.select(k, 1, cfg))
    interrupted.rollback(3)
    resumed = interrupted.generate(new.select(3, 1, cfg))
    fresh = ChunkStream.open_batch(model, cond, [7], Guidance())
    for k in range(3):
        fresh.generate(old.select(k, 1, cfg))
    expected = fresh.generate(new.select(3, 1, cfg))
    assert torch.equal(resumed[0], expected[0]) and torch.equal(resumed[1], expected[1])
    assert not torch.allclose(resumed[0], interrupted.generate(old.select(4, 1, cfg))[0])


def test_rollback_beyond_the_ring_is_refused(model: SonateModel, cfg: SonateConfig) -> None:
    stream = ChunkStream.open_batch(model, random_conditioning(cfg, 1), [0], Guidance())
    phonemes = random_phonemes(cfg, 1, 1)
    for _ in range(cfg.max_rollback_chunks + 2):
        stream.generate(phonemes)
    with pytest.raises(ValueError, match="cannot roll back"):
        stream.rollback(1)
    with pytest.raises(ValueError, match="cannot roll back"):
        stream.rollback(stream.chunk_index() + 1)


def test_cache_memory_is_bounded(model: SonateModel, cfg: SonateConfig) -> None:
    stream = ChunkStream.open_batch(model, random_conditioning(cfg, 1), [0], Guidance(2.0, 1.5))
    phonemes = random_phonemes(cfg, 1, 1)
    tensors = ("sink_k", "sink_v", "ring_k", "ring_v", "visible_k", "visible_v")

    def snapshot() -> tuple[int, list[int]]:
        return stream.cache.nbytes(), [getattr(stream.cache, name).data_ptr() for name in tensors]

    for _ in range(cfg.window_chunks):
        stream.generate(phonemes)
    after_window = snapshot()
    for _ in range(9 * cfg.window_chunks):
        stream.generate(phonemes)
    assert stream.chunk_index() == 10 * cfg.window_chunks
    assert snapshot() == after_window


@pytest.mark.parametrize("guided", [False, True], ids=["cfg-off", "cfg-on"])
def test_sessions_batched_at_different_positions_equal_separate_runs(
    model: SonateModel, cfg: SonateConfig, guided: bool
) -> None:
    """Continuous batching: a slot opened late shares forwards with one three chunks ahead, and both get
    exactly what they would get alone."""
    guidance = Guidance(2.0, 1.5) if guided else Guidance()
    cond = random_conditioning(cfg, 2)
    phonemes = random_phonemes(cfg, 2, 5)
    alone = []
    for slot in range(2):
        stream = ChunkStream.open_batch(model, cond.rows(slice(slot, slot + 1)), [10 + slot], guidance)
        alone.append([stream.generate(phonemes.select(k, 1, cfg).rows([slot])) for k in range(5)])

    shared = ChunkStream(model, capacity=2, guidance=guidance)
    row0, row1 = cond.rows(slice(0, 1)), cond.rows(slice(1, 2))
    shared.open([0], row0, [10])
    for k in range(3):
        assert _equal(shared.generate(phonemes.select(k, 1, cfg).rows([0]), slots=[0]), alone[0][k])
    shared.open([1], row1, [11])
    for k in range(2):  # slot 0 makes chunk 3 + k while slot 1 makes chunk k, in one forward
        both = ChunkPhonemes.cat([phonemes.select(3 + k, 1, cfg).rows([0]), phonemes.select(k, 1, cfg).rows([1])])
        audio, video = shared.generate(both, slots=[0, 1])
        assert _close((audio[:1], video[:1]), alone[0][3 + k]) and _close((audio[1:], video[1:]), alone[1][k])


def _equal(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _close(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return all((x - y).abs().max() <= TOLERANCE for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("guided", [False, True], ids=["cfg-off", "cfg-on"])
def test_generated_chunks_equal_recomputing_without_cache(guided: bool) -> None:
    """Whole generation, Euler steps included: the cached stream gives the chunks the no-cache one-pass
    recomputation gives, past the point where the ring rolls; with no window, later chunks differ."""
    cfg = small_config(window_chunks=2)
    torch.manual_seed(0)
    model = SonateModel(cfg).eval()
    batch, chunks, seeds = 2, 5, [7, 8]
    cond = random_conditioning(cfg, batch)
    phonemes = random_phonemes(cfg, batch, chunks)
    guidance = Guidance(2.0, 1.5) if guided else Guidance()
    stream = ChunkStream.open_batch(model, cond, seeds, guidance, steps=2)
    windowed = RecomputeStream(model, cond, seeds, guidance, steps=2)
    unwindowed = RecomputeStream(model, cond, seeds, guidance, steps=2, window=None)
    for k in range(chunks):
        ids = phonemes.select(k, 1, cfg)
        got = stream.generate(ids)
        want = windowed.generate(ids)
        everything = unwindowed.generate(ids)
        for g, w in zip(got, want, strict=True):
            assert (g - w).abs().max().item() < TOLERANCE
        gap = max((g - e).abs().max().item() for g, e in zip(got, everything, strict=True))
        assert (gap < TOLERANCE) == (k <= cfg.window_chunks), (k, gap)


def test_guidance_scales_each_modality_from_the_negative_branch() -> None:
    audio = torch.tensor([[3.0], [1.0]])  # rows [conditional | negative]
    video = torch.tensor([[5.0], [2.0]])
    guided_audio, guided_video = Guidance(2.0, 0.0).combine(audio, video)
    assert guided_audio.item() == 5.0  # 1 + 2·(3 − 1)
    assert guided_video.item() == 2.0  # scale 0: the negative branch's video
    assert Guidance(2.0, 0.0).enabled and Guidance(1.0, 0.0).enabled and not Guidance(1.0, 1.0).enabled
