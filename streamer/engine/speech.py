"""A session's speech track: text pushed in pieces, placed on the session's media clock as timed phonemes.

Text goes through the incremental frontend of the current *utterance*, whose timeline starts at the utterance's
media offset. An utterance continues while it is still ahead of generation; text that arrives after generation
has passed its end starts a new utterance at the generation front, so already-generated media is never
contradicted. An interruption cuts every utterance at the interruption time and drops the text not yet spoken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sonate.models.errors import SonateInputError
from sonate.models.frontend import IncrementalFrontend, PhonemeTimeline
from sonate.streamer.protocol import MAX_PIECE_CHARS

MAX_PENDING_CHARS = 16384  # text accepted but not yet spoken
FEED_CHARS = 256  # text turned into phonemes per scheduler tick (~15 ms of G2P at most)


@dataclass
class Utterance:
    """Text spoken continuously: its frontend's timeline 0 sits at media time `offset_s`; session text offsets
    of its characters start at `text_base`; nothing of it plays at or after `cut_s`.

    Accepted text waits in `unfed` until `feed` hands it to the frontend a bounded amount at a time, so a long
    piece never holds the event loop in G2P for long."""

    offset_s: float
    text_base: int
    frontend: IncrementalFrontend
    cut_s: float = math.inf
    unfed: str = ""
    flush_requested: bool = False
    flushed: bool = False

    @property
    def timeline(self) -> PhonemeTimeline:
        return self.frontend.timeline

    @property
    def end_s(self) -> float:
        """Media time where the next unit of this utterance would start (its committed phonemes end before)."""
        return min(self.offset_s + self.timeline.duration_s, self.cut_s)

    @property
    def unphonemized(self) -> str:
        """Text accepted but not yet phonemes: what the frontend holds back, then what it has not been fed."""
        return self.frontend.text[self.frontend.committed_chars :] + self.unfed

    @property
    def waiting_chars(self) -> int:
        """Characters accepted but not yet phonemes (none after a cut: it dropped them)."""
        return len(self.unphonemized) if self.cut_s == math.inf else 0

    @property
    def pending(self) -> bool:
        """Whether text was pushed that is not yet phonemes (a word or unit still arriving)."""
        return self.cut_s == math.inf and bool(self.unphonemized.strip())

    @property
    def open(self) -> bool:
        """Whether more text may still extend it: neither flushed nor cut."""
        return self.cut_s == math.inf and not self.flushed

    def feed(self, max_chars: int) -> None:
        """Hand up to `max_chars` of the waiting text to the frontend, and the flush once all of it is in."""
        if self.cut_s != math.inf:
            return
        piece, self.unfed = self.unfed[:max_chars], self.unfed[max_chars:]
        if piece:
            self.frontend.push(piece)
        if self.flush_requested and not self.unfed:
            self.frontend.flush()
            self.flush_requested = False
            self.flushed = True

    @property
    def interrupted(self) -> bool:
        """Whether a cut dropped some of its speech or text."""
        if self.cut_s == math.inf:
            return False
        spoken = [p for p in self.timeline.phonemes if not p.is_pause]
        speech_end = self.offset_s + spoken[-1].end_s if spoken else -math.inf
        return bool(self.unphonemized.strip()) or self.cut_s < speech_end

    @property
    def speech_span(self) -> tuple[float, float] | None:
        """Media times (s) of its first phoneme start and last phoneme end, pauses excluded; None if silent."""
        spoken = [p for p in self.timeline.phonemes if not p.is_pause and self.offset_s + p.start_s < self.cut_s]
        if not spoken:
            return None
        return self.offset_s + spoken[0].start_s, min(self.offset_s + spoken[-1].end_s, self.cut_s)


@dataclass
class SpeechTrack:
    """Every utterance of a session, and the session's whole accepted text. `first_unit_words`: the frontend's
    first unit of each utterance ends after this many words (None: its usual unit length)."""

    voice: str = "en-us"
    first_unit_words: int | None = None
    text: str = ""
    utterances: list[Utterance] = field(default_factory=list)

    @property
    def current(self) -> Utterance | None:
        return self.utterances[-1] if self.utterances else None

    @property
    def pending(self) -> bool:
        """Whether some accepted text is still waiting to become phonemes."""
        return self.current is not None and self.current.pending

    @property
    def unfed(self) -> bool:
        """Whether accepted text has not yet reached the frontend (`feed` will take it)."""
        return self.current is not None and self.current.cut_s == math.inf and bool(self.current.unfed)

    def push(self, piece: str, generation_front_s: float) -> tuple[int, int]:
        """Accept a piece of text; returns its [start, end) offsets in the session text.

        `generation_front_s` is the media time up to which chunks have been committed: a new utterance
        starts there if the current one has already been generated past its end.
        """
        if not isinstance(piece, str):
            raise SonateInputError("text must be a string")
        if len(piece) > MAX_PIECE_CHARS:
            raise SonateInputError(f"a text piece may hold at most {MAX_PIECE_CHARS} characters, got {len(piece)}")
        current = self.current
        waiting = current.waiting_chars if current else 0
        if waiting + len(piece) > MAX_PENDING_CHARS:
            raise SonateInputError(f"more than {MAX_PENDING_CHARS} characters of text are waiting; send less at once")
        if current is None or current.cut_s != math.inf or (not current.pending and current.end_s < generation_front_s):
            frontend = IncrementalFrontend(voice=self.voice, first_unit_words=self.first_unit_words)
            current = Utterance(generation_front_s, len(self.text), frontend)
            self.utterances.append(current)
        start = len(self.text)
        current.unfed += piece
        self.text += piece
        return start, len(self.text)

    def flush(self) -> None:
        """Commit the text still waiting (a last word without a following space, say), once it is fed."""
        if self.current is not None and self.current.cut_s == math.inf:
            self.current.flush_requested = True

    def feed(self, max_chars: int = FEED_CHARS) -> None:
        """Turn up to `max_chars` more of the waiting text into phonemes (G2P runs here)."""
        if self.current is not None:
            self.current.feed(max_chars)

    def final_until(self) -> float:
        """Media time (s) up to which the phonemes can no longer change: the end of the current utterance
        while more text may extend it, else forever."""
        current = self.current
        return current.end_s if current is not None and (current.pending or current.open) else math.inf

    def sample(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Phoneme and speaker ids at media times `times_s` (silence outside every utterance)."""
        ids = np.zeros(times_s.shape, dtype=np.int64)
        speakers = np.zeros(times_s.shape, dtype=np.int64)
        for utterance in self.utterances:
            inside = (times_s >= utterance.offset_s) & (times_s < utterance.end_s)
            if inside.any():
                u_ids, u_speakers = utterance.timeline.sample(times_s[inside] - utterance.offset_s)
                ids[inside], speakers[inside] = u_ids, u_speakers
        return ids, speakers

    def text_span(self, start_s: float, end_s: float) -> tuple[int, int]:
        """Session text offsets [start, end) of the words spoken during media [start_s, end_s); (-1, -1) if none."""
        starts, ends = [], []
        for u in self.utterances:
            for p in u.timeline.phonemes:
                at = u.offset_s + p.start_s
                if p.text_start >= 0 and at < min(end_s, u.cut_s) and min(u.offset_s + p.end_s, u.cut_s) > start_s:
                    starts.append(u.text_base + p.text_start)
                    ends.append(u.text_base + p.text_end)
        return (min(starts), max(ends)) if starts else (-1, -1)

    def spoken_until(self, media_s: float) -> int:
        """Session text offset up to which words have started playing by media time `media_s`."""
        return max(
            (
                u.text_base + p.text_end
                for u in self.utterances
                for p in u.timeline.phonemes
                if p.text_start >= 0 and u.offset_s + p.start_s < min(media_s, u.cut_s)
            ),
            default=0,
        )

    def cut(self, at_s: float) -> None:
        """Interrupt at media time `at_s`: nothing plays from there on, and text still waiting is dropped."""
        for utterance in self.utterances:
            utterance.cut_s = min(utterance.cut_s, max(at_s, utterance.offset_s))

    def forget_before(self, media_s: float) -> None:
        """Drop utterances that ended before `media_s` (keeps memory bounded in a long session)."""
        self.utterances = [u for u in self.utterances if u.end_s >= media_s or u is self.current]
