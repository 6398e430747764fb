"""The model as the system under test of `sonate eval`: each test clip spoken in its reference voice and avatar."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sonate.models.checkpoint import load_checkpoint
from sonate.models.decoders import Codecs
from sonate.models.frontend import PhonemeTimeline
from sonate.models.metrics.evaluate import GeneratedMedia, SystemUnderTest
from sonate.models.sampler import Guidance
from sonate.models.transformer import SonateModel
from sonate.models.world.dataset import ClipInfo, World
from sonate.streamer.engine.clip import open_clip_stream, speak_clip, speech_timeline

Timing = Literal["clip", "text"]  # what the system under test speaks each clip from (see `sonate eval --timing`)


def checkpoint_system(
    checkpoint: str, seed: int, steps: int | None, one_pass: bool = False, timing: Timing = "clip"
) -> tuple[SystemUnderTest, bool]:
    """The clip maker of a checkpoint ("default" or a folder) for `evaluate`, and whether its weights are random."""
    loaded = load_checkpoint(None if checkpoint == "default" else Path(checkpoint))
    return model_system(loaded.model, loaded.codecs, seed, steps, None, one_pass, timing), loaded.random_weights


def model_system(
    model: SonateModel,
    codecs: Codecs,
    seed: int,
    steps: int | None,
    guidance: Guidance | None,
    one_pass: bool,
    timing: Timing = "clip",
) -> SystemUnderTest:
    """The clip maker of `model` for `evaluate`: each clip's sentence in its reference voice and avatar, made
    with `steps` Euler steps and `guidance` (None: the model's), on the clip's timeline or from its text alone
    (`timing`, see `--timing`)."""
    cfg = model.cfg

    def speak(world: World, info: ClipInfo, timeline: PhonemeTimeline, index: int) -> GeneratedMedia:
        stream = open_clip_stream(
            model,
            codecs,
            voice=world.reference_voice(info.timbre, "a", cfg.sample_rate),
            avatar=world.reference_image(info.avatar, cfg.avatar_image_size),
            instruction=info.instruction,
            seed=seed + index,
            steps=steps,
            guidance=guidance,
            one_pass=one_pass,
        )
        if timing == "clip":
            clip = speak_clip(stream, codecs, timeline, seconds=timeline.duration_s)
        else:
            clip = speak_clip(stream, codecs, speech_timeline(info.text))
        return GeneratedMedia(clip.audio, clip.frames, clip.sample_rate, clip.fps)

    return speak
