"""The measures on ground truth and on controls that break them, and `sonate data` / `sonate eval` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sonate.models.checkpoint import random_model
from sonate.models.decoders import Codecs
from sonate.models.metrics import (
    audio_envelope,
    cosine,
    evaluate,
    identity_error,
    lip_sync,
    mouth_openness,
    speaker_embedding,
    transcribe,
    word_error_rate,
)
from sonate.models.world import World, WorldConfig, make_world
from sonate.streamer.cli.main import build_parser
from sonate.streamer.engine.evaluation import checkpoint_system, model_system
from tests.conftest import small_config

SMALL = WorldConfig(hours=0.02, seed=3, timbres=12, avatars=12, eval_fraction=0.15, clips_per_shard=8)
SHIFT = 10  # frames, the control's audio delay


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    make_world(root, SMALL)
    return World(root)


def delayed(audio: np.ndarray, frames: int, samples_per_frame: int) -> np.ndarray:
    """The audio later by `frames` frames (silence in front, the end cut)."""
    shift = frames * samples_per_frame
    return np.concatenate([np.zeros(shift, audio.dtype), audio[:-shift]])


def test_lip_sync_on_ground_truth_against_controls(world: World) -> None:
    truth, shifted, mismatched = [], [], []
    clips = [world.load(info) for info in world.clips("train")[:8]]
    for i, clip in enumerate(clips):
        box = world.renderer(clip.avatar_id).mouth_box
        per_frame = clip.sample_rate // clip.fps
        truth.append(lip_sync(clip.frames, clip.audio, clip.sample_rate, clip.fps, box))
        late = delayed(clip.audio, SHIFT, per_frame)
        shifted.append(lip_sync(clip.frames, late, clip.sample_rate, clip.fps, box))
        other = clips[(i + 1) % len(clips)].audio[: clip.audio.shape[0]]
        other = np.pad(other, (0, clip.audio.shape[0] - other.shape[0]))
        mismatched.append(lip_sync(clip.frames, other, clip.sample_rate, clip.fps, box))
    assert np.median([s.offset for s in truth]) == 0
    assert sum(s.offset == 0 for s in truth) >= 6
    confidence = np.mean([s.confidence for s in truth])
    assert confidence > 0.4
    # the audio 10 frames late: the measure finds the delay, and the aligned correlation collapses
    assert np.median([s.offset for s in shifted]) == SHIFT
    assert np.mean([s.correlations[0] for s in truth]) > np.mean([s.correlations[0] for s in shifted]) + 0.4
    # another clip's audio: no lag lines up, confidence clearly lower
    assert confidence > np.mean([s.confidence for s in mismatched]) + 0.15


def test_confidence_depends_on_where_the_silence_lies(world: World) -> None:
    """Why `sonate eval` speaks each clip on the clip's own timeline: the same speech and mouth, with the lead-in
    cut and a second of silence after the speech (as `sonate generate` lays a clip out), score lower, because
    silence against a closed mouth correlates at every lag and raises the median."""
    own, moved = [], []
    for info in world.clips("train")[:8]:
        clip = world.load(info)
        box, per_frame = world.renderer(clip.avatar_id).mouth_box, clip.sample_rate // clip.fps
        lead = round(clip.phonemes[1].start_s * clip.fps)  # the first phoneme is the lead-in's pause
        frames = np.concatenate([clip.frames[lead:], np.repeat(clip.frames[-1:], clip.fps, axis=0)])
        audio = np.concatenate([clip.audio[lead * per_frame :], np.zeros(clip.fps * per_frame, np.float32)])
        own.append(lip_sync(clip.frames, clip.audio, clip.sample_rate, clip.fps, box).confidence)
        moved.append(lip_sync(frames, audio, clip.sample_rate, clip.fps, box).confidence)
    assert np.mean(moved) < np.mean(own) - 0.1


def test_openness_and_envelope_follow_the_mouth_and_the_sound(world: World) -> None:
    clip = world.load(world.clips("train")[0])
    openness = mouth_openness(clip.frames, world.renderer(clip.avatar_id).mouth_box)
    assert np.corrcoef(openness, clip.mouth[:, 0] * clip.mouth[:, 1])[0, 1] > 0.9
    envelope = audio_envelope(clip.audio, clip.sample_rate, clip.fps, len(clip.frames))
    assert envelope.shape == (len(clip.frames),) and envelope[0] == envelope.min()  # silence first


def test_same_timbre_is_more_similar_than_different_timbre(world: World) -> None:
    rate = world.config.sample_rate
    ids = sorted(world.timbres)[:4]
    a = {t: speaker_embedding(world.reference_voice(t, "a"), rate) for t in ids}
    b = {t: speaker_embedding(world.reference_voice(t, "b"), rate) for t in ids}
    same = [cosine(a[t], b[t]) for t in ids]
    different = [cosine(a[t], b[u]) for t in ids for u in ids if u != t]
    assert np.mean(same) > np.mean(different) + 0.1
    assert min(same) > 0.75


def test_identity_error_is_zero_on_ground_truth_and_large_for_another_face(world: World) -> None:
    clip = world.load(world.clips("train")[0])
    renderer = world.renderer(clip.avatar_id)
    assert identity_error(clip.frames, world.reference_image(clip.avatar_id), renderer.regions)["mean"] < 1e-3
    other = next(a for a in sorted(world.avatars) if a != clip.avatar_id)
    wrong = identity_error(clip.frames, world.reference_image(other), world.renderer(other).regions)["mean"]
    assert wrong > 0.1


def test_wer_scores_transcripts_that_do_not_depend_on_the_order(world: World) -> None:
    assert word_error_rate(["the cat sat", "a dog"], ["the cat sat", "a dog"]) == 0.0
    assert word_error_rate(["the cat sat", "a dog"], ["the hat sat", ""]) == pytest.approx(3 / 5)
    first, second = (world.load(info) for info in world.clips("train")[:2])
    heard = transcribe(first.audio, first.sample_rate)
    assert heard and heard == heard.lower()
    transcribe(second.audio, second.sample_rate)
    assert transcribe(first.audio, first.sample_rate) == heard


def test_eval_ground_truth_through_the_cli(world: World, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval.json"
    args = build_parser("eval").parse_args(
        ["eval", "--checkpoint", "ground-truth", "--data", str(world.root), "--json", str(out)]
    )
    args.run(args)
    printed = capsys.readouterr().out
    assert "lip sync confidence" in printed and "WER" in printed
    result = json.loads(out.read_text())
    measures = ["sync_offset", "sync_confidence", "wer", "sim", "identity_error"]
    assert all(key in result for key in [*measures, "wer_ground_truth", "sim_ceiling", "sim_floor"])
    assert all(key in result["ground_truth"] for key in measures)
    assert result["clips"] == len(world.clips("test")) >= 2
    assert result["sync_offset"] == 0 and result["identity_error"] < 1e-3
    assert result["wer"] == result["wer_ground_truth"] and result["sim"] == result["sim_ceiling"]
    assert result["sim_ceiling"] > result["sim_floor"]
    assert result["identity_error_floor"] > 0.1


def test_data_make_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["data", "make", "--out", str(tmp_path / "w"), "--hours", "0.005", "--timbres", "6", "--avatars", "6"]
    args = build_parser("data").parse_args(argv)
    args.run(args)
    printed = capsys.readouterr()
    assert "x real time" in printed.out and "MB per hour" in printed.out
    assert "data make [" in printed.err  # the progress bar
    world = World(tmp_path / "w")
    assert world.complete and len(world.clips("test")) >= 1
    assert len(list((tmp_path / "w" / "references" / "voices").glob("*.wav"))) == 12
    args = build_parser("data").parse_args(
        ["data", "preview", "--data", str(tmp_path / "w"), "--out", str(tmp_path / "c.mp4")]
    )
    args.run(args)
    assert (tmp_path / "c.mp4").stat().st_size > 1000


@pytest.mark.slow
def test_eval_a_checkpoint_through_generate_clip(world: World) -> None:
    system, random_weights = checkpoint_system("default", seed=0, steps=None)
    result = evaluate(world.root, system, split="test", max_clips=1)
    assert random_weights is False and result["clips"] == 1
    assert result["ground_truth"]["identity_error"] < 1e-3
    assert np.isfinite([result[k] for k in ("sync_confidence", "wer", "sim", "identity_error")]).all()
    assert result["per_clip"][0]["seconds"] == pytest.approx(world.clips("test")[0].seconds)


def test_the_system_speaks_the_clip_timeline_or_the_text_alone(world: World) -> None:
    model = random_model(small_config(dim=128, n_heads=2, n_kv_heads=2))
    codecs, cfg = Codecs.random(model.cfg), model.cfg
    info = world.clips("test")[0]
    clip = world.load(info)
    timeline = clip.timeline()
    on_clip = model_system(model, codecs, 0, 1, None, False, "clip")(world, info, timeline, 0)
    from_text = model_system(model, codecs, 0, 1, None, False, "text")(world, info, timeline, 0)
    assert len(on_clip.frames) == len(clip.frames) and on_clip.audio.shape == clip.audio.shape
    assert len(from_text.frames) % cfg.chunk_video_frames == 0
    assert from_text.audio.shape[0] == len(from_text.frames) * cfg.sample_rate // cfg.video_fps
