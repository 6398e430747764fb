"""Shared fixtures: a small random model and its inputs."""

from __future__ import annotations

import pytest
import torch

from sonate.models.conditioning import Conditioning, encode_instruction
from sonate.models.config import SonateConfig
from sonate.models.train import EncodedClip, EncodedSplit
from sonate.models.transformer import ChunkPhonemes, SonateModel


def small_config(**overrides: object) -> SonateConfig:
    """`tiny` shrunk for tests: 2 layers, 64×64 video (4 tokens per latent frame), a window of 2 chunks."""
    values = dict(dim=64, n_layers=2, n_heads=2, n_kv_heads=2, video_width=64, video_height=64, window_chunks=2)
    return SonateConfig.preset("tiny", **{**values, **overrides})


def random_conditioning(cfg: SonateConfig, batch: int, seed: int = 0) -> Conditioning:
    """Distinct instruction, voice, avatar and avatar latent per sequence."""
    generator = torch.Generator().manual_seed(seed)
    instructions = torch.stack([encode_instruction(cfg, f"voice {i}, face {i}") for i in range(batch)])
    voice = torch.randn(batch, cfg.sample_rate, generator=generator) * 0.1
    avatar = torch.rand(batch, 3, cfg.identity_image_size, cfg.identity_image_size, generator=generator)
    latent_shape = (batch, cfg.video_latent_channels, cfg.video_latent_height, cfg.video_latent_width)
    return Conditioning(instructions, voice, avatar, torch.randn(latent_shape, generator=generator))


def random_phonemes(cfg: SonateConfig, batch: int, chunks: int, seed: int = 0) -> ChunkPhonemes:
    """Random phoneme and speaker ids for `chunks` chunks."""
    generator = torch.Generator().manual_seed(seed)
    fa, fv = chunks * cfg.chunk_audio_latents, chunks * cfg.chunk_video_frames

    def ids(high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (batch, n), generator=generator)

    return ChunkPhonemes(
        ids(cfg.phoneme_vocab, fa), ids(cfg.max_speakers, fa), ids(cfg.phoneme_vocab, fv), ids(cfg.max_speakers, fv)
    )


def random_latents(cfg: SonateConfig, batch: int, chunks: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random audio [B, n·Fa, Ca] and video [B, n·Fv, C, h, w] latents for `chunks` chunks."""
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, chunks * cfg.chunk_audio_latents, cfg.audio_latent_dim, generator=generator)
    video = torch.randn(
        batch,
        chunks * cfg.chunk_video_latents,
        cfg.video_latent_channels,
        cfg.video_latent_height,
        cfg.video_latent_width,
        generator=generator,
    )
    return audio, video


@pytest.fixture
def cfg() -> SonateConfig:
    return small_config()


@pytest.fixture
def model(cfg: SonateConfig) -> SonateModel:
    torch.manual_seed(0)
    return SonateModel(cfg).eval()


def synthetic_split(cfg: SonateConfig, clips: int, chunks: int, seed: int) -> EncodedSplit:
    """Random latents and phonemes standing in for an encoded world split: `clips` clips of `chunks` chunks,
    two timbres and two avatars."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(clips):
        audio, video = random_latents(cfg, 1, chunks, seed=seed * 100 + i)
        items.append(
            EncodedClip(audio[0], video[0].half(), random_phonemes(cfg, 1, chunks, seed=seed * 100 + i),
                        encode_instruction(cfg, f"clip {i}"), f"t{i % 2}", f"a{i % 2}")
        )  # fmt: skip
    voices = {f"t{i}": torch.randn(cfg.sample_rate * 2, generator=generator) * 0.1 for i in range(2)}
    avatars = {f"a{i}": torch.rand(3, cfg.identity_image_size, cfg.identity_image_size, generator=generator)
               for i in range(2)}  # fmt: skip
    latents = {f"a{i}": torch.randn(cfg.video_latent_channels, cfg.video_latent_height, cfg.video_latent_width,
                                    generator=generator) for i in range(2)}  # fmt: skip
    mouths = {"a0": (1, 2, 0, 2), "a1": (0, 1, 1, 2)}  # latent cells
    return EncodedSplit(items, voices, avatars, latents, mouths)
