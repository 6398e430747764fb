"""Config, checkpoints, decoders and the model's shapes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sonate.models.checkpoint import from_pretrained, save_pretrained
from sonate.models.config import PRESETS, SonateConfig
from sonate.models.decoders import BandVocoder, PixelVideoDecoder
from sonate.models.errors import SonateInputError
from sonate.models.transformer import SonateModel, patchify, unpatchify
from tests.conftest import random_latents


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name: str, tmp_path) -> None:
    cfg = SonateConfig.preset(name)
    cfg.save(tmp_path / "config.json")
    assert SonateConfig.load(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["dim"] == cfg.dim


def test_chunks_fall_on_both_clocks() -> None:
    for name in PRESETS:
        cfg = SonateConfig.preset(name)
        assert cfg.chunk_seconds * cfg.video_fps == cfg.chunk_video_frames
        assert cfg.chunk_audio_samples == round(cfg.chunk_seconds * cfg.sample_rate)
    big = SonateConfig.preset("1b")
    assert big.video_tokens_per_latent == 1560 and big.dim == 1536 and big.n_layers == 30


def test_config_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(SonateInputError, match="whole number of audio latent frames"):
        SonateConfig.preset("tiny", audio_hop=333)
    with pytest.raises(SonateInputError, match="unknown config fields: wings"):
        SonateConfig.from_dict({"wings": 2})
    with pytest.raises(SonateInputError, match="unknown preset"):
        SonateConfig.preset("huge")


def test_checkpoint_round_trip(model: SonateModel, tmp_path) -> None:
    save_pretrained(model, tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_with_a_misshapen_tensor_names_it(model: SonateModel, tmp_path) -> None:
    save_pretrained(model, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["audio_in.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(SonateInputError, match=r"audio_in\.weight has shape \(3, 3\)"):
        from_pretrained(tmp_path)


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SonateInputError, match="not a checkpoint"):
        from_pretrained(tmp_path / "nowhere")


def test_patchify_inverts(cfg: SonateConfig) -> None:
    _, video = random_latents(cfg, 2, 3)
    tokens = patchify(cfg, video)
    assert tokens.shape == (2, 3 * cfg.chunk_video_tokens, cfg.video_latent_channels * cfg.video_patch**2)
    assert torch.equal(unpatchify(cfg, tokens), video)


def test_vocoder_decodes_chunk_by_chunk_as_whole(cfg: SonateConfig) -> None:
    audio, _ = random_latents(cfg, 2, 4)
    vocoder = BandVocoder(cfg)
    whole, _ = vocoder.decode(audio, vocoder.init_state(2))
    state, pieces = vocoder.init_state(2), []
    for k in range(4):
        piece, state = vocoder.decode(audio[:, k * cfg.chunk_audio_latents : (k + 1) * cfg.chunk_audio_latents], state)
        pieces.append(piece)
    assert whole.shape == (2, 4 * cfg.chunk_audio_samples)
    assert (torch.cat(pieces, dim=1) - whole).abs().max() < 1e-5
    assert whole.abs().max() <= 1.0 and whole.std() > 1e-3


def test_vocoder_puts_energy_in_the_loud_band(cfg: SonateConfig) -> None:
    latents = torch.full((1, 50, cfg.audio_latent_dim), -12.0)
    latents[:, :, 10] = 3.0
    vocoder = BandVocoder(cfg)
    wave, _ = vocoder.decode(latents, vocoder.init_state(1))
    spectrum = torch.fft.rfft(wave[0, cfg.audio_hop :]).abs()
    peak_hz = spectrum.argmax().item() * cfg.sample_rate / (wave.shape[1] - cfg.audio_hop)
    assert abs(peak_hz - vocoder.freqs[10].item()) < 5.0


def test_video_decoder_shapes_and_colour(cfg: SonateConfig) -> None:
    latents = torch.zeros(1, 2, cfg.video_latent_channels, cfg.video_latent_height, cfg.video_latent_width)
    latents[:, :, 0] = 10.0  # red logit high
    frames = PixelVideoDecoder(cfg).decode(latents)
    assert frames.shape == (1, 2 * cfg.video_frames_per_latent, cfg.video_height, cfg.video_width, 3)
    assert frames.dtype == torch.uint8
    assert frames[..., 0].min() == 255 and frames[..., 1].max() == 128
