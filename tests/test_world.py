"""The synthetic world: determinism, splits, shards, speech timing, the face and its motion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sonate.models.errors import SonateInputError
from sonate.models.frontend import PHONEME_INVENTORY
from sonate.models.world import (
    TEST_SENTENCES,
    FaceRenderer,
    SentenceGenerator,
    Shard,
    Timbre,
    World,
    WorldConfig,
    blink_track,
    describe_face,
    describe_voice,
    head_track,
    make_world,
    mouth_track,
    plan_world,
    sample_avatars,
    sample_timbres,
    speak,
    spoken_words,
    write_shard,
)
from sonate.models.world.motion import PHONEME_VISEMES, viseme_of
from sonate.models.world.render import MAX_HEAD_SHIFT

SMALL = WorldConfig(hours=0.02, seed=7, timbres=12, avatars=12, eval_fraction=0.15, clips_per_shard=6)


def small_world(path: Path) -> World:
    make_world(path, SMALL)
    return World(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return small_world(tmp_path_factory.mktemp("world"))


def test_the_world_is_deterministic_from_its_seed(world: World, tmp_path: Path) -> None:
    again = small_world(tmp_path / "again")
    shards = [s["path"] for s in world.manifest["shards"]]
    assert shards == [s["path"] for s in again.manifest["shards"]]
    for shard in shards:  # byte for byte
        assert digest(world.root / shard) == digest(again.root / shard)
    for name in ("t000_a.wav", "t011_b.wav"):
        assert digest(world.reference_voice_path(name[:4], name[5])) == digest(
            again.reference_voice_path(name[:4], name[5])
        )
    assert digest(world.reference_image_path("a003")) == digest(again.reference_image_path("a003"))
    other = plan_world(WorldConfig(**{**world.manifest["config"], "seed": 8}))
    assert [c.text for c in other[2][0]] != [c.text for c in plan_world(SMALL)[2][0]]


def test_a_larger_world_starts_with_the_smaller_ones_clips() -> None:
    _, _, small = plan_world(SMALL)
    _, _, large = plan_world(WorldConfig(**{**SMALL.__dict__, "hours": 0.05}))
    assert small[0] == large[0]


def test_held_out_timbres_and_avatars_never_appear_in_training(world: World) -> None:
    held_t = {t.id for t in world.timbres.values() if t.split != "train"}
    held_a = {a.id for a in world.avatars.values() if a.split != "train"}
    assert held_t and held_a
    seen_t, seen_a = set(), set()
    for entry in world.manifest["shards"]:
        shard = world.shard(entry["path"])
        splits = set(shard._arrays["split"].tolist())
        assert splits == {entry["split"]}
        if entry["split"] == "train":
            seen_t |= set(shard._arrays["timbre_ids"].tolist())
            seen_a |= set(shard._arrays["avatar_ids"].tolist())
        else:  # val and test clips use their own split's timbres and avatars
            for clip in world.clips(entry["split"]):
                assert world.timbres[clip.timbre].split == entry["split"]
                assert world.avatars[clip.avatar].split == entry["split"]
    assert seen_t and seen_a
    assert not seen_t & held_t and not seen_a & held_a
    assert {c.text for c in world.clips("test")} <= set(TEST_SENTENCES)
    assert not {c.text for c in world.clips("train")} & set(TEST_SENTENCES)


def test_a_shard_reads_back_the_same_arrays(world: World, tmp_path: Path) -> None:
    clips = [world.load(info) for info in world.clips("train")[:3]]
    write_shard(tmp_path / "copy.npz", clips)
    shard = Shard(tmp_path / "copy.npz")
    assert len(shard) == 3
    for original, copy in zip(clips, shard, strict=True):
        assert copy.id == original.id and copy.instruction == original.instruction and copy.words == original.words
        np.testing.assert_array_equal(copy.frames, original.frames)
        np.testing.assert_array_equal(copy.audio, original.audio)
        np.testing.assert_array_equal(copy.mouth, original.mouth)
        assert [(p.symbol, p.start_s, p.end_s) for p in copy.phonemes] == [
            (p.symbol, p.start_s, p.end_s) for p in original.phonemes
        ]


def test_a_clip_matches_what_was_rendered(world: World) -> None:
    clip = world.load(world.clips("train")[0])
    renderer = world.renderer(clip.avatar_id)
    np.testing.assert_array_equal(clip.frames, renderer.render(clip.mouth, clip.blink, clip.head))
    assert clip.audio.shape[0] == len(clip.frames) * clip.sample_rate // clip.fps
    assert clip.phonemes[0].start_s == 0 and clip.phonemes[-1].end_s == pytest.approx(clip.seconds)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(clip.phonemes, clip.phonemes[1:], strict=False))
    assert clip.frames.shape[1:] == (128, 128, 3) and clip.fps == 25 and clip.sample_rate == 16000


def test_make_resumes_without_redoing_finished_shards(world: World, tmp_path: Path) -> None:
    copy = small_world(tmp_path / "w")
    paths = sorted((copy.root / "shards").glob("*.npz"))
    kept, removed = paths[0], paths[1]
    kept_mtime, removed_digest = kept.stat().st_mtime_ns, digest(removed)
    removed.unlink()
    manifest = json.loads((copy.root / "manifest.json").read_text())
    manifest["complete"] = False  # as if the run had been interrupted
    (copy.root / "manifest.json").write_text(json.dumps(manifest))
    make_world(copy.root, SMALL)
    assert kept.stat().st_mtime_ns == kept_mtime and digest(removed) == removed_digest
    assert World(copy.root).complete
    with pytest.raises(SonateInputError, match="same options"):
        make_world(copy.root, WorldConfig(**{**SMALL.__dict__, "seed": 1}))


def test_speech_timings_follow_the_vocal_tract_change() -> None:
    base = Timbre("t", "m3", "male", 50, 50, 175, 1.0, 0.0, "train")
    short = Timbre("t", "m3", "male", 50, 50, 175, 1.1, 0.0, "train")
    a, b = speak("Hello there, Anna.", base, 16000), speak("Hello there, Anna.", short, 16000)
    assert [p.symbol for p in a.phonemes] == [p.symbol for p in b.phonemes]
    ratio = 22050 / round(22050 * 1.1)
    assert b.phonemes[-1].end_s == pytest.approx(a.phonemes[-1].end_s * ratio, abs=1e-9)
    assert b.seconds == pytest.approx(a.seconds * ratio, abs=2 / 16000)
    assert a.phonemes[-1].end_s == pytest.approx(a.seconds, abs=1 / 16000)


def test_every_variant_speaks_the_same_samples_whatever_came_before() -> None:
    from sonate.models.espeak import synthesize
    from sonate.models.world.voices import VARIANTS

    text = "See you on Monday, said the old sailor."
    first = {v: synthesize(text, voice=f"en-us+{v}", rate_wpm=160, pitch=40).samples for v in VARIANTS}
    synthesize("Something else, with 42 numbers.", voice="en-us+klatt")  # the Klatt synthesizer keeps state
    for variant in reversed(list(VARIANTS)):
        again = synthesize(text, voice=f"en-us+{variant}", rate_wpm=160, pitch=40).samples
        np.testing.assert_array_equal(again, first[variant], err_msg=variant)


@pytest.mark.slow
def test_workers_make_the_same_bytes(world: World, tmp_path: Path) -> None:
    make_world(tmp_path / "w", SMALL, workers=2)
    for entry in world.manifest["shards"]:
        assert digest(tmp_path / "w" / entry["path"]) == digest(world.root / entry["path"])


def test_timbres_are_distinct_and_described() -> None:
    timbres = sample_timbres(8, np.random.default_rng(0), 16000, ["train"] * 8)
    assert len({(t.variant, t.pitch, t.pitch_range, t.rate_wpm, t.tract) for t in timbres}) == 8
    assert {t.gender for t in timbres} == {"female", "male"}
    assert all(60 < t.f0_hz < 450 for t in timbres)
    assert describe_voice(timbres[0]).endswith("female voice")
    assert WorldConfig().timbres >= 200 and WorldConfig().avatars >= 200


def test_240_timbres_as_many_as_the_default_world_are_distinct() -> None:
    timbres = sample_timbres(240, np.random.default_rng(0), 16000, ["train"] * 240)
    assert len({(t.variant, t.pitch, t.pitch_range, t.rate_wpm, t.tract) for t in timbres}) == 240


def test_avatars_are_distinct_and_described() -> None:
    avatars = sample_avatars(240, np.random.default_rng(0), ["train"] * 240)
    keys = {
        (a.face_shape, a.skin_name, a.hair_style, a.hair_name, a.eye_shape, a.eye_name, a.background_name)
        for a in avatars
    }
    assert len(keys) == 240
    assert describe_face(avatars[0]).startswith(("a ", "an ")) and "background" in describe_face(avatars[0])


def test_every_phoneme_of_the_inventory_has_a_viseme() -> None:
    missing = [s for s in PHONEME_INVENTORY if s.lstrip("',") not in PHONEME_VISEMES]
    assert not missing
    assert viseme_of("_") == ("rest",) and viseme_of("'aI") == ("aa", "I")


def test_the_mouth_rests_in_silence_and_opens_on_vowels() -> None:
    from sonate.models.espeak import TimedPhoneme

    phonemes = [TimedPhoneme("_", 0, 0.4), TimedPhoneme("'a", 0.4, 0.6), TimedPhoneme("_", 0.6, 1.2)]
    mouth = mouth_track(phonemes, 30, 25)
    assert np.all(mouth[:7, 0] < 0.01) and np.all(mouth[-10:, 0] < 0.01)
    assert mouth[12, 0] > 0.9  # 0.48..0.52 s, inside the vowel
    renderer = FaceRenderer(sample_avatars(1, np.random.default_rng(3), ["train"])[0])
    frames = renderer.render(mouth, np.zeros(30), np.zeros((30, 2)))
    np.testing.assert_array_equal(frames[0], renderer.reference_image())
    assert not np.array_equal(frames[12], frames[0])


def test_blinks_and_head_motion_are_natural_and_bounded() -> None:
    blinks = blink_track(np.random.default_rng(0), 25 * 60, 25)
    starts = np.flatnonzero((blinks[1:] > 0.5) & (blinks[:-1] <= 0.5))
    assert 8 <= len(starts) <= 30  # about one every 3.5 s over a minute
    head = head_track(np.random.default_rng(0), 25 * 60, 25)
    assert np.abs(head).max() <= MAX_HEAD_SHIFT and head.std() > 0.2
    assert np.abs(np.diff(head, axis=0)).max() < 0.5  # smooth: under half a pixel per frame


def test_sentences_are_varied_and_spoken_as_written() -> None:
    generator, rng = SentenceGenerator(), np.random.default_rng(0)
    sentences = [generator.sentence(rng) for _ in range(300)]
    assert len(set(sentences)) > 280
    assert any(s.endswith("?") for s in sentences) and any(any(ch.isdigit() for ch in s) for s in sentences)
    assert not set(sentences) & set(TEST_SENTENCES)
    assert (
        spoken_words("Room 342 has 2,500 books.") == "room three hundred forty two has two thousand five hundred books"
    )


def test_the_mouth_box_scales_outward_to_any_grid(world: World) -> None:
    avatar = next(iter(world.avatars))
    box = world.renderer(avatar).mouth_box
    size = world.config.image_size
    assert world.mouth_box(avatar, size, size) == box
    top, bottom, left, right = world.mouth_box(avatar, size // 8, size // 8)
    assert top * 8 <= box[0] and bottom * 8 >= box[1] and left * 8 <= box[2] and right * 8 >= box[3]
    assert (bottom - top) * 8 < box[1] - box[0] + 16 and (right - left) * 8 < box[3] - box[2] + 16
