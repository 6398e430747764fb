"""Frontend tests against the real espeak-ng library: timings, split invariance, speakers, sampling, voices."""

import itertools
import random
import re

import numpy as np
import pytest

from sonate.models.errors import SonateInputError
from sonate.models.espeak import synthesize
from sonate.models.frontend import (
    MAX_SPEAKERS,
    PAUSE_SYMBOL,
    PHONEME_INVENTORY,
    PHONEME_VOCAB_SIZE,
    SILENCE_ID,
    UNKNOWN_ID,
    IncrementalFrontend,
    phoneme_id,
)

TEXT = (
    "Hello there, Mr. Smith! The quick brown fox jumps over the lazy dog; it costs 3.14 dollars, or "
    '1,000 cents.\nDid you know that café owners wake up early? "Really," she said: yes'
)
DIALOGUE = "[S0] Good morning. [S1]Hi, how are you? [S0] Fine, thanks[S2] and you"


def run(text: str, pieces: list[str] | None = None, **kwargs) -> IncrementalFrontend:
    frontend = IncrementalFrontend(**kwargs)
    for piece in pieces if pieces is not None else [text]:
        frontend.push(piece)
    frontend.flush()
    assert frontend.text == text
    return frontend


def split_randomly(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        pieces.append(text[i : i + n])
        i += n
    return pieces


def signature(frontend: IncrementalFrontend) -> list[tuple]:
    return [(p.symbol, p.start_s, p.end_s, p.speaker, p.text_start, p.text_end) for p in frontend.timeline.phonemes]


def test_inventory_and_ids():
    assert list(PHONEME_INVENTORY) == sorted(set(PHONEME_INVENTORY))
    assert len(PHONEME_INVENTORY) + 2 == PHONEME_VOCAB_SIZE
    assert phoneme_id(PAUSE_SYMBOL) == phoneme_id("_:") == SILENCE_ID == 0
    assert phoneme_id("no-such-phoneme") == UNKNOWN_ID == 1
    ids = [phoneme_id(s) for s in PHONEME_INVENTORY]
    assert ids == list(range(2, PHONEME_VOCAB_SIZE))
    # every symbol espeak emits for ordinary English is in the inventory
    frontend = run(TEXT + " " + DIALOGUE.replace("[S2]", ""))
    unknown = {p.symbol for p in frontend.timeline.phonemes if phoneme_id(p.symbol) == UNKNOWN_ID}
    assert not unknown


def test_timeline_is_monotone_contiguous_and_matches_audio():
    frontend = run(TEXT, keep_audio=True)
    phonemes = frontend.timeline.phonemes
    assert phonemes[0].start_s == 0.0
    for a, b in itertools.pairwise(phonemes):
        assert a.start_s < a.end_s
        assert a.end_s == pytest.approx(b.start_s, abs=1e-9)  # no overlap, no hole
    assert phonemes[-1].end_s == pytest.approx(frontend.timeline.duration_s, abs=1e-9)
    audio = frontend.render_audio()
    sr = frontend.sample_rate
    assert sr == 22050
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    assert abs(audio.size - frontend.timeline.duration_s * sr) <= 1
    # all audio energy sits on phonemes: the inter-unit gaps are silent, speech is not
    ids, _ = frontend.timeline.sample(np.arange(audio.size) / sr)
    loud = np.abs(audio) > 1e-3
    assert loud[ids != SILENCE_ID].mean() > 0.5
    assert loud[ids == SILENCE_ID].mean() < 0.02


@pytest.mark.parametrize("text", ["Hello world.", "fish and chips", "Sixty-six thick thistle sticks!"])
def test_voiced_audio_lies_inside_the_phoneme_span(text):
    synthesis = synthesize(text)
    spoken = [p for p in synthesis.phonemes if not p.is_pause]
    first, last = round(spoken[0].start_s * synthesis.sample_rate), round(spoken[-1].end_s * synthesis.sample_rate)
    loud = np.nonzero(np.abs(synthesis.samples) > 1e-3)[0]
    assert first <= loud[0] and loud[-1] < last
    assert synthesis.samples.size / synthesis.sample_rate == pytest.approx(synthesis.phonemes[-1].end_s)


def test_any_split_gives_the_same_timeline():
    whole = run(TEXT)
    expected = signature(whole)
    words = re.findall(r"\S+\s*", TEXT)
    assert signature(run(TEXT, words)) == expected
    assert signature(run(TEXT, list(TEXT))) == expected
    for seed in range(3):
        assert signature(run(TEXT, split_randomly(TEXT, seed))) == expected
    assert run(TEXT, words).timeline.duration_s == whole.timeline.duration_s
    dialogue = signature(run(DIALOGUE))
    assert signature(run(DIALOGUE, list(DIALOGUE))) == dialogue


def test_half_word_waits_for_completion_or_flush():
    frontend = IncrementalFrontend()
    assert frontend.push("Hel") == [] and frontend.push("lo wor") == []
    committed = frontend.push("ld.")  # punctuation completes the word and the unit
    assert committed and frontend.committed_chars == len("Hello world.")
    assert {frontend.text[p.text_start : p.text_end] for p in committed if p.text_start >= 0} == {"Hello", "world"}

    frontend = IncrementalFrontend(max_unit_words=4)
    assert frontend.push("one two three fo") == [] and frontend.push("ur") == []
    assert frontend.push(" ")  # the fourth word is complete: the unit commits
    assert frontend.push("fiv") == []
    tail = frontend.flush()
    assert {frontend.text[p.text_start : p.text_end] for p in tail if p.text_start >= 0} == {"fiv"}
    assert frontend.flush() == []
    end_s = frontend.timeline.duration_s
    more = frontend.push("Again.")  # text after a flush continues the same timeline
    assert more[0].start_s == end_s and frontend.text[more[0].text_start : more[0].text_end] == "Again"


def test_a_short_first_unit_commits_sooner_and_keeps_any_split_exact():
    frontend = IncrementalFrontend(max_unit_words=4, first_unit_words=2)
    assert frontend.push("Let me ") and frontend.committed_chars == len("Let me ")  # two words: speak already
    assert frontend.push("walk you through ") == []  # later units hold up to four words again
    assert frontend.push("the ") and frontend.committed_chars == len("Let me walk you through the ")
    text = "Let me walk you through the plan, one step at a time, for this afternoon."
    whole = signature(run(text, first_unit_words=2))
    assert signature(run(text, re.findall(r"\S+\s*", text), first_unit_words=2)) == whole
    assert signature(run(text, list(text), first_unit_words=2)) == whole
    assert whole != signature(run(text))  # one more unit break than with four-word units
    with pytest.raises(SonateInputError, match="first_unit_words"):
        IncrementalFrontend(first_unit_words=0)


def test_gaps_follow_the_punctuation():
    frontend = run("One, two. Three four five six seven", max_unit_words=4)
    gaps = [
        round(p.end_s - p.start_s, 3)
        for p in frontend.timeline.phonemes
        if p.symbol == PAUSE_SYMBOL and p.text_start == -1 and p.end_s - p.start_s >= 0.079
    ]
    assert gaps[:4] == [0.25, 0.45, 0.08, 0.45]


def test_speaker_tags_set_speaker_ids_and_count_in_offsets():
    frontend = run(DIALOGUE)
    text = frontend.text
    spoken = [(text[p.text_start : p.text_end], p.speaker) for p in frontend.timeline.phonemes if p.text_start >= 0]
    by_word = dict(spoken)
    assert by_word == {"Good": 0, "morning": 0, "Hi": 1, "how": 1, "are": 1, "you": 2, "Fine": 0, "thanks": 0, "and": 2}
    assert all("[" not in word for word, _ in spoken)
    assert run("Just text.").timeline.phonemes[0].speaker == 0
    with pytest.raises(SonateInputError):
        IncrementalFrontend().push(f"[S{MAX_SPEAKERS}] out of range")
    frontend = IncrementalFrontend()
    frontend.push("ok [S")
    with pytest.raises(SonateInputError):
        frontend.push("9]")
    assert frontend.text == "ok [S"  # the bad piece was not taken


def test_sample_returns_silence_outside_and_ids_inside():
    frontend = run("[S3] Hello world.")
    timeline = frontend.timeline
    phonemes = timeline.phonemes
    h = phonemes[0]
    assert h.symbol == "h"
    query = np.array(
        [-1.0, (h.start_s + h.end_s) / 2, phonemes[-1].start_s + 1e-4, timeline.duration_s, timeline.duration_s + 5.0]
    )
    ids, speakers = timeline.sample(query)
    assert ids.dtype == np.int64 and speakers.dtype == np.int64
    assert ids.tolist() == [0, phoneme_id("h"), 0, 0, 0]  # last entry is the sentence gap
    assert speakers.tolist() == [0, 3, 3, 3, 3]
    grid_ids, _ = timeline.sample(np.linspace(0, timeline.duration_s, 200).reshape(20, 10))
    assert grid_ids.shape == (20, 10)
    empty_ids, empty_speakers = IncrementalFrontend().timeline.sample(np.array([0.0, 1.0]))
    assert empty_ids.tolist() == [0, 0] and empty_speakers.tolist() == [0, 0]


def test_text_offsets_point_at_the_words():
    frontend = run(TEXT)
    order = []
    for p in frontend.timeline.phonemes:
        if p.text_start >= 0 and (not order or order[-1] != (p.text_start, p.text_end)):
            order.append((p.text_start, p.text_end))
    assert [TEXT[a:b] for a, b in order] == re.findall(r"[\w.,']*\w", TEXT)
    assert all(p.text_start == -1 and p.text_end == -1 for p in frontend.timeline.phonemes if p.symbol == PAUSE_SYMBOL)


def test_voice_variant_and_pitch_change_the_audio():
    base = synthesize("Hello world.")
    variant = synthesize("Hello world.", voice="en-us+f3")
    high = synthesize("Hello world.", pitch=90, pitch_range=80)
    again = synthesize("Hello world.")  # pitch/range do not leak from the previous call
    assert not np.array_equal(base.samples, variant.samples[: base.samples.size])
    assert not np.array_equal(base.samples, high.samples[: base.samples.size])
    assert np.array_equal(base.samples, again.samples)
    frontend = run("Hello there.", voice="en-us+f3", pitch=70, keep_audio=True)
    assert frontend.render_audio().size > 0
    with pytest.raises(SonateInputError):
        IncrementalFrontend(voice="no-such-voice")


def test_bad_input_raises():
    with pytest.raises(SonateInputError):
        IncrementalFrontend().push(b"bytes")
    with pytest.raises(SonateInputError):
        synthesize(42)
    with pytest.raises(SonateInputError):
        synthesize("hi", rate_wpm=10)
    with pytest.raises(SonateInputError):
        IncrementalFrontend().render_audio()  # audio is only kept on request
    assert run("  ... !? ").timeline.phonemes == []


def test_concurrent_synthesis_is_serialised_and_reproducible():
    from concurrent.futures import ThreadPoolExecutor

    texts = ["Hello world.", "Good morning to you."] * 4
    voices = ["en-us", "en-us+f3"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda tv: synthesize(tv[0], voice=tv[1]), zip(texts, voices, strict=True)))
    for (text, voice), result in zip(zip(texts, voices, strict=True), results, strict=True):
        assert np.array_equal(result.samples, synthesize(text, voice=voice).samples)
