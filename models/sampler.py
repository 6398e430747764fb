"""Chunked causal flow-matching sampler: prefill the sinks, then per chunk N Euler steps and one clean pass.

Rectified flow: x_t = (1 - t)·x_0 + t·ε, the model predicts the velocity ε - x_0, and sampling integrates
from t = 1 (noise) to t = 0 (clean). Classifier-free guidance runs the negative branch — the reference
voice replaced by a white-noise clip — as extra rows of the same batch, each branch with its own cache rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from sonate.models.audio import white_noise
from sonate.models.cache import ChunkAttention, ChunkView, KVCache, PrefixAttention
from sonate.models.conditioning import Conditioning
from sonate.models.config import SonateConfig
from sonate.models.phases import PhaseTimer, untimed
from sonate.models.transformer import ChunkPhonemes, SonateModel


class PhonemeSource(Protocol):
    """Anything that tells the phoneme and speaker ids at media times (a timeline, a session's speech track)."""

    def sample(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def flow_timesteps(steps: int, shift: float = 1.0) -> Tensor:
    """Flow times from 1 to 0 for `steps` Euler steps: [steps + 1]; `shift` > 1 spends more steps near noise."""
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def euler_integrate(
    audio: Tensor, video: Tensor, schedule: Tensor, velocity: Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Integrate the latents from schedule[0] to schedule[-1] (flow times) with one Euler step per interval of
    `velocity(audio, video, t)`: audio [B, Fa, Ca], video [B, Fv, C, h, w]."""
    for t, t_next in zip(schedule[:-1].tolist(), schedule[1:].tolist(), strict=True):
        v_a, v_v = velocity(audio, video, t)
        audio, video = audio + (t_next - t) * v_a, video + (t_next - t) * v_v
    return audio, video


def chunk_noise(cfg: SonateConfig, seeds: list[int], chunks: list[int]) -> tuple[Tensor, Tensor]:
    """Starting noise of chunk `chunks[i]` of the sequence seeded `seeds[i]`: audio [B, Fa, Ca], video [B, Fv, C, h, w].

    A function of (seed, chunk) only, so a chunk regenerated after a rollback starts from the same noise.
    """
    audio, video = [], []
    for seed, chunk in zip(seeds, chunks, strict=True):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        audio.append(torch.randn(cfg.chunk_audio_latents, cfg.audio_latent_dim, generator=generator))
        video.append(
            torch.randn(
                cfg.chunk_video_latents,
                cfg.video_latent_channels,
                cfg.video_latent_height,
                cfg.video_latent_width,
                generator=generator,
            )
        )
    return torch.stack(audio), torch.stack(video)


def chunk_phonemes(cfg: SonateConfig, timelines: list[PhonemeSource], first_chunk: int, chunks: int) -> ChunkPhonemes:
    """Phoneme and speaker ids of chunks [first_chunk, first_chunk + chunks): at the centre time of every audio
    latent frame and of every video frame."""
    audio_index = np.arange(first_chunk * cfg.chunk_audio_latents, (first_chunk + chunks) * cfg.chunk_audio_latents)
    video_index = np.arange(first_chunk * cfg.chunk_video_frames, (first_chunk + chunks) * cfg.chunk_video_frames)
    audio_times = (audio_index + 0.5) * cfg.audio_hop / cfg.sample_rate
    video_times = (video_index + 0.5) / cfg.video_fps
    audio = [timeline.sample(audio_times) for timeline in timelines]
    video = [timeline.sample(video_times) for timeline in timelines]
    return ChunkPhonemes(
        *(
            torch.as_tensor(np.stack([ids[i] for ids in samples]), dtype=torch.int64)
            for samples in (audio, video)
            for i in (0, 1)
        )
    )


def negative_conditioning(cfg: SonateConfig, cond: Conditioning, seeds: list[int]) -> Conditioning:
    """The CFG negative's prefix: the same instruction and avatar, the reference voice replaced by seeded white
    noise (its phonemes are dropped too: `branch_phonemes`)."""
    samples = cond.voice.shape[-1]
    noise = torch.stack([white_noise(samples, cfg.negative_noise_std, seed) for seed in seeds])
    return Conditioning(cond.instruction_ids, noise.to(cond.voice), cond.avatar, cond.avatar_latent)


def branch_conditioning(cfg: SonateConfig, cond: Conditioning, seeds: list[int], branches: int) -> Conditioning:
    """Conditioning for the rows of every CFG branch: [conditional | negative] (`seeds`: one per row of `cond`)."""
    return cond if branches == 1 else Conditioning.cat([cond, negative_conditioning(cfg, cond, seeds)])


def dropped_phonemes(cfg: SonateConfig, ids: ChunkPhonemes) -> ChunkPhonemes:
    """The phonemes replaced by the "dropped" id — the vocabulary's last, never a real phoneme — and speaker 0."""
    dropped = cfg.phoneme_vocab - 1
    return ChunkPhonemes(
        torch.full_like(ids.audio, dropped),
        torch.zeros_like(ids.audio_speaker),
        torch.full_like(ids.video, dropped),
        torch.zeros_like(ids.video_speaker),
    )


def branch_phonemes(cfg: SonateConfig, ids: ChunkPhonemes, branches: int) -> ChunkPhonemes:
    """Phonemes for the rows of every CFG branch: [conditional | negative], the negative's dropped (as the
    phoneme dropout in training drops them), so guidance also pushes speech and lips toward the phonemes."""
    return ids if branches == 1 else ChunkPhonemes.cat([ids, dropped_phonemes(cfg, ids)])


@dataclass
class Guidance:
    """Classifier-free guidance scales per modality; 1 means no guidance for it."""

    audio: float = 1.0
    video: float = 1.0

    @classmethod
    def of(cls, cfg: SonateConfig) -> Guidance:
        """The scales a model was trained and shipped with (`cfg.audio_guidance`, `cfg.video_guidance`)."""
        return cls(cfg.audio_guidance, cfg.video_guidance)

    @property
    def enabled(self) -> bool:
        """Whether the negative branch runs at all."""
        return self.audio != 1.0 or self.video != 1.0

    def combine(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        """Guided velocities from raw ones whose rows are [conditional | negative]: v₋ + s·(v₊ − v₋)."""
        (cond_a, neg_a), (cond_v, neg_v) = audio.chunk(2), video.chunk(2)
        return neg_a + self.audio * (cond_a - neg_a), neg_v + self.video * (cond_v - neg_v)


class ChunkStream:
    """Generates consecutive chunks for up to `capacity` sequences (slots) that share one KV cache.

    Each slot is opened with its conditioning and seed, then any subset of open slots makes its next chunk
    in one batched forward (continuous batching); slots keep their own chunk counts. With guidance on, slot s
    owns cache rows s (conditional) and capacity + s (negative).
    """

    def __init__(
        self,
        model: SonateModel,
        capacity: int,
        guidance: Guidance,
        steps: int | None = None,
        shift: float | None = None,
    ) -> None:
        cfg = model.cfg
        self.model = model
        self.cfg = cfg
        self.capacity = capacity
        self.guidance = guidance
        self.schedule = flow_timesteps(steps or cfg.steps, cfg.shift if shift is None else shift)
        self.branches = 2 if guidance.enabled else 1
        param = next(model.parameters())
        self.cache = KVCache(cfg, capacity * self.branches, param.device, param.dtype)
        rows = capacity * self.branches
        self.timbre = torch.zeros(rows, cfg.dim, device=param.device, dtype=param.dtype)
        self.reference = torch.zeros(rows, cfg.video_tokens_per_latent, cfg.dim, device=param.device, dtype=param.dtype)
        self.seeds = [0] * capacity

    @classmethod
    def open_batch(
        cls, model: SonateModel, cond: Conditioning, seeds: list[int], guidance: Guidance, steps: int | None = None
    ) -> ChunkStream:
        """A stream whose slots 0 … B-1 are open with the rows of `cond` and `seeds`."""
        stream = cls(model, len(seeds), guidance, steps)
        stream.open(list(range(len(seeds))), cond, seeds)
        return stream

    def rows(self, slots: list[int]) -> Tensor:
        """Cache rows of `slots`: [conditional rows | negative rows]."""
        slot_rows = torch.tensor(slots, dtype=torch.int64)
        return torch.cat([slot_rows + branch * self.capacity for branch in range(self.branches)])

    def chunk_index(self, slot: int = 0) -> int:
        """Index of the chunk `slot` makes next."""
        return int(self.cache.next_chunk[slot])

    def open(self, slots: list[int], cond: Conditioning, seeds: list[int]) -> None:
        """Start `slots` afresh from `cond` (one row per slot) and their noise seeds."""
        for slot, seed in zip(slots, seeds, strict=True):
            self.seeds[slot] = seed
        self.condition(slots, cond)
        self.cache.next_chunk[self.rows(slots)] = 0

    @torch.no_grad()
    def condition(self, slots: list[int], cond: Conditioning) -> None:
        """Compute the prefix K/V (the sinks) and timbre of `slots` from `cond`; their chunks stay in the cache."""
        cond = branch_conditioning(self.cfg, cond, [self.seeds[s] for s in slots], self.branches)
        rows = self.rows(slots)
        prefix = self.model.conditioning(cond)
        self.model.prefix_tokens(prefix, PrefixAttention(self.cache, rows))
        self.timbre[rows.to(self.timbre.device)] = prefix.timbre
        self.reference[rows.to(self.reference.device)] = prefix.reference

    @torch.no_grad()
    def generate(
        self, phonemes: ChunkPhonemes, slots: list[int] | None = None, timer: PhaseTimer = untimed
    ) -> tuple[Tensor, Tensor]:
        """Make the next chunk of `slots` (default: all): clean audio latents [B, Fa, Ca], video [B, Fv, C, h, w].

        `timer` is called with "euler" when the Euler steps end and "clean" when the clean pass has written
        the chunk into the cache (a `Laps` records each phase's seconds).
        """
        slots = list(range(self.capacity)) if slots is None else slots
        param = next(self.model.parameters())
        # 1. start from each slot's seeded noise for its own chunk index
        seeds, chunks = [self.seeds[slot] for slot in slots], [self.chunk_index(slot) for slot in slots]
        audio, video = (x.to(param) for x in chunk_noise(self.cfg, seeds, chunks))  # [B, Fa, Ca], [B, Fv, C, h, w]
        # 2. gather the sinks and windows of every branch's rows once; every step of this chunk reads them
        view = self.cache.gather(self.rows(slots))
        # 3. N Euler steps of the guided velocity from t = 1 (noise) to t = 0 (clean)
        velocity = functools.partial(self.guided_velocity, phonemes=phonemes, view=view)
        audio, video = euler_integrate(audio, video, self.schedule, velocity)
        timer("euler")
        # 4. the clean pass at t = 0 writes the chunk's K/V into its ring slot, in every branch
        self.clean_pass(audio, video, phonemes, view)
        # 5. advance: these rows make their next chunk next
        self.cache.advance(view)
        timer("clean")
        return audio, video

    def velocity(
        self, audio: Tensor, video: Tensor, t: float | Tensor, phonemes: ChunkPhonemes, view: ChunkView
    ) -> tuple[Tensor, Tensor]:
        """Raw velocities of the cache rows of `view` (no guidance) at flow time t (one, or one per row)."""
        model = self.model
        t_rows = torch.as_tensor(t, dtype=torch.float32, device=audio.device).reshape(-1, 1).expand(len(view.rows), 1)
        x_a, x_v = model.embed_chunks(audio, video, phonemes, self.reference[view.rows])
        mod_a, mod_v = model.modulation(t_rows, self.timbre[view.rows])
        x_a, x_v = model.run_blocks(x_a, x_v, mod_a, mod_v, ChunkAttention(self.cache, view, write=False))
        return model.heads(x_a, x_v, mod_a, mod_v)

    def guided_velocity(
        self, audio: Tensor, video: Tensor, t: float | Tensor, phonemes: ChunkPhonemes, view: ChunkView
    ) -> tuple[Tensor, Tensor]:
        """The guided velocity of each slot of `view`: audio [B, Fa, Ca], video [B, Fv, C, h, w]."""
        if self.branches == 1:
            return self.velocity(audio, video, t, phonemes, view)
        t_rows = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(audio.shape[0]).repeat(2)
        rows_phonemes = branch_phonemes(self.cfg, phonemes, 2)
        v_a, v_v = self.velocity(audio.repeat(2, 1, 1), video.repeat(2, 1, 1, 1, 1), t_rows, rows_phonemes, view)
        return self.guidance.combine(v_a, v_v)

    @torch.no_grad()
    def clean_pass(self, audio: Tensor, video: Tensor, phonemes: ChunkPhonemes, view: ChunkView) -> None:
        """Run the chunk's clean latents at t = 0 through every branch, writing their K/V into the ring slot of
        `view` (the cache's position does not move: `KVCache.advance` moves it)."""
        model = self.model
        audio, video = audio.repeat(self.branches, 1, 1), video.repeat(self.branches, 1, 1, 1, 1)
        rows_phonemes = branch_phonemes(self.cfg, phonemes, self.branches)
        x_a, x_v = model.embed_chunks(audio, video, rows_phonemes, self.reference[view.rows])
        t_rows = torch.zeros(len(view.rows), 1, device=audio.device)
        mod_a, mod_v = model.modulation(t_rows, self.timbre[view.rows])
        model.run_blocks(x_a, x_v, mod_a, mod_v, ChunkAttention(self.cache, view, write=True))

    def rollback(self, chunk: int, slots: list[int] | None = None) -> None:
        """Forget the chunks of `slots` (default: all) from `chunk` on; their next chunk is `chunk` again."""
        slots = list(range(self.capacity)) if slots is None else slots
        self.cache.rollback(chunk, self.rows(slots))


class RecomputeStream:
    """Generates chunks like `ChunkStream`, but with no KV cache: every Euler step re-runs the teacher-forcing
    one-pass forward over the prefix and every chunk generated so far (`window` chunks of context; None for all).

    With the default window this is the offline reference the streaming path must equal; with no window it is
    the "recompute everything" baseline whose cost grows with the stream. Batch = the rows of `cond`.
    """

    def __init__(
        self,
        model: SonateModel,
        cond: Conditioning,
        seeds: list[int],
        guidance: Guidance,
        steps: int | None = None,
        window: int | None = -1,  # -1: the model's window
    ) -> None:
        cfg = model.cfg
        self.window = cfg.window_chunks if window == -1 else window
        self.model, self.cfg, self.seeds, self.guidance = model, cfg, seeds, guidance
        self.schedule = flow_timesteps(steps or cfg.steps, cfg.shift)
        self.cond = branch_conditioning(cfg, cond, seeds, 2 if guidance.enabled else 1)
        param = next(model.parameters())
        self.audio = torch.zeros(len(seeds), 0, cfg.audio_latent_dim, device=param.device, dtype=param.dtype)
        self.video = torch.zeros(
            len(seeds), 0, cfg.video_latent_channels, cfg.video_latent_height, cfg.video_latent_width,
            device=param.device, dtype=param.dtype,
        )  # fmt: skip
        self.phonemes: ChunkPhonemes | None = None

    @torch.no_grad()
    def generate(self, phonemes: ChunkPhonemes) -> tuple[Tensor, Tensor]:
        """Make the next chunk of every row: clean audio latents [B, Fa, Ca], video [B, Fv, C, h, w]."""
        from sonate.models.teacher_forcing import teacher_forward

        cfg, model, branches = self.cfg, self.model, 2 if self.guidance.enabled else 1
        chunk = self.audio.shape[1] // cfg.chunk_audio_latents
        history = phonemes if self.phonemes is None else ChunkPhonemes.cat([self.phonemes, phonemes], dim=1)
        noise = chunk_noise(cfg, self.seeds, [chunk] * len(self.seeds))
        audio, video = (x.to(self.audio) for x in noise)
        prefix = model.conditioning(self.cond)
        clean = (self.audio.repeat(branches, 1, 1), self.video.repeat(branches, 1, 1, 1, 1))
        clean_ids = branch_phonemes(cfg, history.select(0, chunk, cfg), branches)
        noisy_ids = branch_phonemes(cfg, phonemes, branches)

        def velocity(audio: Tensor, video: Tensor, t: float) -> tuple[Tensor, Tensor]:
            noisy = (audio.repeat(branches, 1, 1), video.repeat(branches, 1, 1, 1, 1))
            t_rows = torch.full((len(self.seeds) * branches, 1), t, device=audio.device)
            v_a, v_v = teacher_forward(model, prefix, clean, clean_ids, noisy, noisy_ids, t_rows, [chunk], self.window)
            return self.guidance.combine(v_a, v_v) if branches == 2 else (v_a, v_v)

        audio, video = euler_integrate(audio, video, self.schedule, velocity)
        self.audio, self.video = torch.cat((self.audio, audio), 1), torch.cat((self.video, video), 1)
        self.phonemes = history
        return audio, video
