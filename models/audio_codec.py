"""Learned audio latents: normalised log-mel frames, and a small streaming vocoder that turns them back into speech.

The model's audio latent space is the log-mel spectrogram of the waveform, one frame per `audio_hop` samples,
normalised per channel. `MelEncoder` computes it (offline: training data and evaluation); `Vocoder` inverts it
causally, chunk by chunk, with a fixed half-hop delay; `train_vocoder` fits the vocoder to a world's speech.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sonate.models.audio import mel_filterbank
from sonate.models.config import SonateConfig
from sonate.models.errors import SonateInputError
from sonate.models.world.dataset import World

__all__ = [
    "MelEncoder",
    "Vocoder",
    "VocoderState",
    "load_vocoder",
    "mel_loss",
    "multi_resolution_stft_loss",
    "save_vocoder",
    "train_vocoder",
]

MEL_FLOOR = 1e-5  # mel power floor: digital silence maps to ln(1e-5) before normalisation
VOCODER_DIM = 192  # channels of the ConvNeXt stack
VOCODER_HIDDEN = 576  # channels inside each block's MLP
VOCODER_BLOCKS = 6
KERNEL_FRAMES = 7  # causal conv width in latent frames: each conv sees 120 ms of past (6 frames)
LOG_MAGNITUDE_MAX = 7.0  # clamp on the predicted ln |STFT| (a full-scale sinusoid is ~5.8)
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))  # (n_fft, hop) samples of the multi-resolution loss
LOG_MAGNITUDE_EPS = 1e-4  # floor of |STFT| in the log-magnitude loss


class MelEncoder(nn.Module):
    """Waveform [B, samples] at `sample_rate` → audio latents [B, samples // hop, latent_dim].

    Latent frame f is the natural-log mel power of samples [f·hop − hop/2, f·hop + 3·hop/2) under a periodic
    Hann window of 2 hops centred on the frame's own hop [f·hop, (f+1)·hop); samples outside the clip count as
    zeros. Power is floored at `MEL_FLOOR`, then normalised per channel by the `mean` and `std` buffers
    (fitted on speech by `train_vocoder`, saved with the vocoder). No trainable weights.
    """

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        self.hop = cfg.audio_hop
        self.n_fft = 2 * cfg.audio_hop  # analysis and synthesis windows: 2 hops, 50 % overlap
        self.register_buffer("window", torch.hann_window(self.n_fft))  # periodic: halves sum to 1 at 50 % hop
        self.register_buffer("filters", mel_filterbank(cfg.audio_latent_dim, self.n_fft, cfg.sample_rate))
        self.register_buffer("mean", torch.zeros(cfg.audio_latent_dim))  # ln mel power, per channel
        self.register_buffer("std", torch.ones(cfg.audio_latent_dim))

    def log_mel(self, wave: Tensor) -> Tensor:
        """Floored natural-log mel power [B, samples // hop, latent_dim] of `wave` [B, samples]."""
        frames = wave.shape[-1] // self.hop
        if frames == 0:
            raise SonateInputError(f"audio of {wave.shape[-1]} samples is shorter than one latent frame ({self.hop})")
        side = (self.n_fft - self.hop) // 2
        padded = F.pad(wave[..., : frames * self.hop], (side, side))
        segments = padded.unfold(-1, self.n_fft, self.hop) * self.window  # [B, F, n_fft]
        power = torch.fft.rfft(segments).abs().square()  # [B, F, n_fft/2+1]
        return torch.log((power @ self.filters.T).clamp_min(MEL_FLOOR))

    def normalise(self, log_mel: Tensor) -> Tensor:
        """Log-mel [..., latent_dim] → latents, with the stored per-channel affine map."""
        return (log_mel - self.mean) / self.std

    def forward(self, wave: Tensor) -> Tensor:
        """Latents [B, samples // hop, latent_dim] of `wave` [B, samples] (float32 in [-1, 1])."""
        return self.normalise(self.log_mel(wave))


@dataclass
class VocoderState:
    """What the vocoder carries between chunks.

    history: per causal conv (stem, then each block), its last `KERNEL_FRAMES - 1` input frames [B, C, K-1];
    tail: the second half of the last frame's windowed waveform [B, hop], not yet emitted;
    samples: samples emitted so far.
    """

    history: tuple[Tensor, ...]
    tail: Tensor
    samples: int


class _Block(nn.Module):
    """ConvNeXt block over latent frames with a causal depthwise conv: x + scale · MLP(norm(dwconv(x)))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, KERNEL_FRAMES, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.full((dim,), 1.0 / VOCODER_BLOCKS))

    def forward(self, x: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, T], history [B, C, K-1] → output [B, C, T] and the new history."""
        padded = torch.cat((history, x), dim=-1)
        h = self.norm(self.conv(padded).transpose(1, 2))  # [B, T, C]
        h = self.down(F.gelu(self.up(h))) * self.scale
        return x + h.transpose(1, 2), padded[..., -(KERNEL_FRAMES - 1) :]


class Vocoder(nn.Module):
    """Audio latents [B, F, latent_dim] → waveform [B, F·hop], causal and streaming (Vocos-style).

    A causal conv stem and a stack of ConvNeXt blocks over latent frames (each sees only the current and past
    frames) predict, per frame f, the log magnitude and phase of a 2-hop STFT frame; its inverse FFT under a
    periodic Hann window is overlap-added at hop spacing. Synthesis frame f is aligned with analysis frame f
    (true samples [f·hop − hop/2, f·hop + 3·hop/2)), so after frames 0…F-1 the waveform is complete up to true
    sample F·hop − hop/2: the output stream is the true waveform delayed by `delay_samples` = hop/2 samples
    (10 ms at 16 kHz, 320-sample hop), and the first call emits `delay_samples` leading zeros.

    `decode` never mutates its input state, and decoding a clip chunk by chunk, split anywhere, equals decoding
    it whole (to float32 rounding, ≤1e-5). `encoder` holds the latent normalisation, saved with the weights.
    """

    def __init__(self, cfg: SonateConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hop = cfg.audio_hop
        self.n_fft = 2 * cfg.audio_hop  # analysis and synthesis windows: 2 hops, 50 % overlap
        self.delay_samples = (self.n_fft - self.hop) // 2
        self.encoder = MelEncoder(cfg)
        self.stem = nn.Conv1d(cfg.audio_latent_dim, VOCODER_DIM, KERNEL_FRAMES)
        self.stem_norm = nn.LayerNorm(VOCODER_DIM)
        self.blocks = nn.ModuleList(_Block(VOCODER_DIM, VOCODER_HIDDEN) for _ in range(VOCODER_BLOCKS))
        self.out_norm = nn.LayerNorm(VOCODER_DIM)
        self.head = nn.Linear(VOCODER_DIM, self.n_fft + 2)  # ln magnitude and phase of n_fft/2+1 bins

    def init_state(self, batch: int) -> VocoderState:
        """The state before the first chunk: zero conv history and overlap-add tail, nothing emitted."""
        device = self.head.weight.device
        channels = [self.cfg.audio_latent_dim] + [VOCODER_DIM] * VOCODER_BLOCKS
        history = tuple(torch.zeros(batch, c, KERNEL_FRAMES - 1, device=device) for c in channels)
        return VocoderState(history, torch.zeros(batch, self.hop, device=device), 0)

    def decode(self, latents: Tensor, state: VocoderState) -> tuple[Tensor, VocoderState]:
        """Decode the next frames: float32 samples [B, F·hop] in [-1, 1] and the new state (`state` is kept)."""
        latents = latents.to(device=self.head.weight.device, dtype=torch.float32)
        if latents.shape[1] == 0:
            return latents.new_zeros(latents.shape[0], 0), state
        x = torch.cat((state.history[0], latents.transpose(1, 2)), dim=-1)  # [B, latent_dim, K-1+F]
        history = [x[..., -(KERNEL_FRAMES - 1) :]]
        x = self.stem_norm(self.stem(x).transpose(1, 2)).transpose(1, 2)  # [B, C, F]
        for block, past in zip(self.blocks, state.history[1:], strict=True):
            x, past = block(x, past)
            history.append(past)
        log_magnitude, phase = self.head(self.out_norm(x.transpose(1, 2))).chunk(2, dim=-1)  # [B, F, bins]
        spectrum = torch.polar(torch.exp(log_magnitude.clamp(max=LOG_MAGNITUDE_MAX)), phase)
        frames = torch.fft.irfft(spectrum, n=self.n_fft) * self.encoder.window  # [B, F, n_fft]
        first, second = frames[..., : self.hop], frames[..., self.hop :]
        audio = (first + torch.cat((state.tail[:, None], second[:, :-1]), dim=1)).flatten(1)  # [B, F·hop]
        lead = min(max(self.delay_samples - state.samples, 0), audio.shape[1])  # true samples before time 0
        audio = F.pad(audio[:, lead:], (lead, 0)).clamp(-1.0, 1.0)
        return audio, VocoderState(tuple(history), second[:, -1], state.samples + audio.shape[1])

    def forward(self, latents: Tensor) -> Tensor:
        """Whole-clip decode from silence: [B, F, latent_dim] → [B, F·hop], delayed by `delay_samples`."""
        return self.decode(latents, self.init_state(latents.shape[0]))[0]


def save_vocoder(vocoder: Vocoder, path: str | Path) -> None:
    """Write the vocoder's `state_dict` (weights and latent normalisation) to a safetensors file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in vocoder.state_dict().items()}, str(path))


def load_vocoder(path: str | Path, cfg: SonateConfig | None = None) -> Vocoder:
    """A vocoder read from `save_vocoder`'s file, for `cfg` (default: the tiny preset), in eval mode on the CPU."""
    if not Path(path).is_file():
        raise SonateInputError(f"no vocoder at {path}; train one with `train_vocoder`")
    vocoder = Vocoder(cfg or SonateConfig.preset("tiny"))
    try:
        vocoder.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise SonateInputError(f"{path} does not fit this config's vocoder: {error}") from error
    return vocoder.eval()


def multi_resolution_stft_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over `STFT_RESOLUTIONS` of spectral convergence + L1 of ln |STFT|, for waveforms [B, samples]."""
    total = prediction.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=prediction.device)
        predicted, true = (
            torch.stft(w, n_fft, hop, window=window, return_complex=True).abs() for w in (prediction, target)
        )
        convergence = torch.linalg.norm(true - predicted) / torch.linalg.norm(true).clamp_min(LOG_MAGNITUDE_EPS)
        log_l1 = F.l1_loss(predicted.clamp_min(LOG_MAGNITUDE_EPS).log(), true.clamp_min(LOG_MAGNITUDE_EPS).log())
        total = total + convergence + log_l1
    return total / len(STFT_RESOLUTIONS)


def mel_loss(encoder: MelEncoder, prediction: Tensor, target: Tensor) -> Tensor:
    """L1 between the floored ln-mel powers of two waveforms [B, samples] (the latents' own analysis)."""
    return F.l1_loss(encoder.log_mel(prediction), encoder.log_mel(target))


def _world_speech(world: World, split: str) -> list[Tensor]:
    """Every clip's audio of `split`, float32 [samples] each, read shard by shard (video is not decoded)."""
    by_shard = defaultdict(list)
    for info in world.clips(split):
        by_shard[info.shard].append(info.index)
    return [torch.from_numpy(world.shard(path).audio(i)) for path, indices in by_shard.items() for i in indices]


def train_vocoder(
    world: World,
    steps: int,
    batch: int,
    segment_seconds: float,
    lr: float,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    cfg: SonateConfig | None = None,
) -> Vocoder:
    """Fit a vocoder to the `train` speech of `world`; returns it in eval mode with its latent normalisation.

    The normalisation is the per-channel mean and std of the floored ln-mel over all training frames. Each step
    decodes `batch` random crops of `segment_seconds` (whole latent frames, each from a fresh state, as a stream starts)
    and minimises the multi-resolution STFT loss plus the mel L1 against the crop's true audio delayed by
    `delay_samples`. AdamW with `lr`, a linear warm-up over the first 5 % of steps and a cosine decay to zero.
    Deterministic given `seed`; `progress(step, steps, losses)` is called after each step.
    """
    cfg = cfg or SonateConfig.preset("tiny")
    if cfg.sample_rate != world.config.sample_rate:
        raise SonateInputError(f"the world is at {world.config.sample_rate} Hz but the config at {cfg.sample_rate} Hz")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vocoder = Vocoder(cfg)
    hop, delay = vocoder.hop, vocoder.delay_samples
    crop_frames = max(1, round(segment_seconds * cfg.sample_rate / hop))

    # 1. Data: the audio (with `delay` leading zeros, so a crop's target is the delayed truth) and its ln-mel.
    delayed = [F.pad(a, (delay, 0)) for a in _world_speech(world, "train") if a.shape[0] >= crop_frames * hop]
    if not delayed:
        raise SonateInputError(f"the world's train split has no clip of at least {segment_seconds} s")
    with torch.no_grad():
        log_mels = [vocoder.encoder.log_mel(a[None, delay:])[0] for a in delayed]  # [F, latent_dim] each
        every_frame = torch.cat(log_mels)
        vocoder.encoder.mean.copy_(every_frame.mean(0))
        vocoder.encoder.std.copy_(every_frame.std(0).clamp_min(1e-3))
    weights = torch.tensor([float(m.shape[0] - crop_frames + 1) for m in log_mels])  # uniform over crop starts

    # 2. Optimiser: AdamW, linear warm-up then cosine decay.
    optimiser = torch.optim.AdamW(vocoder.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )

    # 3. Steps: random crops, each decoded from a fresh state; the loss skips the `delay` samples before the crop.
    vocoder.train()
    for step in range(steps):
        picks = torch.multinomial(weights, batch, replacement=True, generator=generator).tolist()
        starts = [int(torch.randint(0, int(weights[c]), (), generator=generator)) for c in picks]
        latents = torch.stack([log_mels[c][s : s + crop_frames] for c, s in zip(picks, starts, strict=True)])
        target = torch.stack(
            [delayed[c][s * hop : (s + crop_frames) * hop] for c, s in zip(picks, starts, strict=True)]
        )
        prediction = vocoder(vocoder.encoder.normalise(latents))[:, delay:]
        target = target[:, delay:]
        stft = multi_resolution_stft_loss(prediction, target)
        mel = mel_loss(vocoder.encoder, prediction, target)
        optimiser.zero_grad(set_to_none=True)
        (stft + mel).backward()
        nn.utils.clip_grad_norm_(vocoder.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if progress:
            progress(step + 1, steps, {"stft": stft.item(), "mel": mel.item(), "lr": schedule.get_last_lr()[0]})
    return vocoder.eval()
