"""Model configuration and named presets; every size-dependent number comes from here."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from sonate.models.errors import SonateInputError


@dataclass
class SonateConfig:
    """Sizes, clocks and chunking of the joint audio-video transformer.

    Clocks: video at `video_fps` frames/s; audio at `sample_rate` Hz with one audio latent frame every
    `audio_hop` samples. A video latent frame covers `video_frames_per_latent` video frames. One chunk is
    `chunk_video_latents` video latent frames; the derived fields below check that a chunk is also a whole
    number of audio latent frames, so chunk boundaries fall exactly on both clocks.
    The shared temporal RoPE axis counts audio latent frames.
    """

    # transformer
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    mlp_ratio: float = 3.0
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # media clocks
    video_fps: int = 25
    sample_rate: int = 16000
    audio_hop: int = 320  # samples per audio latent frame (20 ms at 16 kHz)
    audio_latent_dim: int = 64  # channels per audio latent frame
    video_width: int = 128  # decoded RGB frames, pixels
    video_height: int = 128
    video_downsample: int = 8  # pixels per video latent cell, each side
    video_frames_per_latent: int = 4
    video_latent_channels: int = 16
    video_patch: int = 4  # latent cells per token, each side
    # chunking and cache
    chunk_video_latents: int = 2
    window_chunks: int = 8  # W: chunks of context visible besides the sinks and the chunk itself
    max_rollback_chunks: int = 5  # extra ring slots so an interruption can roll back this far
    # conditioning
    instruction_tokens: int = 128  # UTF-8 bytes of the instruction, padded or cut
    voice_tokens: int = 16  # reference-voice prompt tokens (pooled log-mel)
    identity_tokens: int = 16  # reference-avatar tokens (image patches)
    identity_image_size: int = 64
    phoneme_vocab: int = 160  # ≥ the frontend's PHONEME_VOCAB_SIZE (138), with room to grow
    max_speakers: int = 8
    # sampling
    steps: int = 4
    shift: float = 1.0  # timestep shift; 1 is the plain linear schedule
    audio_guidance: float = 2.0
    video_guidance: float = 0.0  # 0: the negative branch's video, whose mouth follows the sound (architecture.md)
    negative_noise_std: float = 0.1  # white-noise clip of the negative branch (noise-based negative)
    dtype: str = "float32"

    # derived, set in __post_init__
    head_dim: int = field(init=False)
    audio_latents_per_video_latent: int = field(init=False)
    chunk_video_frames: int = field(init=False)
    chunk_audio_latents: int = field(init=False)
    chunk_audio_samples: int = field(init=False)
    chunk_seconds: float = field(init=False)
    video_latent_height: int = field(init=False)
    video_latent_width: int = field(init=False)
    video_token_rows: int = field(init=False)
    video_token_cols: int = field(init=False)
    video_tokens_per_latent: int = field(init=False)
    chunk_video_tokens: int = field(init=False)
    chunk_tokens: int = field(init=False)
    prefix_audio_tokens: int = field(init=False)
    prefix_tokens: int = field(init=False)
    ring_chunks: int = field(init=False)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise SonateInputError("dim must divide into n_heads, and n_heads into n_kv_heads")
        self.head_dim = self.dim // self.n_heads
        if self.head_dim % 8:
            raise SonateInputError("head_dim must be a multiple of 8 (RoPE sections)")
        audio_latent_rate = self.sample_rate / self.audio_hop
        per_video_latent = audio_latent_rate * self.video_frames_per_latent / self.video_fps
        if self.sample_rate % self.audio_hop or per_video_latent != int(per_video_latent):
            raise SonateInputError(
                "a video latent frame must span a whole number of audio latent frames "
                f"(got {per_video_latent:g}); adjust audio_hop, video_fps or video_frames_per_latent"
            )
        cell = self.video_downsample * self.video_patch
        if self.video_width % cell or self.video_height % cell:
            raise SonateInputError(f"video width and height must be multiples of {cell} (downsample × patch)")
        self.audio_latents_per_video_latent = int(per_video_latent)
        self.chunk_video_frames = self.chunk_video_latents * self.video_frames_per_latent
        self.chunk_audio_latents = self.chunk_video_latents * self.audio_latents_per_video_latent
        self.chunk_audio_samples = self.chunk_audio_latents * self.audio_hop
        self.chunk_seconds = self.chunk_video_frames / self.video_fps
        self.video_latent_height = self.video_height // self.video_downsample
        self.video_latent_width = self.video_width // self.video_downsample
        self.video_token_rows = self.video_latent_height // self.video_patch
        self.video_token_cols = self.video_latent_width // self.video_patch
        self.video_tokens_per_latent = self.video_token_rows * self.video_token_cols
        self.chunk_video_tokens = self.chunk_video_latents * self.video_tokens_per_latent
        self.chunk_tokens = self.chunk_audio_latents + self.chunk_video_tokens
        self.prefix_audio_tokens = self.instruction_tokens + self.voice_tokens
        self.prefix_tokens = self.prefix_audio_tokens + self.identity_tokens
        self.ring_chunks = self.window_chunks + self.max_rollback_chunks

    @property
    def avatar_image_size(self) -> int:
        """Side in pixels of the square reference avatar images are read at: the video's larger side (the
        reference latent is made at the video's size; the identity tokens downsample it)."""
        return max(self.video_width, self.video_height)

    @property
    def rope_sections(self) -> tuple[int, int, int]:
        """Head dims rotated by (time, row, column); the rest of the head is position-free."""
        return self.head_dim // 4, self.head_dim // 8, self.head_dim // 8

    def to_dict(self) -> dict:
        """The init fields only, for `config.json`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, values: dict) -> SonateConfig:
        """Build from `to_dict` output; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SonateInputError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SonateConfig:
        """Read a config written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def preset(cls, name: str, **overrides: object) -> SonateConfig:
        """A named preset (`tiny`, `1b`) with optional field overrides."""
        if name not in PRESETS:
            raise SonateInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # Real time on a 2-core CPU in fp32: 48 tokens (16 audio + 32 video) per 0.32 s chunk.
    "tiny": {},
    # Wan2.1-1.3B's size and token rate: 832×480 video, 4 frames per latent frame, 8× VAE and 2×2 patches
    # give 1560 tokens per latent frame; 3 latent frames (12 video frames, 0.48 s) per chunk.
    "1b": dict(
        dim=1536,
        n_layers=30,
        n_heads=12,
        n_kv_heads=12,
        mlp_ratio=8960 / 1536,
        video_width=832,
        video_height=480,
        video_frames_per_latent=4,
        video_latent_channels=16,
        video_patch=2,
        chunk_video_latents=3,
        window_chunks=6,
        audio_latent_dim=128,
        dtype="bfloat16",
    ),
}
