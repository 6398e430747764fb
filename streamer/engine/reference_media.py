"""Reference voice and avatar: the defaults, and their conversion into the model's conditioning."""

from __future__ import annotations

import functools

import numpy as np
import torch

from sonate.models.checkpoint import DEFAULT_CHECKPOINT
from sonate.models.conditioning import Conditioning, encode_instruction
from sonate.models.decoders import Codecs
from sonate.models.espeak import synthesize
from sonate.models.media_io import load_audio, load_image, resample
from sonate.models.transformer import SonateModel

DEFAULT_VOICE_TEXT = "This is the voice sonate speaks with when it is given no reference."
DEFAULT_REFERENCES = DEFAULT_CHECKPOINT / "references"  # a voice and a face of the world's test split


@functools.cache
def default_voice(sample_rate: int) -> np.ndarray:
    """The reference voice used when none is given, [samples] at `sample_rate` Hz: the one shipped with the default
    checkpoint (a timbre it never saw in training), else espeak-ng's en-us voice."""
    if (DEFAULT_REFERENCES / "voice.wav").is_file():
        return load_audio(DEFAULT_REFERENCES / "voice.wav", sample_rate)
    speech = synthesize(DEFAULT_VOICE_TEXT)
    return resample(speech.samples, speech.sample_rate, sample_rate)


def default_avatar(size: int) -> np.ndarray:
    """The reference image used when none is given, [size, size, 3] uint8: the face shipped with the default
    checkpoint (an avatar it never saw in training), else a neutral vertical gradient."""
    if (DEFAULT_REFERENCES / "avatar.png").is_file():
        return load_image(DEFAULT_REFERENCES / "avatar.png", size)
    ramp = np.linspace(0.35, 0.75, size, dtype=np.float32)[:, None, None]
    tint = np.array([0.9, 0.85, 1.0], dtype=np.float32)
    return np.broadcast_to(ramp * tint * 255, (size, size, 3)).round().astype(np.uint8)


def session_conditioning(
    model: SonateModel, codecs: Codecs, voice: np.ndarray | None, avatar: np.ndarray | None, instruction: str
) -> Conditioning:
    """Conditioning of one sequence from a voice [samples] at the model's rate, an RGB avatar [S, S, 3] uint8
    (read at `cfg.avatar_image_size`) and an instruction; `codecs` make the avatar's reference latent."""
    cfg = model.cfg
    voice = default_voice(cfg.sample_rate) if voice is None else voice
    avatar = default_avatar(cfg.avatar_image_size) if avatar is None else avatar
    param = next(model.parameters())
    image = torch.as_tensor(np.ascontiguousarray(avatar))[None]
    return Conditioning(
        encode_instruction(cfg, instruction)[None].to(param.device),
        torch.as_tensor(voice, dtype=param.dtype, device=param.device)[None],
        image.permute(0, 3, 1, 2).to(param.device, param.dtype) / 255.0,
        codecs.encode_still(image).to(param.device, param.dtype),
    )
