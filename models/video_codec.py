"""A small learned video autoencoder: the latent space the model generates video in.

One latent frame covers ``video_frames_per_latent`` (T) video frames. The encoder folds each 2×2 pixel block of
the T frames onto channels ([T·3·4, H/2, W/2]), then convolves down to [C, H/8, W/8]; the decoder mirrors it with
sub-pixel upsampling. Both work on each latent frame alone, so a chunk decodes exactly as it does within the
whole clip. Latents are normalised by a fixed per-channel affine (``latent_mean``, ``latent_std``: buffers set
from training data after training), so the flow-matching transformer sees roughly zero-mean, unit-variance
latents. Training adds noise to the latents (relative to each channel's RMS) so that the decoder tolerates the
imperfect latents the transformer generates.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonate.models.config import SonateConfig
from sonate.models.errors import SonateInputError
from sonate.models.world.dataset import World

__all__ = ["VideoDecoder", "VideoEncoder", "fit_video_autoencoder", "load_groups", "train_video_autoencoder"]

DOWNSAMPLE = 8  # pixels per latent cell, each side: a 2×2 fold, then two stride-2 convolutions
ENCODER_WIDTHS = (64, 64, 128)  # channels at 1/2, 1/4 and 1/8 of the frame size
DECODER_WIDTHS = (96, 64, 32)  # channels at 1/8, 1/4 and 1/2 of the frame size
LATENT_NOISE = 0.1  # training noise on the latents, relative to each channel's RMS in the batch
MOUTH_WEIGHT = 4.0  # extra L1 weight on the pixels of the mouth box (what the lip-sync measure reads)
EDGE_WEIGHT = 0.5  # weight of the L1 on horizontal and vertical pixel differences
WARMUP_FRACTION = 0.05  # of the steps, linear warm-up before the cosine decay
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0
GROUPS_PER_CLIP = 6  # T-frame groups sampled from each training clip
STATS_GROUPS = 512  # about this many groups, spread over the data, set the latent normalisation
STATS_BATCH = 16


def _check_config(cfg: SonateConfig) -> None:
    """Raise unless ``cfg`` asks for the downsampling this architecture has."""
    if cfg.video_downsample != DOWNSAMPLE:
        raise SonateInputError(f"the video codec downsamples by {DOWNSAMPLE}; set video_downsample={DOWNSAMPLE}")


def _fold(pixels: Tensor, frames_per_latent: int) -> Tensor:
    """[B, N, H, W, 3] → [B·N/T, T·3·2·2, H/2, W/2]: the T frames of a latent frame and each 2×2 pixel block on
    channels, ordered (frame, colour, dy, dx)."""
    b, n, h, w, _ = pixels.shape
    x = pixels.reshape(b, n // frames_per_latent, frames_per_latent, h // 2, 2, w // 2, 2, 3)
    return x.permute(0, 1, 2, 7, 4, 6, 3, 5).reshape(-1, frames_per_latent * 12, h // 2, w // 2)


def _unfold(x: Tensor, batch: int, frames_per_latent: int) -> Tensor:
    """Inverse of :func:`_fold`: [B·F, T·3·2·2, h, w] → [B, F·T, 2h, 2w, 3] (any dtype)."""
    bf, _, h, w = x.shape
    x = x.reshape(batch, bf // batch, frames_per_latent, 3, 2, 2, h, w)
    return x.permute(0, 1, 2, 6, 4, 7, 5, 3).reshape(batch, -1, 2 * h, 2 * w, 3)


class _ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), 3×3 convolutions; the second starts at zero (the block starts as identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class VideoEncoder(nn.Module):
    """uint8 frames [B, N, H, W, 3] (N a multiple of T) → normalised latents [B, N/T, C, H/8, W/8] float32."""

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.frames_per_latent = cfg.video_frames_per_latent
        w0, w1, w2 = ENCODER_WIDTHS
        channels = cfg.video_latent_channels
        self.stem = nn.Conv2d(self.frames_per_latent * 12, w0, 3, padding=1)  # at H/2
        self.down1 = nn.Conv2d(w0, w1, 3, stride=2, padding=1)  # to H/4
        self.down2 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)  # to H/8
        self.block = _ResBlock(w2)
        self.out = nn.Conv2d(w2, channels, 1)
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.ones(channels))

    def raw(self, pixels: Tensor) -> Tensor:
        """Float pixels in [-1, 1] [B, N, H, W, 3] → unnormalised latents [B, N/T, C, h, w]."""
        b = pixels.shape[0]
        folded = _fold(pixels, self.frames_per_latent).contiguous(memory_format=torch.channels_last)
        x = F.silu(self.stem(folded))
        x = F.silu(self.down2(F.silu(self.down1(x))))
        z = self.out(F.silu(self.block(x)))  # [B·F, C, h, w]
        return z.unflatten(0, (b, -1))

    def forward(self, pixels: Tensor) -> Tensor:
        """Float pixels in [-1, 1] [B, N, H, W, 3] → normalised latents [B, N/T, C, h, w]."""
        return (self.raw(pixels) - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    @torch.inference_mode()
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 RGB frames [B, N, H, W, 3] → normalised latents [B, N/T, C, H/8, W/8] float32 on this device."""
        t = self.frames_per_latent
        if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
            raise SonateInputError(f"frames must be uint8 [B, N, H, W, 3]; got {frames.dtype} {list(frames.shape)}")
        n, h, w = frames.shape[1:4]
        if n == 0 or n % t:
            raise SonateInputError(f"the number of frames must be a positive multiple of {t}; got {n}")
        if h % DOWNSAMPLE or w % DOWNSAMPLE:
            raise SonateInputError(f"frame height and width must be multiples of {DOWNSAMPLE}; got {h}×{w}")
        pixels = frames.to(self.latent_mean.device).float() / 127.5 - 1.0
        return self(pixels)


