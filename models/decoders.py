"""Streaming decoders from latents to media, chunk by chunk with carried state and no seam.

These are the fixed, parameter-free decoders that the model's latent spaces are defined by until learned
decoders replace them: audio latents are log band amplitudes of mel-spaced sinusoids, video latents are
low-resolution RGB logits. Both decode a clip chunk by chunk exactly as they decode it whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sonate.models.config import SonateConfig


@dataclass
class AudioDecoderState:
    """What the audio decoder carries between chunks: samples already decoded and the last frame's gains."""

    samples: int
    gains: Tensor  # [B, bands]


class BandVocoder:
    """Audio latents [B, F, bands] → waveform [B, F·hop] by additive synthesis.

    Band b is a sinusoid at the centre of mel band b with amplitude exp(latent) · `gain`, interpolated
    linearly across each hop from the previous frame's amplitude. The phase is a function of the absolute
    sample index, so chunked decoding equals whole decoding.
    """

    gain = 0.02

    def __init__(self, cfg: SonateConfig) -> None:
        self.cfg = cfg
        mel_max = 2595.0 * math.log10(1.0 + (cfg.sample_rate / 2) / 700.0)
        mel = torch.linspace(0, mel_max, cfg.audio_latent_dim + 2, dtype=torch.float64)[1:-1]
        self.freqs = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)  # [bands] Hz

    def init_state(self, batch: int) -> AudioDecoderState:
        """The state before the first chunk: silence."""
        return AudioDecoderState(0, torch.zeros(batch, self.cfg.audio_latent_dim))

    def decode(self, latents: Tensor, state: AudioDecoderState) -> tuple[Tensor, AudioDecoderState]:
        """Decode the next frames; returns float32 samples in [-1, 1] [B, F·hop] and the new state."""
        hop = self.cfg.audio_hop
        gains = torch.exp(latents.float().clamp(-12.0, 4.0)).cpu() * self.gain  # [B, F, bands]
        previous = torch.cat((state.gains[:, None], gains[:, :-1]), dim=1)
        ramp = (torch.arange(hop, dtype=torch.float32) + 1) / hop  # [hop]
        per_sample = previous[:, :, None] + (gains - previous)[:, :, None] * ramp[:, None]  # [B, F, hop, bands]
        index = state.samples + torch.arange(latents.shape[1] * hop, dtype=torch.float64)
        phase = torch.remainder(index[:, None] * self.freqs / self.cfg.sample_rate, 1.0) * (2 * math.pi)
        waves = torch.sin(phase).float()  # [F·hop, bands]
        audio = (per_sample.flatten(1, 2) * waves).sum(-1).clamp(-1.0, 1.0)
        return audio, AudioDecoderState(state.samples + audio.shape[1], gains[:, -1])


class PixelVideoDecoder:
    """Video latents [B, F, C, h, w] → RGB frames [B, F·frames_per_latent, H, W, 3] uint8.

    The first three channels are RGB logits on the latent grid, upsampled bilinearly; each latent frame is
    shown for `video_frames_per_latent` frames. Stateless, so chunks decode exactly as the whole.
    """

    def __init__(self, cfg: SonateConfig) -> None:
        self.cfg = cfg

    def decode(self, latents: Tensor) -> Tensor:
        """Decode whole latent frames into uint8 frames."""
        cfg = self.cfg
        b, f = latents.shape[:2]
        rgb = torch.sigmoid(latents[:, :, :3].float().flatten(0, 1))
        rgb = F.interpolate(rgb, size=(cfg.video_height, cfg.video_width), mode="bilinear", align_corners=False)
        frames = (rgb * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        frames = frames.unflatten(0, (b, f)).repeat_interleave(cfg.video_frames_per_latent, dim=1)
        return frames.cpu()
