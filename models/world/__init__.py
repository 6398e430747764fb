"""The synthetic talking-avatar world: paired speech and video with exact alignment (see docs/world.md).

Speech comes from espeak-ng through the inference frontend in many timbres; a procedurally rendered face moves
its mouth on the exact phoneme timings. ``make_world`` writes it as shards; ``World`` reads it back.
"""

from sonate.models.world.dataset import ClipInfo, World
from sonate.models.world.faces import Avatar, describe_face, sample_avatars
from sonate.models.world.make import ClipSpec, WorldConfig, make_clip, make_world, plan_world
from sonate.models.world.motion import blink_track, head_track, mouth_track
from sonate.models.world.render import FaceRenderer
from sonate.models.world.sentences import TEST_SENTENCES, SentenceGenerator, spoken_words
from sonate.models.world.shards import Shard, WorldClip, decode_frames, encode_frames, write_shard
from sonate.models.world.voices import Speech, Timbre, describe_voice, sample_timbres, speak

__all__ = [
    "TEST_SENTENCES",
    "Avatar",
    "ClipInfo",
    "ClipSpec",
    "FaceRenderer",
    "SentenceGenerator",
    "Shard",
    "Speech",
    "Timbre",
    "World",
    "WorldClip",
    "WorldConfig",
    "blink_track",
    "decode_frames",
    "describe_face",
    "describe_voice",
    "encode_frames",
    "head_track",
    "make_clip",
    "make_world",
    "mouth_track",
    "plan_world",
    "sample_avatars",
    "sample_timbres",
    "speak",
    "spoken_words",
    "write_shard",
]