class VideoDecoder(nn.Module):
    """Normalised latents [B, F, C, h, w] → RGB frames [B, F·T, 8h, 8w, 3], each latent frame on its own."""

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.frames_per_latent = cfg.video_frames_per_latent
        self.channels = cfg.video_latent_channels
        w0, w1, w2 = DECODER_WIDTHS
        self.stem = nn.Conv2d(self.channels, w0, 3, padding=1)  # at h
        self.block = _ResBlock(w0)
        self.up1 = nn.Conv2d(w0, 4 * w1, 1)  # sub-pixel: to 2h
        self.mid1 = nn.Conv2d(w1, w1, 3, padding=1)
        self.up2 = nn.Conv2d(w1, 4 * w2, 1)  # sub-pixel: to 4h
        self.mid2 = nn.Conv2d(w2, w2, 3, padding=1)
        self.out = nn.Conv2d(w2, self.frames_per_latent * 12, 1)  # sub-pixel: the folded 2×2 blocks of 8h
        self.register_buffer("latent_mean", torch.zeros(self.channels))
        self.register_buffer("latent_std", torch.ones(self.channels))

    def _folded(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, F, C, h, w] → folded pixels [B·F, T·3·2·2, 4h, 4w] in about [-1, 1]."""
        z = latents.flatten(0, 1) * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        z = z.contiguous(memory_format=torch.channels_last)  # ~20 % faster convolutions on the CPU
        x = self.block(self.stem(z))
        x = F.pixel_shuffle(self.up1(F.silu(x)), 2)
        x = x + self.mid1(F.silu(x))
        x = F.pixel_shuffle(self.up2(F.silu(x)), 2)
        x = x + self.mid2(F.silu(x))
        return self.out(F.silu(x))

    def forward(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, F, C, h, w] → float frames [B, F·T, 8h, 8w, 3] in about [-1, 1]."""
        return _unfold(self._folded(latents), latents.shape[0], self.frames_per_latent)

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """Decode whole latent frames [B, F, C, h, w] into uint8 frames [B, F·T, 8h, 8w, 3] on the CPU."""
        if latents.dim() != 5 or latents.shape[2] != self.channels:
            raise SonateInputError(f"latents must be [B, F, {self.channels}, h, w]; got {list(latents.shape)}")
        folded = self._folded(latents.to(self.latent_mean.device, torch.float32))
        pixels = folded.mul_(127.5).add_(128.0).clamp_(0, 255).to(torch.uint8).cpu()  # +0.5, truncated: rounded
        return _unfold(pixels, latents.shape[0], self.frames_per_latent)


def _mouth_weights(boxes: np.ndarray, height: int, width: int) -> Tensor:
    """Per-pixel loss weights [B, 1, H, W, 1]: 1, plus MOUTH_WEIGHT inside each group's mouth box."""
    rows, cols = np.arange(height)[None], np.arange(width)[None]
    inside_y = (rows >= boxes[:, :1]) & (rows < boxes[:, 1:2])  # [B, H]
    inside_x = (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4])  # [B, W]
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    return torch.from_numpy(1.0 + MOUTH_WEIGHT * inside.astype(np.float32))[:, None, :, :, None]


def _loss(encoder: VideoEncoder, decoder: VideoDecoder, pixels: Tensor, weights: Tensor, noise: Tensor) -> Tensor:
    """Weighted L1 on pixels and on their differences; ``pixels`` [B, N, H, W, 3] in [-1, 1], ``noise`` like
    the latents (standard normal)."""
    z = encoder(pixels)  # [B, F, C, h, w]
    rms = z.detach().pow(2).mean(dim=(0, 1, 3, 4), keepdim=True).sqrt()
    out = decoder(z + LATENT_NOISE * rms * noise)
    error = out - pixels
    loss = (weights * error.abs()).mean()
    dx = (error[:, :, :, 1:] - error[:, :, :, :-1]).abs() * weights[:, :, :, 1:]
    dy = (error[:, :, 1:] - error[:, :, :-1]).abs() * weights[:, :, 1:]
    return loss + EDGE_WEIGHT * (dx.mean() + dy.mean())


