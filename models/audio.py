"""Log-mel features of a waveform, used to read a reference voice."""

from __future__ import annotations

import torch
from torch import Tensor


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0) -> Tensor:
    """Triangular HTK-mel filters: [n_mels, n_fft // 2 + 1]."""

    def hz_to_mel(hz: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: Tensor) -> Tensor:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(
        torch.linspace(
            hz_to_mel(torch.tensor(f_min)).item(),
            hz_to_mel(torch.tensor(sample_rate / 2)).item(),
            n_mels + 2,
            dtype=torch.float64,
        )
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


def log_mel(wave: Tensor, sample_rate: int, hop: int, n_mels: int) -> Tensor:
    """Natural-log mel power of `wave` [..., samples]: [..., frames, n_mels], one frame every `hop` samples.

    The window is 4 hops long and centred, so frame i describes samples around i * hop.
    """
    n_fft = 4 * hop
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave.reshape(-1, wave.shape[-1]), n_fft, hop, window=window, return_complex=True)
    power = spec.abs().square()  # [N, n_fft/2+1, frames]
    mel = mel_filterbank(n_mels, n_fft, sample_rate).to(wave.device) @ power
    frames = wave.shape[-1] // hop
    out = torch.log(mel[..., :frames] + 1e-6).transpose(-1, -2)
    return out.reshape(*wave.shape[:-1], frames, n_mels)


def white_noise(samples: int, std: float, seed: int) -> Tensor:
    """A seeded Gaussian white-noise clip [samples]: the reference voice of the negative CFG branch."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, generator=generator) * std
