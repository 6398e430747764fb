"""A checkpoint's codecs: the streaming decoders from latents to media and the encoders that define the latents.

Audio latents are normalised log-mel frames (`audio_codec.MelEncoder`, inverted by the streaming
`audio_codec.Vocoder`); video latents come from a small autoencoder (`video_codec`). A checkpoint stores them
as `vocoder.safetensors`, `video_encoder.safetensors` and `video_decoder.safetensors` beside the transformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sonate.models.audio_codec import Vocoder, VocoderState
from sonate.models.config import SonateConfig
from sonate.models.errors import SonateInputError
from sonate.models.phases import PhaseTimer, untimed
from sonate.models.video_codec import VideoDecoder, VideoEncoder

CODEC_FILES = {"vocoder": "vocoder.safetensors", "video_encoder": "video_encoder.safetensors",
               "video_decoder": "video_decoder.safetensors"}  # fmt: skip


@dataclass
class Codecs:
    """The vocoder (audio latents ↔ waveform; its `encoder` makes latents) and the video autoencoder."""

    vocoder: Vocoder
    video_encoder: VideoEncoder
    video_decoder: VideoDecoder

    @classmethod
    def random(cls, cfg: SonateConfig, seed: int = 0) -> Codecs:
        """Untrained codecs with seeded weights (for speed work and tests), frozen for inference; the global
        random state is kept."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modules = (Vocoder(cfg), VideoEncoder(cfg), VideoDecoder(cfg))
        return cls(*(module.eval().requires_grad_(False) for module in modules))

    @classmethod
    def load(cls, directory: str | Path, cfg: SonateConfig) -> Codecs:
        """Read the codecs of a checkpoint folder; a missing or misshapen file is an input error."""
        codecs = cls.random(cfg)
        for name, file in CODEC_FILES.items():
            path = Path(directory) / file
            if not path.is_file():
                raise SonateInputError(f"checkpoint {directory} has no {file}")
            module: nn.Module = getattr(codecs, name)
            try:
                module.load_state_dict(load_file(str(path)))
            except RuntimeError as error:
                raise SonateInputError(f"{path} does not fit the checkpoint's config: {error}") from error
        return codecs

    def save(self, directory: str | Path) -> None:
        """Write the three codec files into `directory` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, file in CODEC_FILES.items():
            state = getattr(self, name).state_dict()
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / file))

    @torch.no_grad()
    def decode_chunk(
        self,
        audio_latents: Tensor,
        video_latents: Tensor,
        vocoder_states: list[VocoderState],
        timer: PhaseTimer = untimed,
    ) -> tuple[Tensor, Tensor, list[VocoderState]]:
        """Decode one chunk of B sequences: the video of all of them in one batch, the audio of each from its own
        vocoder state (one per row, each of batch 1; they are kept: a rollback decodes from the same state).

        audio_latents [B, Fa, Ca], video_latents [B, Fv, C, h, w] → float32 samples [B, Fa·hop] in [-1, 1] and
        uint8 frames [B, Fv·frames_per_latent, H, W, 3], both on the CPU, and each row's new vocoder state.
        `timer` is called with "video_decoder", then "vocoder", as each decoder ends.
        """
        frames = self.video_decoder.decode(video_latents)
        timer("video_decoder")
        audio, states = [], []
        for row, state in zip(audio_latents, vocoder_states, strict=True):
            samples, state = self.vocoder.decode(row[None], state)  # samples: [1, Fa·hop]
            audio.append(samples)
            states.append(state)
        samples = torch.cat(audio).cpu()
        timer("vocoder")
        return samples, frames, states

    @torch.no_grad()
    def encode_audio(self, wave: Tensor) -> Tensor:
        """Waveform [B, samples] at the model's rate → audio latents [B, samples // hop, audio_latent_dim]."""
        return self.vocoder.encoder(wave.float())

    def encode_video(self, frames: Tensor) -> Tensor:
        """uint8 frames [B, N, H, W, 3] → video latents [B, N / video_frames_per_latent, C, h, w]."""
        return self.video_encoder.encode(frames)

    @torch.no_grad()
    def encode_still(self, images: Tensor) -> Tensor:
        """uint8 images [B, S, S, 3] → the latent of each held still for one latent frame [B, C, h, w], made at
        the video's size (a reference avatar's latent: `Conditioning.avatar_latent`)."""
        cfg = self.vocoder.cfg
        size = (cfg.video_height, cfg.video_width)
        pixels = images.permute(0, 3, 1, 2).float()
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        frames = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        still = frames[:, None].expand(-1, cfg.video_frames_per_latent, -1, -1, -1)
        return self.video_encoder.encode(still.contiguous())[:, 0]
