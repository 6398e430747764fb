"""The learned audio latents: mel encoder framing, the streaming vocoder's exactness, and that training learns."""

from __future__ import annotations

import math

import pytest
import torch

from sonate.models.audio_codec import (
    MelEncoder,
    Vocoder,
    load_vocoder,
    mel_loss,
    multi_resolution_stft_loss,
    save_vocoder,
)
from sonate.models.config import SonateConfig

torch.set_num_threads(1)
CFG = SonateConfig.preset("tiny")
HOP = CFG.audio_hop


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    torch.manual_seed(0)
    return Vocoder(CFG).eval()


def _decode_in_chunks(vocoder: Vocoder, latents: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state, pieces, start = vocoder.init_state(latents.shape[0]), [], 0
    for size in sizes:
        piece, state = vocoder.decode(latents[:, start : start + size], state)
        assert piece.shape == (latents.shape[0], size * HOP)
        pieces.append(piece)
        start += size
    assert start == latents.shape[1] and state.samples == start * HOP
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("sizes", [[16, 16, 16], [1, 7, 16, 24], [5] * 9 + [3], [1] * 48, [0, 48, 0]])
@torch.no_grad()
def test_chunked_decoding_equals_whole(vocoder: Vocoder, sizes: list[int]) -> None:
    latents = torch.randn(2, 48, CFG.audio_latent_dim, generator=torch.Generator().manual_seed(1))
    whole = vocoder(latents)
    assert whole.shape == (2, 48 * HOP) and whole.dtype == torch.float32
    torch.testing.assert_close(_decode_in_chunks(vocoder, latents, sizes), whole, atol=1e-5, rtol=0)


@torch.no_grad()
def test_decode_leaves_its_state_alone(vocoder: Vocoder) -> None:
    latents = torch.randn(1, 20, CFG.audio_latent_dim, generator=torch.Generator().manual_seed(2))
    _, state = vocoder.decode(latents[:, :8], vocoder.init_state(1))
    saved = [t.clone() for t in (*state.history, state.tail)]
    first, _ = vocoder.decode(latents[:, 8:], state)
    again, _ = vocoder.decode(latents[:, 8:], state)  # a rollback decodes from the same state twice
    assert all(torch.equal(a, b) for a, b in zip(saved, (*state.history, state.tail), strict=True))
    assert state.samples == 8 * HOP
    torch.testing.assert_close(first, again, atol=0, rtol=0)


@torch.no_grad()
def test_delay_leads_with_silence_and_output_stays_in_range(vocoder: Vocoder) -> None:
    delay = vocoder.delay_samples
    assert 0 < delay <= HOP
    loud = 4.0 + torch.randn(1, 10, CFG.audio_latent_dim, generator=torch.Generator().manual_seed(3))
    audio = vocoder(loud)
    assert torch.all(audio[:, :delay] == 0) and audio[:, delay:].abs().max() > 0
    assert audio.abs().max() <= 1.0
    _, state = vocoder.decode(loud[:, :3], vocoder.init_state(1))
    later, _ = vocoder.decode(loud[:, 3:], state)  # only the stream's first samples are silenced
    assert later[:, :delay].abs().max() > 0


def test_encoder_frames_align_with_their_hops() -> None:
    encoder = MelEncoder(CFG)
    samples = 30 * HOP + 123  # a trailing partial hop is not a frame
    a, b = 10, 17
    wave = torch.zeros(1, samples)
    t = torch.arange((b - a) * HOP) / CFG.sample_rate
    wave[0, a * HOP : b * HOP] = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)
    latents = encoder(wave)
    assert latents.shape == (1, 30, CFG.audio_latent_dim)
    energy = encoder.log_mel(wave)[0].max(dim=-1).values  # [F]
    silent = math.log(1e-5)
    assert torch.all(energy[a:b] > silent + 5)
    assert torch.all(energy[: a - 1] == silent) and torch.all(energy[b + 1 :] == silent)
    # the window reaches half a hop into each neighbour, which sees far less of the tone
    assert energy[a - 1] < energy[a] - 3 and energy[b] < energy[b - 1] - 3


def test_save_and_load_keep_weights_and_normalisation(tmp_path, vocoder: Vocoder) -> None:
    vocoder.encoder.mean.fill_(-5.0)
    path = tmp_path / "vocoder.safetensors"
    save_vocoder(vocoder, path)
    loaded = load_vocoder(path, CFG)
    assert torch.equal(loaded.encoder.mean, vocoder.encoder.mean)
    latents = torch.randn(1, 6, CFG.audio_latent_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents), vocoder(latents), atol=0, rtol=0)
    vocoder.encoder.mean.zero_()


def test_a_few_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    vocoder = Vocoder(CFG)
    t = torch.arange(12 * HOP) / CFG.sample_rate
    target = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) * torch.sin(math.pi * t / t[-1]) for f in (220, 440)])
    latents = vocoder.encoder(target)
    delayed = torch.nn.functional.pad(target, (vocoder.delay_samples, 0))[:, : target.shape[1]]
    optimiser = torch.optim.AdamW(vocoder.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        prediction = vocoder(latents)
        loss = multi_resolution_stft_loss(prediction, delayed) + mel_loss(vocoder.encoder, prediction, delayed)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