def fit_video_autoencoder(
    groups: np.ndarray,
    mouth_boxes: np.ndarray,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
    cfg: SonateConfig | None = None,
) -> tuple[VideoEncoder, VideoDecoder]:
    """Train an autoencoder on T-frame ``groups`` uint8 [G, T, H, W, 3] with their ``mouth_boxes`` int
    [G, 4] (top, bottom, left, right; pixels), then set its latent normalisation from them.

    AdamW with a linear warm-up and cosine decay of ``lr``; ``progress(step, loss)`` after each step.
    Deterministic given ``seed`` (on one thread).
    """
    cfg = cfg or SonateConfig.preset("tiny")
    height, width = groups.shape[2:4]
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, decoder = VideoEncoder(cfg), VideoDecoder(cfg)
        noise_generator = torch.Generator().manual_seed(seed)
    parameters = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.99), weight_decay=WEIGHT_DECAY)
    warmup = max(1, round(WARMUP_FRACTION * steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    latent_shape = (batch, 1, cfg.video_latent_channels, height // DOWNSAMPLE, width // DOWNSAMPLE)
    for step in range(steps):
        index = rng.integers(len(groups), size=batch)
        pixels = torch.from_numpy(groups[index]).float() / 127.5 - 1.0
        weights = _mouth_weights(mouth_boxes[index], height, width)
        noise = torch.randn(latent_shape, generator=noise_generator)
        loss = _loss(encoder, decoder, pixels, weights, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        if progress is not None:
            progress(step, loss.item())
    _set_normalisation(encoder, decoder, groups[:: max(1, len(groups) // STATS_GROUPS)])
    return encoder.eval(), decoder.eval()


@torch.inference_mode()
def _set_normalisation(encoder: VideoEncoder, decoder: VideoDecoder, groups: np.ndarray) -> None:
    """Per-channel mean and std of the raw latents of ``groups`` [G, T, H, W, 3] uint8, into both modules."""
    latents = torch.cat(
        [
            encoder.raw(torch.from_numpy(groups[i : i + STATS_BATCH]).float() / 127.5 - 1.0)
            for i in range(0, len(groups), STATS_BATCH)
        ]
    )  # [G, 1, C, h, w]
    mean = latents.mean(dim=(0, 1, 3, 4))
    std = latents.std(dim=(0, 1, 3, 4)).clamp_min(1e-6)
    for module in (encoder, decoder):
        module.latent_mean.copy_(mean)
        module.latent_std.copy_(std)


def load_groups(
    world: World, split: str, groups_per_clip: int, seed: int, frames_per_latent: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sample up to ``groups_per_clip`` latent-aligned groups of ``frames_per_latent`` frames from each clip of
    ``split``, shard by shard: uint8 frames [G, T, H, W, 3] and each group's mouth box int [G, 4] (pixels)."""
    rng = np.random.default_rng(seed)
    clips = sorted(world.clips(split), key=lambda c: (c.shard, c.index))
    size = world.config.image_size
    frames = np.empty((len(clips) * groups_per_clip, frames_per_latent, size, size, 3), np.uint8)
    boxes = np.empty((len(frames), 4), np.int64)
    count = 0
    for info in clips:
        clip_frames = world.shard(info.shard).frames(info.index)
        available = len(clip_frames) // frames_per_latent
        starts = rng.choice(available, size=min(groups_per_clip, available), replace=False) * frames_per_latent
        for start in np.sort(starts):
            frames[count] = clip_frames[start : start + frames_per_latent]
            boxes[count] = world.renderer(info.avatar).mouth_box
            count += 1
    return frames[:count], boxes[:count]


def train_video_autoencoder(
    world: World,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[VideoEncoder, VideoDecoder]:
    """Train the tiny preset's video autoencoder on the ``train`` split of ``world`` (``GROUPS_PER_CLIP``
    groups of each clip, held in memory: about 0.2 MB each) for ``steps`` AdamW steps of ``batch`` groups."""
    cfg = SonateConfig.preset("tiny")
    size, fps = world.config.image_size, world.config.fps
    if (size, size, fps) != (cfg.video_height, cfg.video_width, cfg.video_fps):
        raise SonateInputError(
            f"the world's frames ({size}×{size} px, {fps} fps) do not match the tiny preset "
            f"({cfg.video_width}×{cfg.video_height} px, {cfg.video_fps} fps)"
        )
    groups, boxes = load_groups(world, "train", GROUPS_PER_CLIP, seed, cfg.video_frames_per_latent)
    return fit_video_autoencoder(groups, boxes, steps, batch, lr, seed, progress, cfg)
