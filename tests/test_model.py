"""Config, checkpoints, decoders and the model's shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sonate.models.checkpoint import DEFAULT_CHECKPOINT, from_pretrained, load_checkpoint, save_pretrained
from sonate.models.config import PRESETS, SonateConfig
from sonate.models.decoders import CODEC_FILES, Codecs
from sonate.models.errors import SonateInputError
from sonate.models.media_io import load_audio
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
    codecs = Codecs.random(model.cfg, seed=3)
    save_pretrained(model, tmp_path / "ckpt", codecs)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.model.cfg == model.cfg and not loaded.random_weights
    pairs = [(model, loaded.model)] + [(getattr(codecs, name), getattr(loaded.codecs, name)) for name in CODEC_FILES]
    for saved, read in pairs:
        for (name, a), (_, b) in zip(saved.state_dict().items(), read.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    assert not torch.equal(codecs.vocoder.head.weight, Codecs.random(model.cfg, seed=4).vocoder.head.weight)


def test_checkpoint_without_a_codec_file_names_it(model: SonateModel, tmp_path) -> None:
    save_pretrained(model, tmp_path)
    (tmp_path / "vocoder.safetensors").unlink()
    with pytest.raises(SonateInputError, match=r"has no vocoder\.safetensors"):
        load_checkpoint(tmp_path)


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


def test_a_still_image_encodes_as_its_four_frames_do() -> None:
    cfg = SonateConfig.preset("tiny")
    codecs = Codecs.random(cfg)
    image = torch.randint(0, 256, (2, cfg.avatar_image_size, cfg.avatar_image_size, 3), dtype=torch.uint8)
    still = codecs.encode_still(image)
    frames = image[:, None].expand(-1, cfg.video_frames_per_latent, -1, -1, -1).contiguous()
    assert still.shape == (2, cfg.video_latent_channels, cfg.video_latent_height, cfg.video_latent_width)
    assert torch.equal(still, codecs.encode_video(frames)[:, 0])
    assert not torch.equal(still[0], still[1])


def test_the_shipped_default_is_trained_tiny_and_small() -> None:
    files = sorted(f for f in DEFAULT_CHECKPOINT.rglob("*") if f.is_file())
    names = {f.relative_to(DEFAULT_CHECKPOINT).as_posix() for f in files}
    assert names == {"config.json", "model.safetensors", *CODEC_FILES.values(), "references/voice.wav",
                     "references/avatar.png"}  # fmt: skip
    assert sum(f.stat().st_size for f in files) <= 60 * 2**20
    loaded = load_checkpoint(None)
    assert not loaded.random_weights and loaded.model.cfg == SonateConfig.preset("tiny")
    std = loaded.codecs.vocoder.encoder.std
    assert not torch.equal(std, torch.ones_like(std))  # the latent normalisation was fitted, not left at its init


def test_the_default_references_are_the_shipped_voice_and_face() -> None:
    from sonate.streamer.engine.reference_media import DEFAULT_REFERENCES, default_avatar, default_voice

    face = default_avatar(128)
    assert face.shape == (128, 128, 3) and len(np.unique(face.reshape(-1, 3), axis=0)) > 50  # a face, no gradient
    voice = default_voice(16000)
    assert np.array_equal(voice, load_audio(DEFAULT_REFERENCES / "voice.wav", 16000)) and len(voice) > 2 * 16000
