"""Conditioning encoders: instruction text, reference voice (timbre and prompt) and reference avatar.

Their outputs become the prefix tokens — computed once per session and kept in the KV cache as sinks —
the timbre vector that enters the audio stream through AdaLN (timbre injection), and the reference tokens: the
avatar's video latent, projected and added to the video tokens at the same place in every latent frame (as
image-to-video models feed the first frame's latent along the channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonate.models.audio import log_mel
from sonate.models.config import SonateConfig

INSTRUCTION_PAD = 256  # byte values are 0..255


@dataclass
class Conditioning:
    """Raw conditioning of a batch of sequences.

    instruction_ids: [B, instruction_tokens] UTF-8 bytes, INSTRUCTION_PAD after the end;
    voice: [B, samples] reference waveform at the model's sample rate, in [-1, 1];
    avatar: [B, 3, H, W] reference image, float in [0, 1];
    avatar_latent: [B, C, h, w] the video codec's latent of the reference image held still for a latent frame.
    """

    instruction_ids: Tensor
    voice: Tensor
    avatar: Tensor
    avatar_latent: Tensor

    def rows(self, rows: slice) -> Conditioning:
        """The sequences `rows` of the batch."""
        return Conditioning(self.instruction_ids[rows], self.voice[rows], self.avatar[rows], self.avatar_latent[rows])

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        """Stack along the batch (voices are cut to the shortest)."""
        samples = min(c.voice.shape[-1] for c in items)
        return Conditioning(
            torch.cat([c.instruction_ids for c in items]),
            torch.cat([c.voice[..., :samples] for c in items]),
            torch.cat([c.avatar for c in items]),
            torch.cat([c.avatar_latent for c in items]),
        )


def encode_instruction(cfg: SonateConfig, text: str) -> Tensor:
    """UTF-8 bytes of `text`, cut or padded to `cfg.instruction_tokens`: [instruction_tokens] int64."""
    ids = list(text.encode("utf-8"))[: cfg.instruction_tokens]
    ids += [INSTRUCTION_PAD] * (cfg.instruction_tokens - len(ids))
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class PrefixTokens:
    """Embedded prefix of a batch: audio-stream tokens (instruction, voice prompt), video-stream tokens
    (identity), the timbre vector, and the reference tokens added to every video latent frame. Shapes
    [B, prefix_audio_tokens, dim], [B, identity_tokens, dim], [B, dim], [B, video_tokens_per_latent, dim]."""

    audio: Tensor
    video: Tensor
    timbre: Tensor
    reference: Tensor


class ConditioningEncoder(nn.Module):
    """Embeds `Conditioning` into `PrefixTokens`."""

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, mels = cfg.dim, cfg.audio_latent_dim
        self.instruction_embed = nn.Embedding(INSTRUCTION_PAD + 1, d)
        self.instruction_pos = nn.Parameter(torch.randn(cfg.instruction_tokens, d) * 0.02)
        self.voice_proj = nn.Linear(mels, d)
        self.voice_pos = nn.Parameter(torch.randn(cfg.voice_tokens, d) * 0.02)
        self.timbre_mlp = nn.Sequential(nn.Linear(2 * mels, d), nn.SiLU(), nn.Linear(d, d))
        patch = cfg.identity_image_size // int(cfg.identity_tokens**0.5)
        self.identity_patch = patch
        self.identity_proj = nn.Linear(3 * patch * patch, d)
        self.identity_pos = nn.Parameter(torch.randn(cfg.identity_tokens, d) * 0.02)
        self.reference_proj = nn.Linear(cfg.video_latent_channels * cfg.video_patch**2, d)

    def forward(self, cond: Conditioning) -> PrefixTokens:
        cfg = self.cfg
        instruction = self.instruction_embed(cond.instruction_ids) + self.instruction_pos
        mel = log_mel(cond.voice, cfg.sample_rate, cfg.audio_hop, cfg.audio_latent_dim)  # [B, F, mels]
        prompt = F.adaptive_avg_pool1d(mel.transpose(1, 2), cfg.voice_tokens).transpose(1, 2)
        voice = self.voice_proj(prompt) + self.voice_pos
        timbre = self.timbre_mlp(torch.cat((mel.mean(1), mel.std(1)), dim=-1))
        size = cfg.identity_image_size
        image = F.interpolate(cond.avatar, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        p = self.identity_patch
        patches = image.unfold(2, p, p).unfold(3, p, p)  # [B, 3, n, n, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(1, 2).flatten(2)
        identity = self.identity_proj(patches) + self.identity_pos
        # the reference latent, cut into the video tokens' patches (same order as `transformer.patchify`)
        reference = F.pixel_unshuffle(cond.avatar_latent, cfg.video_patch).flatten(2).transpose(1, 2)
        return PrefixTokens(torch.cat((instruction, voice), dim=1), identity, timbre, self.reference_proj(reference))
