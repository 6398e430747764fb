"""The joint dual-stream MM-DiT: audio and video tokens with their own weights, one joint attention per block.

The same blocks run three ways — the session prefix, one streaming chunk against the KV cache, and the
teacher-forcing one-pass forward — which differ only in the `Attention` they are handed (how keys are
positioned, cached and masked). That is what makes the streaming path and the one-pass path agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from sonate import kernels
from sonate.models.conditioning import ConditioningEncoder, PrefixTokens
from sonate.models.config import SonateConfig


class Attention(Protocol):
    """How a block's queries meet their keys: positions, cache and mask live behind this."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: [B, H, T, D], k, v: [B, Hkv, T, D] unrotated, tokens ordered [audio | video]; returns like q."""
        ...


@dataclass
class ChunkPhonemes:
    """Phoneme and speaker ids sampled at each token's time, for n whole chunks.

    audio, audio_speaker: [B, n·chunk_audio_latents]; video, video_speaker: [B, n·chunk_video_frames]
    (one id per video frame; a latent frame's tokens share the ids of its frames). int64.
    """

    audio: Tensor
    audio_speaker: Tensor
    video: Tensor
    video_speaker: Tensor

    def select(self, chunk_start: int, chunks: int, cfg: SonateConfig) -> ChunkPhonemes:
        """The ids of chunks [chunk_start, chunk_start + chunks)."""
        a0, a1 = chunk_start * cfg.chunk_audio_latents, (chunk_start + chunks) * cfg.chunk_audio_latents
        v0, v1 = chunk_start * cfg.chunk_video_frames, (chunk_start + chunks) * cfg.chunk_video_frames
        return ChunkPhonemes(
            self.audio[:, a0:a1], self.audio_speaker[:, a0:a1], self.video[:, v0:v1], self.video_speaker[:, v0:v1]
        )

    def rows(self, rows: list[int]) -> ChunkPhonemes:
        """The ids of the given batch rows."""
        return ChunkPhonemes(*(x[rows] for x in (self.audio, self.audio_speaker, self.video, self.video_speaker)))

    @staticmethod
    def cat(items: list[ChunkPhonemes], dim: int = 0) -> ChunkPhonemes:
        """Join along the batch (dim 0) or along time, chunk after chunk (dim 1)."""
        fields = zip(*((p.audio, p.audio_speaker, p.video, p.video_speaker) for p in items), strict=True)
        return ChunkPhonemes(*(torch.cat(parts, dim=dim) for parts in fields))

    def repeat(self, times: int) -> ChunkPhonemes:
        """The same ids for `times` copies of the batch (the CFG branches)."""
        ids = (self.audio, self.audio_speaker, self.video, self.video_speaker)
        return ChunkPhonemes(*(x.repeat(times, 1) for x in ids))


