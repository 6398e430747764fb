"""Offline generation of a whole clip: text in, synchronized audio and frames out (what `sonate generate` runs)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.frontend import IncrementalFrontend, PhonemeTimeline
from sonate.models.sampler import ChunkStream, Guidance, RecomputeStream, chunk_phonemes
from sonate.models.transformer import SonateModel
from sonate.streamer.engine.reference_media import session_conditioning

log = logging.getLogger(__name__)

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
    speech_start_s: float  # the first spoken phoneme's start (after any lead-in pause)
    speech_seconds: float  # the speech's end

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.frames) / self.fps


def generate_clip(
    model: SonateModel,
    codecs: Codecs,
    text: str,
    *,
    voice: np.ndarray | None = None,
    avatar: np.ndarray | None = None,
    instruction: str = "",
    seed: int = 0,
    steps: int | None = None,
    guidance: Guidance | None = None,
    one_pass: bool = False,
) -> Clip:
    """Speak `text` chunk by chunk through the streaming sampler and decoders; the clip covers the speech.

    `one_pass` generates with no KV cache, re-running the teacher-forcing one-pass forward over everything so
    far at every step: the offline reference that streaming must match (slower; for evaluation).
    """
    timeline = speech_timeline(text)
    stream = open_clip_stream(model, codecs, voice=voice, avatar=avatar, instruction=instruction, seed=seed,
                              steps=steps, guidance=guidance, one_pass=one_pass)  # fmt: skip
    return speak_clip(stream, codecs, timeline)


def open_clip_stream(
    model: SonateModel,
    codecs: Codecs,
    *,
    voice: np.ndarray | None = None,
    avatar: np.ndarray | None = None,
    instruction: str = "",
    seed: int = 0,
    steps: int | None = None,
    guidance: Guidance | None = None,
    one_pass: bool = False,
) -> ChunkStream | RecomputeStream:
    """A one-sequence stream conditioned on a reference voice and avatar (None: the defaults) and an instruction,
    ready for :func:`speak_clip`; `one_pass` opens the cache-free reference stream instead."""
    guidance = guidance or Guidance.of(model.cfg)
    cond = session_conditioning(model, codecs, voice, avatar, instruction)
    if one_pass:
        return RecomputeStream(model, cond, [seed], guidance, steps)
    return ChunkStream.open_batch(model, cond, [seed], guidance, steps)


def speech_timeline(text: str) -> PhonemeTimeline:
    """The timed phonemes of the whole of `text` (espeak-ng G2P), checked to hold something to say."""
    if not text.strip():
        raise SonateInputError("the text is empty; give something to say")
    frontend = IncrementalFrontend()
    frontend.push(text)
    frontend.flush()
    if not frontend.timeline.phonemes:
        raise SonateInputError(f"nothing to speak in {text!r}; give words, not only punctuation")
    return frontend.timeline


def speak_clip(
    stream: ChunkStream | RecomputeStream, codecs: Codecs, timeline: PhonemeTimeline, seconds: float | None = None
) -> Clip:
    """Generate the clip of `timeline` on an opened one-sequence `stream`: every chunk from the first, decoded.

    The clip lasts `seconds` (whole video frames); None: TAIL_SECONDS past the timeline, rounded up to whole
    chunks. This is a whole utterance made before any of it is played, as a sentence-at-a-time server makes it.
    """
    cfg = stream.cfg
    if seconds is None:
        n_frames = math.ceil((timeline.duration_s + TAIL_SECONDS) / cfg.chunk_seconds) * cfg.chunk_video_frames
    else:
        n_frames = round(seconds * cfg.video_fps)
    chunks = max(1, math.ceil(n_frames / cfg.chunk_video_frames))
    vocoder_states = [codecs.vocoder.init_state(1)]
    audio, frames = [], []
    for chunk in range(chunks):
        audio_latents, video_latents = stream.generate(chunk_phonemes(cfg, [timeline], chunk, 1))
        samples, chunk_frames, vocoder_states = codecs.decode_chunk(audio_latents, video_latents, vocoder_states)
        audio.append(samples[0].numpy())
        frames.append(chunk_frames[0].numpy())
    log.info("generated %d chunks for %.2f s of speech", chunks, timeline.duration_s)
    samples_per_frame = cfg.sample_rate // cfg.video_fps
    speech_start_s = next((p.start_s for p in timeline.phonemes if not p.is_pause), timeline.duration_s)
    return Clip(np.concatenate(audio)[: n_frames * samples_per_frame], np.concatenate(frames)[:n_frames],
                cfg.sample_rate, cfg.video_fps, speech_start_s, timeline.duration_s)  # fmt: skip
