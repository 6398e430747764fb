"""What the benchmarks share: the model they run, seeded random inputs, torch's thread count, the preset's name."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from sonate.models.checkpoint import load_checkpoint, random_model
from sonate.models.conditioning import INSTRUCTION_PAD, Conditioning
from sonate.models.config import PRESETS, SonateConfig
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.transformer import ChunkPhonemes, SonateModel

SEED = 0
VOICE_SECONDS = 3.0  # length of the random reference voice clip


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint` or `--preset`: the model a benchmark runs (read by `load_bench_model`)."""
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--preset", default="tiny", help="model preset with random weights (default tiny)")
    weights.add_argument("--checkpoint", type=Path,
                         help="benchmark this checkpoint folder instead ('default': the embedded one)")  # fmt: skip


def load_bench_model(checkpoint: Path | None, preset: str) -> tuple[SonateModel, Codecs | None]:
    """The model (and codecs) a benchmark runs: a checkpoint folder ("default": the embedded one), or else a
    preset with random weights (and seeded random codecs)."""
    if checkpoint is not None:
        loaded = load_checkpoint(None if str(checkpoint) == "default" else checkpoint)
        return loaded.model, loaded.codecs
    if preset not in PRESETS:
        raise SonateInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return random_model(SonateConfig.preset(preset)), None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` torch CPU threads (None: leave them), restoring the count afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def random_conditioning(cfg: SonateConfig, device: torch.device, dtype: torch.dtype) -> Conditioning:
    """Seeded random instruction bytes, a white-noise reference voice, a random avatar image and avatar latent,
    batch 1."""
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, INSTRUCTION_PAD + 1, (1, cfg.instruction_tokens), generator=generator)
    voice = 0.1 * torch.randn(1, int(VOICE_SECONDS * cfg.sample_rate), generator=generator)
    size = cfg.identity_image_size
    avatar = torch.rand(1, 3, size, size, generator=generator)
    latent_shape = (1, cfg.video_latent_channels, cfg.video_latent_height, cfg.video_latent_width)
    latent = torch.randn(latent_shape, generator=generator)
    return Conditioning(ids.to(device), voice.to(device, dtype), avatar.to(device, dtype), latent.to(device, dtype))


def random_phonemes(cfg: SonateConfig, chunks: int, device: torch.device) -> ChunkPhonemes:
    """Seeded random phoneme and speaker ids for `chunks` whole chunks, batch 1."""
    generator = torch.Generator().manual_seed(SEED + 1)

    def ids(high: int, per_chunk: int) -> Tensor:
        return torch.randint(0, high, (1, chunks * per_chunk), generator=generator).to(device)

    audio, video = cfg.chunk_audio_latents, cfg.chunk_video_frames
    return ChunkPhonemes(
        ids(cfg.phoneme_vocab, audio), ids(cfg.max_speakers, audio), ids(cfg.phoneme_vocab, video),
        ids(cfg.max_speakers, video),
    )  # fmt: skip


def preset_name(cfg: SonateConfig) -> str:
    """The preset `cfg` equals, or `custom`."""
    values = cfg.to_dict()
    return next((name for name in PRESETS if SonateConfig.preset(name).to_dict() == values), "custom")