class RMSNorm(nn.Module):
    """RMS norm with a learned gain, for queries and keys per head."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class StreamLayer(nn.Module):
    """One modality's weights in a block: QKV and output projections, QK norms, MLP, AdaLN offsets."""

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        d, kv = cfg.dim, cfg.n_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(d, d + 2 * kv)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.out = nn.Linear(d, d)
        hidden = round(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.modulation = nn.Parameter(torch.randn(6, d) / math.sqrt(d))


class JointBlock(nn.Module):
    """Per-stream AdaLN → QKV, one joint attention over both streams, per-stream gated residual and MLP."""

    def __init__(self, cfg: SonateConfig, index: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.index = index
        self.audio = StreamLayer(cfg)
        self.video = StreamLayer(cfg)

    def forward(self, x_a: Tensor, x_v: Tensor, mod_a: Tensor, mod_v: Tensor, attention: Attention):
        """x_a: [B, Ta, dim], x_v: [B, Tv, dim]; mod_*: [B, T or 1, 6, dim] (shift, scale, gate ×2)."""
        cfg = self.cfg
        streams = ((self.audio, x_a, mod_a), (self.video, x_v, mod_v))
        kv = cfg.n_kv_heads * cfg.head_dim
        qs, ks, vs = [], [], []
        for layer, x, mod in streams:
            shift, scale, _, _, _, _ = (mod + layer.modulation).unbind(2)
            q, k, v = layer.qkv(kernels.modulated_norm(x, shift, scale, cfg.norm_eps)).split([cfg.dim, kv, kv], -1)
            b, t, _ = q.shape
            qs.append(layer.q_norm(q.view(b, t, cfg.n_heads, cfg.head_dim)))
            ks.append(layer.k_norm(k.view(b, t, cfg.n_kv_heads, cfg.head_dim)))
            vs.append(v.view(b, t, cfg.n_kv_heads, cfg.head_dim))
        q, k, v = (torch.cat(parts, dim=1).transpose(1, 2) for parts in (qs, ks, vs))  # [B, H, T, D]
        b, t = x_a.shape[0], x_a.shape[1] + x_v.shape[1]
        o = attention.attend(self.index, q, k, v).transpose(1, 2).reshape(b, t, cfg.dim)
        out = []
        for (layer, x, mod), o_stream in zip(streams, o.split([x_a.shape[1], x_v.shape[1]], dim=1), strict=True):
            _, _, gate1, shift2, scale2, gate2 = (mod + layer.modulation).unbind(2)
            x = kernels.gated_residual(x, layer.out(o_stream), gate1)
            h = kernels.modulated_norm(x, shift2, scale2, cfg.norm_eps)
            out.append(kernels.gated_residual(x, layer.mlp(h), gate2))
        return out[0], out[1]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow time t ∈ [0, 1] (scaled by 1000): [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angle = 1000.0 * t.float()[..., None] * freqs
    return torch.cat((torch.cos(angle), torch.sin(angle)), dim=-1)


class OutputHead(nn.Module):
    """Final AdaLN and projection of one stream back to latent channels."""

    def __init__(self, cfg: SonateConfig, channels: int) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.modulation = nn.Parameter(torch.randn(2, cfg.dim) / math.sqrt(cfg.dim))
        self.proj = nn.Linear(cfg.dim, channels)

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        shift, scale = (mod + self.modulation).unbind(2)
        return self.proj(kernels.modulated_norm(x, shift, scale, self.eps))


class SonateModel(nn.Module):
    """The velocity model v(x_t, t | prefix, phonemes) over audio latents and video latents."""

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.conditioning = ConditioningEncoder(cfg)
        self.audio_in = nn.Linear(cfg.audio_latent_dim, d)
        self.video_in = nn.Linear(cfg.video_latent_channels * cfg.video_patch**2, d)
        self.phoneme_embed = nn.Embedding(cfg.phoneme_vocab, d)
        self.speaker_embed = nn.Embedding(cfg.max_speakers, d)
        self.video_phoneme_proj = nn.Linear(cfg.video_frames_per_latent * d, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.timbre_proj = nn.Linear(d, d)
        # AdaLN projections shared by every block (each block adds its own learned offset), as in Wan2.1
        self.audio_adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 8 * d))
        self.video_adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 8 * d))
        self.blocks = nn.ModuleList(JointBlock(cfg, i) for i in range(cfg.n_layers))
        self.audio_out = OutputHead(cfg, cfg.audio_latent_dim)
        self.video_out = OutputHead(cfg, cfg.video_latent_channels * cfg.video_patch**2)
        self.apply(_init_weights)

    def modulation(self, t: Tensor, timbre: Tensor) -> tuple[Tensor, Tensor]:
        """AdaLN inputs per segment: t [B, S] flow time, timbre [B, dim] → audio, video [B, S, 8, dim].

        The timbre vector enters the audio stream only (timbre injection).
        """
        time = self.time_mlp(timestep_embedding(t, self.cfg.dim))
        audio = self.audio_adaln(time + self.timbre_proj(timbre)[:, None]).unflatten(-1, (8, -1))
        video = self.video_adaln(time).unflatten(-1, (8, -1))
        return audio, video

    def embed_chunks(
        self, audio: Tensor, video: Tensor, phonemes: ChunkPhonemes, reference: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Latents of n whole chunks → tokens with their phoneme and speaker embeddings and, on the video tokens,
        the reference tokens (`PrefixTokens.reference`, [B, video_tokens_per_latent, dim]) added.

        audio: [B, n·chunk_audio_latents, audio_latent_dim]; video: [B, n·chunk_video_latents, C, h, w].
        A video latent frame's tokens get the phonemes of each of its video frames, projected to one vector.
        Returns [B, Ta, dim], [B, Tv, dim].
        """
        x_a = self.audio_in(audio) + self.phoneme_embed(phonemes.audio) + self.speaker_embed(phonemes.audio_speaker)
        per_frame = self.phoneme_embed(phonemes.video) + self.speaker_embed(phonemes.video_speaker)  # [B, Nf, d]
        per_latent = self.video_phoneme_proj(per_frame.unflatten(1, (-1, self.cfg.video_frames_per_latent)).flatten(2))
        x_v = self.video_in(patchify(self.cfg, video))
        x_v = x_v + per_latent.repeat_interleave(self.cfg.video_tokens_per_latent, dim=1)
        x_v = x_v + reference.repeat(1, video.shape[1], 1)
        return x_a, x_v

    def run_blocks(
        self, x_a: Tensor, x_v: Tensor, mod_a: Tensor, mod_v: Tensor, attention: Attention
    ) -> tuple[Tensor, Tensor]:
        """All blocks; mod_* are per-token (or broadcastable) [B, T, 8, dim] from `modulation`."""
        block_a, block_v = mod_a[:, :, :6], mod_v[:, :, :6]
        for block in self.blocks:
            x_a, x_v = block(x_a, x_v, block_a, block_v, attention)
        return x_a, x_v

    def heads(self, x_a: Tensor, x_v: Tensor, mod_a: Tensor, mod_v: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens → velocity latents, shaped like the inputs of `embed_chunks`."""
        v_a = self.audio_out(x_a, mod_a[:, :, 6:])
        v_v = unpatchify(self.cfg, self.video_out(x_v, mod_v[:, :, 6:]))
        return v_a, v_v

    def prefix_tokens(self, prefix: PrefixTokens, attention: Attention) -> None:
        """Run the prefix through every block; `attention` stores its keys and values (the sinks)."""
        t = torch.zeros(prefix.timbre.shape[0], 1, device=prefix.timbre.device)
        mod_a, mod_v = self.modulation(t, prefix.timbre)
        self.run_blocks(prefix.audio, prefix.video, mod_a, mod_v, attention)


def patchify(cfg: SonateConfig, video: Tensor) -> Tensor:
    """[B, F, C, h, w] video latents → [B, F·rows·cols, C·p·p] tokens, frame-major then row-major."""
    p = cfg.video_patch
    b, f, c, h, w = video.shape
    x = video.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, f * (h // p) * (w // p), c * p * p)


def unpatchify(cfg: SonateConfig, tokens: Tensor) -> Tensor:
    """Inverse of `patchify`."""
    p, c = cfg.video_patch, cfg.video_latent_channels
    rows, cols = cfg.video_token_rows, cfg.video_token_cols
    b = tokens.shape[0]
    x = tokens.reshape(b, -1, rows, cols, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, -1, c, rows * p, cols * p)


def _init_weights(module: nn.Module) -> None:
    """Unit-variance init: every projection keeps its input's scale, so a random model's output depends
    visibly on all of its context (what the exactness tests need to be able to fail)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.in_features**-0.5)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=1.0)
