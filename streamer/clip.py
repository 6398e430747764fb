"""Offline generation of a whole clip: text in, synchronized audio and frames out (what `sonate generate` runs)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from sonate.models.conditioning import Conditioning, encode_instruction
from sonate.models.decoders import BandVocoder, PixelVideoDecoder
from sonate.models.errors import SonateInputError
from sonate.models.espeak import synthesize
from sonate.models.frontend import IncrementalFrontend
from sonate.models.media_io import resample
from sonate.models.sampler import ChunkStream, Guidance, chunk_phonemes
from sonate.models.transformer import SonateModel

log = logging.getLogger(__name__)

DEFAULT_VOICE_TEXT = "This is the voice sonate speaks with when it is given no reference."
TAIL_SECONDS = 0.3  # media generated after the last phoneme, so the clip does not end mid-sound


@dataclass
class Clip:
    """A generated clip: mono float32 audio [samples] at `sample_rate` Hz and RGB frames [N, H, W, 3] at `fps`.

    Its audio lasts exactly `len(frames) / fps` seconds.
    """

    audio: np.ndarray
    frames: np.ndarray
    sample_rate: int
    fps: int
    speech_seconds: float

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.frames) / self.fps


def default_voice(sample_rate: int) -> np.ndarray:
    """The reference voice used when none is given: espeak-ng's en-us voice, [samples] at `sample_rate` Hz."""
    speech = synthesize(DEFAULT_VOICE_TEXT)
    return resample(speech.samples, speech.sample_rate, sample_rate)


def default_avatar(size: int) -> np.ndarray:
    """The reference image used when none is given: a neutral vertical gradient, [size, size, 3] uint8."""
    ramp = np.linspace(0.35, 0.75, size, dtype=np.float32)[:, None, None]
    tint = np.array([0.9, 0.85, 1.0], dtype=np.float32)
    return np.broadcast_to(ramp * tint * 255, (size, size, 3)).round().astype(np.uint8)


def session_conditioning(
    model: SonateModel, voice: np.ndarray | None, avatar: np.ndarray | None, instruction: str
) -> Conditioning:
    """Conditioning of one sequence from a voice [samples] at the model's rate, an RGB avatar and an instruction."""
    cfg = model.cfg
    voice = default_voice(cfg.sample_rate) if voice is None else voice
    avatar = default_avatar(cfg.identity_image_size) if avatar is None else avatar
    param = next(model.parameters())
    return Conditioning(
        encode_instruction(cfg, instruction)[None].to(param.device),
        torch.as_tensor(voice, dtype=param.dtype, device=param.device)[None],
        torch.as_tensor(avatar, device=param.device).permute(2, 0, 1)[None].to(param.dtype) / 255.0,
    )


def generate_clip(
    model: SonateModel,
    text: str,
    *,
    voice: np.ndarray | None = None,
    avatar: np.ndarray | None = None,
    instruction: str = "",
    seed: int = 0,
    steps: int | None = None,
    guidance: Guidance | None = None,
) -> Clip:
    """Speak `text` chunk by chunk through the streaming sampler and decoders; the clip covers the speech."""
    if not text.strip():
        raise SonateInputError("the text is empty; give something to say")
    cfg = model.cfg
    frontend = IncrementalFrontend()
    frontend.push(text)
    frontend.flush()
    timeline = frontend.timeline
    if not timeline.phonemes:
        raise SonateInputError(f"nothing to speak in {text!r}; give words, not only punctuation")
    guidance = guidance or Guidance(cfg.audio_guidance, cfg.video_guidance)
    stream = ChunkStream.open_batch(
        model, session_conditioning(model, voice, avatar, instruction), [seed], guidance, steps
    )
    vocoder, video_decoder = BandVocoder(cfg), PixelVideoDecoder(cfg)
    vocoder_state = vocoder.init_state(1)
    chunks = max(1, math.ceil((timeline.duration_s + TAIL_SECONDS) / cfg.chunk_seconds))
    audio, frames = [], []
    for chunk in range(chunks):
        audio_latents, video_latents = stream.generate(chunk_phonemes(cfg, [timeline], chunk, 1))
        samples, vocoder_state = vocoder.decode(audio_latents, vocoder_state)
        audio.append(samples[0].numpy())
        frames.append(video_decoder.decode(video_latents)[0].numpy())
    log.info("generated %d chunks for %.2f s of speech", chunks, timeline.duration_s)
    return Clip(np.concatenate(audio), np.concatenate(frames), cfg.sample_rate, cfg.video_fps, timeline.duration_s)
