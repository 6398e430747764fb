"""Text → timed phonemes: the instruction-phoneme format's phoneme track, built incrementally as text arrives.

Text is cut into *units* by a rule that looks only at the text (never at how it was split into pieces); each
completed unit is synthesized on its own with espeak-ng, its leading/trailing silence trimmed at its first/last
phoneme event, and placed on the timeline after the previous unit with a fixed gap. Times are kept as whole
samples at espeak's rate, so the timeline and the rendered audio agree exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from sonate.models.errors import SonateInputError
from sonate.models.espeak import Synthesis, TimedPhoneme, synthesize

__all__ = [
    "MAX_SPEAKERS",
    "PAUSE_SYMBOL",
    "PHONEME_INVENTORY",
    "PHONEME_VOCAB_SIZE",
    "SILENCE_ID",
    "UNKNOWN_ID",
    "IncrementalFrontend",
    "PhonemeTimeline",
    "TimedPhoneme",
    "phoneme_id",
]

# espeak-ng en-us phoneme mnemonics (stress marks ' and , are part of the vowel's symbol), collected from
# ~8k distinct English words and the stdlib docstrings with the en-us and en-us+f3 voices, completed with the
# stressed/unstressed forms of every vowel seen. Sorted and frozen: ids must never change.
PHONEME_INVENTORY: tuple[str, ...] = (
    "'0",
    "'3",
    "'3:",
    "'@",
    "'@2",
    "'A:",
    "'A@",
    "'E",
    "'I",
    "'I2",
    "'O2",
    "'O:",
    "'O@",
    "'OI",
    "'U",
    "'U@",
    "'V",
    "'a",
    "'a#",
    "'aI",
    "'aI3",
    "'aI@",
    "'aU",
    "'aa",
    "'e@",
    "'eI",
    "'i:",
    "'i@",
    "'i@3",
    "'n-",
    "'o@",
    "'oU",
    "'u",
    "'u:",
    ",0",
    ",3",
    ",3:",
    ",@",
    ",@2",
    ",A:",
    ",A@",
    ",E",
    ",I",
    ",I2",
    ",O2",
    ",O:",
    ",O@",
    ",OI",
    ",U",
    ",U@",
    ",V",
    ",a",
    ",a#",
    ",aI",
    ",aI3",
    ",aI@",
    ",aU",
    ",aa",
    ",e@",
    ",eI",
    ",i:",
    ",i@",
    ",i@3",
    ",n-",
    ",o@",
    ",oU",
    ",u",
    ",u:",
    "0",
    "3",
    "3:",
    ";",
    "?",
    "@",
    "@-",
    "@2",
    "@L",
    "A:",
    "A@",
    "D",
    "E",
    "I",
    "I#",
    "I2",
    "N",
    "O2",
    "O:",
    "O@",
    "OI",
    "S",
    "T",
    "U",
    "U@",
    "V",
    "Z",
    "a",
    "a#",
    "aI",
    "aI3",
    "aI@",
    "aU",
    "aa",
    "b",
    "d",
    "dZ",
    "e@",
    "eI",
    "f",
    "g",
    "h",
    "i",
    "i:",
    "i@",
    "i@3",
    "j",
    "k",
    "l",
    "m",
    "n",
    "n-",
    "o@",
    "oU",
    "p",
    "r",
    "r-",
    "s",
    "t",
    "t#",
    "t2",
    "tS",
    "u",
    "u:",
    "v",
    "w",
    "x",
    "z",
)
PAUSE_SYMBOL = "_"  # every pause/silence on a timeline; espeak's "_:", "_!", ... are normalised to it
SILENCE_ID = 0
UNKNOWN_ID = 1
_PHONEME_IDS = {symbol: i + 2 for i, symbol in enumerate(PHONEME_INVENTORY)}
PHONEME_VOCAB_SIZE = len(PHONEME_INVENTORY) + 2  # silence, unknown, inventory
MAX_SPEAKERS = 8  # speaker tags [S0]..[S7]

_TAG_RE = re.compile(r"\[S([0-9])\]")
_CLAUSE_END = ",;:"
_SENTENCE_END = ".!?\n"
# a "." after one of these titles does not end a sentence ("Mr. Smith")
_ABBREVIATION_RE = re.compile(r"(?:^|[^A-Za-z])(?:dr|jr|mr|mrs|ms|mt|prof|sr|st|vs)$", re.IGNORECASE)


def phoneme_id(symbol: str) -> int:
    """Model id of a phoneme symbol: 0 for silence/pauses (``_``...), 1 for unknown, 2.. for the inventory."""
    if symbol.startswith(PAUSE_SYMBOL):
        return SILENCE_ID
    return _PHONEME_IDS.get(symbol, UNKNOWN_ID)


@dataclass
class PhonemeTimeline:
    """Timed phonemes in order (non-overlapping, start times non-decreasing) and the timeline's length in s."""

    phonemes: list[TimedPhoneme] = field(default_factory=list)
    duration_s: float = 0.0
    _cache: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def extend(self, phonemes: list[TimedPhoneme], duration_s: float) -> None:
        """Append phonemes (starting at or after the current end) and set the new duration in seconds."""
        self.phonemes.extend(phonemes)
        self.duration_s = duration_s

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != len(self.phonemes):
            starts = np.array([p.start_s for p in self.phonemes], dtype=np.float64)
            ends = np.array([p.end_s for p in self.phonemes], dtype=np.float64)
            ids = np.array([phoneme_id(p.symbol) for p in self.phonemes], dtype=np.int64)
            speakers = np.array([p.speaker for p in self.phonemes], dtype=np.int64)
            self._cache = (len(self.phonemes), starts, ends, ids, speakers)
        return self._cache[1:]

    def sample(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Phoneme id and speaker id at each query time in seconds (any shape; int64 arrays of that shape).

        Outside every phoneme (before the start, in a hole, past the end) the phoneme id is silence (0) and the
        speaker is that of the previous phoneme, or 0 before the first.
        """
        times = np.asarray(times_s, dtype=np.float64)
        starts, ends, ids, speakers = self._arrays()
        if starts.size == 0:
            return np.zeros(times.shape, np.int64), np.zeros(times.shape, np.int64)
        index = np.searchsorted(starts, times, side="right") - 1  # last phoneme starting at or before t
        has_prev = index >= 0
        safe = np.maximum(index, 0)
        inside = has_prev & (times < ends[safe])
        return np.where(inside, ids[safe], SILENCE_ID), np.where(has_prev, speakers[safe], 0)


@dataclass
class _Unit:
    """A span of raw text [start, end) decided by the unit rule; words are raw spans of its spoken words."""

    start: int
    end: int
    words: list[tuple[int, int]]
    speaker: int
    gap: str  # "word" | "clause" | "sentence": the pause that follows it
    next_speaker: int


class IncrementalFrontend:
    """Turns text arriving in arbitrary pieces into a phoneme timeline, one unit at a time.

    A unit ends at . , ; : ! ? or newline, at a speaker tag ``[S0]``..``[S7]``, or after ``max_unit_words``
    complete words (``first_unit_words`` for the first spoken unit: a short first unit lets speech start sooner
    when text streams in word by word, at the price of one more break in the phrasing); a word is complete once
    a whitespace/punctuation character (or a tag) follows it, or on ``flush()``. Pushing a text in any split
    gives exactly the timeline of pushing it whole and flushing.
    Gaps (seconds of silence after a unit): ``word_gap_s`` after a unit cut by the word limit,
    ``clause_gap_s`` after , ; :, ``sentence_gap_s`` after . ! ? newline, a speaker tag or a flush.
    ``keep_audio=True`` keeps each unit's espeak audio for ``render_audio()`` (88 kB per second of speech).
    """

    def __init__(
        self,
        voice: str = "en-us",
        rate_wpm: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        max_unit_words: int = 4,
        first_unit_words: int | None = None,
        word_gap_s: float = 0.08,
        clause_gap_s: float = 0.25,
        sentence_gap_s: float = 0.45,
        keep_audio: bool = False,
    ) -> None:
        first_unit_words = max_unit_words if first_unit_words is None else first_unit_words
        for name, words in (("max_unit_words", max_unit_words), ("first_unit_words", first_unit_words)):
            if not isinstance(words, int) or words < 1:
                raise SonateInputError(f"{name} must be an int >= 1, got {words!r}")
        gaps = {"word": word_gap_s, "clause": clause_gap_s, "sentence": sentence_gap_s}
        for name, gap in gaps.items():
            if not isinstance(gap, int | float) or not 0.0 <= gap < 60.0:
                raise SonateInputError(f"{name}_gap_s must be a number of seconds in [0, 60), got {gap!r}")
        self.voice, self.rate_wpm, self.pitch, self.pitch_range = voice, rate_wpm, pitch, pitch_range
        self.max_unit_words = max_unit_words
        self.first_unit_words = first_unit_words
        self.keep_audio = keep_audio
        # checks voice and parameters once, and learns the sample rate
        self.sample_rate: int = self._synthesize("").sample_rate  # Hz
        self._gap_samples = {name: round(gap * self.sample_rate) for name, gap in gaps.items()}
        self.timeline = PhonemeTimeline()
        self._text = ""
        self._pos = 0  # raw text before this index is committed
        self._speaker = 0  # speaker of the text at _pos
        self._cursor = 0  # timeline end, in samples at sample_rate
        self._audio: list[tuple[int, np.ndarray]] = []  # (start sample, trimmed unit audio)

    @property
    def text(self) -> str:
        """All text pushed so far (raw, speaker tags included); phoneme text offsets index it."""
        return self._text

    @property
    def committed_chars(self) -> int:
        """Number of leading characters of ``text`` already turned into phonemes (or skipped)."""
        return self._pos

    def push(self, piece: str) -> list[TimedPhoneme]:
        """Append a piece of text; return the phonemes of the units it completed (already on ``timeline``)."""
        if not isinstance(piece, str):
            raise SonateInputError(f"text pieces must be str, got {type(piece).__name__}")
        if "\0" in piece:
            raise SonateInputError("text must not contain NUL characters")
        tail_start = max(0, len(self._text) - 3)  # a tag may straddle pieces
        for tag in _TAG_RE.finditer(self._text[tail_start:] + piece):
            if int(tag[1]) >= MAX_SPEAKERS:
                raise SonateInputError(f"speaker tag {tag[0]} out of range: use [S0]..[S{MAX_SPEAKERS - 1}]")
        self._text += piece
        return self._advance(final=False)

    def flush(self) -> list[TimedPhoneme]:
        """Commit everything pushed so far (the last word counts as complete); return the new phonemes."""
        return self._advance(final=True)

    def render_audio(self) -> np.ndarray:
        """espeak's audio of the committed units at their timeline positions, silence in the gaps.

        float32 mono in [-1, 1] at ``sample_rate``; exactly ``timeline.duration_s * sample_rate`` samples.
        """
        if not self.keep_audio:
            raise SonateInputError("construct IncrementalFrontend(keep_audio=True) to render audio")
        audio = np.zeros(self._cursor, dtype=np.float32)
        for start, samples in self._audio:
            audio[start : start + samples.size] = samples
        return audio

    # --- internals -------------------------------------------------------------------------------------------
    def _synthesize(self, text: str) -> Synthesis:
        return synthesize(
            text, voice=self.voice, rate_wpm=self.rate_wpm, pitch=self.pitch, pitch_range=self.pitch_range
        )

    def _advance(self, final: bool) -> list[TimedPhoneme]:
        committed: list[TimedPhoneme] = []
        while (unit := self._next_unit(final)) is not None:
            committed += self._commit(unit)
        return committed

    def _next_unit(self, final: bool) -> _Unit | None:
        """The unit starting at ``_pos`` if the text decides it, else None (wait for more text or a flush)."""
        text, start, speaker = self._text, self._pos, self._speaker
        words: list[tuple[int, int]] = []
        word_start = -1

        def close_word(end: int) -> None:
            nonlocal word_start
            if word_start >= 0:
                alnum = [j for j in range(word_start, end) if text[j].isalnum()]
                if alnum:  # only words with a letter or digit are spoken and counted
                    words.append((alnum[0], alnum[-1] + 1))
                word_start = -1

        i = start
        while i < len(text):
            char = text[i]
            if char == "[":
                tag = _TAG_RE.match(text, i)
                if tag:
                    close_word(i)
                    if words:  # the tag ends this unit and is read again as the next one
                        return _Unit(start, i, words, speaker, "sentence", speaker)
                    return _Unit(start, tag.end(), [], speaker, "sentence", int(tag[1]))
                if not final and _could_become_tag(text[i:]):
                    return None
            elif char in _CLAUSE_END or char in _SENTENCE_END:
                boundary = _is_boundary(text, i, word_start, final)
                if boundary is None:
                    return None
                if boundary:
                    close_word(i)
                    return _Unit(start, i + 1, words, speaker, "clause" if char in _CLAUSE_END else "sentence", speaker)
            elif char.isspace():
                close_word(i)
                if len(words) >= (self.first_unit_words if self._cursor == 0 else self.max_unit_words):
                    return _Unit(start, i + 1, words, speaker, "word", speaker)
                i += 1
                continue
            if word_start < 0:
                word_start = i
            i += 1
        if not final or start == len(text):
            return None
        close_word(len(text))
        return _Unit(start, len(text), words, speaker, "sentence", speaker)

    def _commit(self, unit: _Unit) -> list[TimedPhoneme]:
        """Synthesize a unit, trim it to its phonemes and append it and its gap to the timeline."""
        self._pos, self._speaker = unit.end, unit.next_speaker
        if not unit.words:
            return []
        synthesis = self._synthesize(self._text[unit.start : unit.end])
        sr = self.sample_rate
        spoken = [p for p in synthesis.phonemes if not p.is_pause]
        if not spoken:
            return []
        first = round(spoken[0].start_s * sr)  # trim: audio before the first / after the last phoneme
        last = round(spoken[-1].end_s * sr)
        offset = self._cursor - first  # unit sample -> timeline sample
        word_starts = [w[0] for w in unit.words]
        new: list[TimedPhoneme] = []
        for p in synthesis.phonemes:
            begin = max(round(p.start_s * sr), first)
            end = min(round(p.end_s * sr), last)
            if end <= begin:
                continue  # outside the trimmed span, or zero length
            if p.is_pause:
                if new and new[-1].symbol == PAUSE_SYMBOL:
                    new[-1].end_s = (end + offset) / sr
                    continue
                new.append(TimedPhoneme(PAUSE_SYMBOL, (begin + offset) / sr, (end + offset) / sr, unit.speaker))
                continue
            text_start, text_end = _word_span(unit, word_starts, unit.start + max(p.text_start, 0))
            new.append(
                TimedPhoneme(p.symbol, (begin + offset) / sr, (end + offset) / sr, unit.speaker, text_start, text_end)
            )
        if self.keep_audio:
            self._audio.append((self._cursor, synthesis.samples[first:last].copy()))
        self._cursor += last - first
        gap = self._gap_samples[unit.gap]
        if gap > 0:
            new.append(TimedPhoneme(PAUSE_SYMBOL, self._cursor / sr, (self._cursor + gap) / sr, unit.speaker))
            self._cursor += gap
        self.timeline.extend(new, self._cursor / sr)
        return new


def _could_become_tag(rest: str) -> bool:
    """True if ``rest`` (text from a "[" to the end) is a proper prefix of a speaker tag like "[S3]"."""
    return len(rest) < 4 and re.fullmatch(r"\[(?:S[0-9]?)?", rest) is not None


def _is_boundary(text: str, i: int, word_start: int, final: bool) -> bool | None:
    """Whether the punctuation at ``i`` ends a unit; None if the next character, not yet here, decides."""
    char = text[i]
    if char in ".,:" and i > 0 and text[i - 1].isdigit():  # 3.14, 1,000, 10:30 are one word
        if i + 1 == len(text):
            return True if final else None
        return not text[i + 1].isdigit()
    return not (char == "." and word_start >= 0 and _ABBREVIATION_RE.search(text[word_start:i]))


def _word_span(unit: _Unit, word_starts: list[int], position: int) -> tuple[int, int]:
    """Raw span of the unit's word that contains ``position`` (espeak's word start), else the next word."""
    index = int(np.searchsorted(word_starts, position, side="right")) - 1
    if index < 0 or (position >= unit.words[index][1] and index + 1 < len(unit.words)):
        index += 1
    return unit.words[index]
