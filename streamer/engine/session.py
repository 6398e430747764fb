"""A live session: text in, synchronized audio-video chunks out, with barge-in.

The session is the embedding surface for virtual-agent apps; the engine decides when its next chunk is made
and batches it with other sessions. All of its methods run on the engine's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sonate.models.errors import SonateInputError
from sonate.streamer.engine.speech import SpeechTrack
from sonate.streamer.engine.timing import ChunkTiming, FirstAudio, first_audio
from sonate.streamer.media.chunk import AVChunk
from sonate.streamer.media.playout import TICK, Playout
from sonate.streamer.protocol import error_event

if TYPE_CHECKING:
    from sonate.streamer.engine.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Interruption:
    """What an interruption did: text up to `played_until` was spoken, text [played_until, text_end) was not;
    new media continues at `media_time` (s)."""

    played_until: int
    text_end: int
    media_time: float


class Session:
    """One avatar speaking: `push_text` in pieces, `flush`, `interrupt`, `update`, and `chunks()` out."""

    def __init__(self, engine: Engine, session_id: str, slot: int, voice: str = "en-us") -> None:
        cfg = engine.cfg
        self.engine = engine
        self.id = session_id
        self.slot = slot
        self.speech = SpeechTrack(voice=voice, first_unit_words=engine.config.first_unit_words)
        self.playout = Playout(cfg.sample_rate, cfg.video_fps, cfg.video_width, cfg.video_height)
        self.next_chunk = 0  # index of the chunk the engine makes next for this session
        self.epoch = 0  # bumped by each interruption; chunks made for an older epoch are dropped
        self.viewers = 0
        self.closed = False
        self.close_reason: str | None = None  # why it closed (`closed`, `deleted`, `engine_failed`, …); None while open
        self.last_text_at = -math.inf  # monotonic time of the last text piece
        self.references: tuple[str, Any, Any] = ("", None, None)  # instruction, voice, avatar as opened
        self._subscribers: list[asyncio.Queue[Any]] = []
        self._event_queues: list[asyncio.Queue[dict]] = []
        self._announced: set[tuple[int, str]] = set()  # (utterance text base, event) already sent
        self._text_first_pushed: dict[int, float] = {}  # utterance text base → monotonic time of its first text
        # for the first-audio breakdown (`sonate.streamer.engine.timing`), per utterance text base:
        self._text_marks: dict[int, list[tuple[int, float]]] = {}  # (text end in the utterance, time) per push
        self._text_ready: dict[int, tuple[float, float]] = {}  # (when its first chunk's text was in, G2P seconds)
        self._timings: dict[int, ChunkTiming] = {}  # chunk index → how the chunk now buffered was made

    # --- the API ---------------------------------------------------------------------------------------------

    def push_text(self, piece: str) -> tuple[int, int]:
        """Accept a piece of text (a word, an LLM token, a sentence); returns its [start, end) text offsets."""
        self._check_open()
        span = self.speech.push(piece, self.generation_front)
        self.last_text_at = time.monotonic()
        self._text_first_pushed.setdefault(self.speech.current.text_base, self.last_text_at)
        self._mark_text(self.last_text_at)
        self.engine.wake()
        return span

    def flush(self) -> None:
        """Speak the text still waiting now (the last word needs no following space)."""
        self._check_open()
        self.speech.flush()
        self._mark_text(time.monotonic())
        self.engine.wake()

    def interrupt(self) -> Interruption:
        """Barge-in: drop media not yet playing, clear waiting text, roll the model back to the playing chunk."""
        self._check_open()
        media_time = self._rewind()
        self.speech.cut(media_time)
        result = Interruption(self.speech.spoken_until(media_time), len(self.speech.text), media_time)
        self._emit({"type": "input.interrupted", "played_until": result.played_until, "text_end": result.text_end,
                    "media_time": media_time})  # fmt: skip
        return result

    async def update(self, *, instruction: str | None = None, voice: Any = None, avatar: Any = None) -> None:
        """Change the instruction, reference voice or avatar; takes effect from the next chunk."""
        self._check_open()
        await self.engine.update_conditioning(self, instruction=instruction, voice=voice, avatar=avatar)

    @property
    def text(self) -> str:
        """Every piece of text accepted so far, in order (offsets index into it)."""
        return self.speech.text

    @property
    def playback_position(self) -> int:
        """Session text offset up to which words have started playing (what a voice agent keeps on barge-in)."""
        self.playout.advance()
        return self.speech.spoken_until(self.playout.position_seconds)

    async def chunks(self) -> AsyncIterator[AVChunk]:
        """Every chunk as it is made, in order, until the session closes. Counts as a viewer while iterated."""
        queue: asyncio.Queue[AVChunk | None] = asyncio.Queue()
        self._subscribers.append(queue)
        self.add_viewer()
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            self._subscribers.remove(queue)
            self.remove_viewer()

    def events(self) -> AsyncIterator[dict]:
        """Playback events (`speech.started`, `speech.done`, `input.interrupted`, and `error` when serving the
        session failed) from this call on, until the session closes. The subscription starts when this is
        called, not when iteration begins."""
        queue: asyncio.Queue[dict | None] = asyncio.Queue()
        self._event_queues.append(queue)
        return self._drain_events(queue)

    async def _drain_events(self, queue: asyncio.Queue[dict | None]) -> AsyncIterator[dict]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._event_queues.remove(queue)

    def add_viewer(self) -> None:
        """Somebody watches: keep generating idle chunks even when no text waits."""
        self.viewers += 1
        self.engine.wake()

    def remove_viewer(self) -> None:
        self.viewers = max(0, self.viewers - 1)

    async def close(self, reason: str = "closed") -> None:
        """End the session and free its slot, saying why (`close_reason`); safe to call twice."""
        await self.engine.close_session(self, reason)

    async def fail(self, code: str, message: str) -> None:
        """End the session because serving it failed: its event listeners get an `error` event with `code` and
        `message`, then it closes with `code` as its close reason. Does nothing once it is closed."""
        if self.closed:
            return
        log.error("session %s fails (%s): %s", self.id, code, message)
        self._emit(error_event(code, message))
        await self.close(code)

    def _rewind(self, media_s: float | None = None) -> float:
        """Drop the buffered media from `media_s` on (default: every chunk after the one playing) and roll the
        model back to the chunk holding that moment; returns it (s), where new media starts."""
        if media_s is None:
            media_s = self.playout.drop_unplayed()
        else:
            self.playout.truncate(media_s)
        self.epoch += 1  # chunks in flight for the old timeline are dropped on delivery
        self.next_chunk = math.floor(media_s / self.engine.cfg.chunk_seconds + 1e-6)
        self.engine.request_rollback(self, self.next_chunk)
        return media_s

    def _start_speech_early(self) -> None:
        """Speech after silence: once its first chunk's phonemes are final, start it at the first video frame a
        chunk can surely be made by — inside the idle chunk playing now when there is time — instead of after
        the idle media made ahead. The idle media from that frame on is cut, and the cache rolls back to remake
        the chunk holding it with the speech in it; playout splices the remade chunk in at that frame. A frame
        too close to its chunk's end moves to the next chunk, so the chunk after the remade one is in time too."""
        utterance = self.speech.current
        if utterance is None or self.playout.start_time is None or utterance.offset_s != self.generation_front:
            return  # no speech, not playing yet, or the speech has begun
        cfg = self.engine.cfg
        if self.speech.final_until() < utterance.offset_s + cfg.chunk_seconds:
            return  # its first chunk is not final yet: the idle media covers the wait
        self.playout.advance()
        bound = self.engine.batch_latency_bound()
        frame_s = 1 / cfg.video_fps
        start = math.ceil((self.playout.position_seconds + bound) / frame_s - 1e-6) * frame_s
        chunk_end = (math.floor(start / cfg.chunk_seconds + 1e-9) + 1) * cfg.chunk_seconds
        if chunk_end - start < bound:  # the chunk after it could not be made in time: start at that chunk
            start = chunk_end
        if start >= utterance.offset_s - 1e-9:
            return  # no earlier than it is
        utterance.offset_s = self._rewind(start)

    # --- for the engine ----------------------------------------------------------------------------------------

    @property
    def generation_front(self) -> float:
        """Media time (s) up to which chunks have been committed to the model."""
        return self.next_chunk * self.engine.cfg.chunk_seconds

    def chunk_slack(self, now: float) -> int | None:
        """Whether the next chunk may be made now, in chunks of lead left: ≥ 0 when it is due (within the lead),
        -1 when it is one chunk early (it may fill a batch that runs anyway), None when it must wait (its phonemes
        not final, nobody to see it, or so far ahead that an interruption could not roll it back)."""
        config, cfg = self.engine.config, self.engine.cfg
        self._feed(now)
        self._start_speech_early()  # (it may move next_chunk back; its chunk is then due in this very pass)
        chunk_end = (self.next_chunk + 1) * cfg.chunk_seconds
        current = self.speech.current
        speaking = self.speech.pending or (current is not None and current.end_s > self.generation_front)
        lead = config.max_lead_chunks if speaking else config.idle_lead_chunks
        self.playout.advance(now)
        playing = int(self.playout.position_seconds / cfg.chunk_seconds + 1e-9)
        slack = playing + lead - self.next_chunk  # lead: chunks made beyond the one playing
        if slack < -1 or self.next_chunk >= playing + cfg.max_rollback_chunks:
            return None
        if self.speech.final_until() < chunk_end:
            if self.speech.unfed or now - self.last_text_at < config.lookahead_timeout_s:
                return None
            self.speech.flush()  # the rest of a word never came: speak what there is
            self._mark_text(now)
            self._feed(now)
        self.playout.expecting = speaking or self.viewers > 0
        return slack if speaking or self.viewers > 0 else None

    def _feed(self, now: float) -> None:
        """G2P for a bounded amount of the waiting text; notes when the current utterance's first chunk got all
        the text it needs, and how long this pass's G2P took."""
        started = time.monotonic()
        self.speech.feed()
        utterance = self.speech.current
        if utterance is None or utterance.text_base in self._text_ready:
            return
        if self.speech.final_until() < utterance.offset_s + self.engine.cfg.chunk_seconds:
            return
        committed = utterance.frontend.committed_chars
        marks = self._text_marks.get(utterance.text_base, [])
        ready = next((at for end, at in marks if end >= committed), marks[-1][1] if marks else now)
        self._text_ready[utterance.text_base] = (ready, time.monotonic() - started)

    def _mark_text(self, now: float) -> None:
        """Text of the current utterance arrived (or was flushed) up to its present end at `now`."""
        utterance = self.speech.current
        if utterance is not None and utterance.text_base not in self._text_ready:  # (later text is not needed)
            end = len(self.speech.text) - utterance.text_base
            self._text_marks.setdefault(utterance.text_base, []).append((end, now))

    def record_timing(self, timing: ChunkTiming, epoch: int) -> None:
        """How a chunk delivered for `epoch` was made (kept while it may still play)."""
        if epoch != self.epoch or self.closed:
            return
        self._timings[timing.chunk] = timing
        for old in [c for c in self._timings if c < timing.chunk - 2 * self.engine.cfg.max_rollback_chunks]:
            del self._timings[old]

    def _first_audio(self, text_base: int, media_s: float) -> FirstAudio | None:
        """The breakdown of the utterance at `text_base` whose first phoneme at media time `media_s` has begun
        to play (None when a part of it was not recorded)."""
        received = self._text_first_pushed.get(text_base)
        ready = self._text_ready.get(text_base)
        timing = self._timings.get(int(media_s / self.engine.cfg.chunk_seconds + 1e-9))
        tick = next((t.tick for t in self.playout.ticks if t.position == int(media_s / TICK + 1e-9)), None)
        if received is None or ready is None or timing is None or tick is None or self.playout.start_time is None:
            return None
        plays_at = self.playout.start_time + tick * TICK  # the tick's audio is sent whole when it begins
        return first_audio(self.id, text_base, media_s, received, *ready, timing, plays_at)

    def deliver(self, chunk: AVChunk, epoch: int) -> None:
        """A chunk made for this session: buffer it for playout and hand it to every subscriber."""
        if epoch != self.epoch or self.closed:
            return
        self.playout.push(chunk)
        for queue in self._subscribers:
            queue.put_nowait(chunk)

    def announce_playback(self) -> None:
        """Send `speech.started` / `speech.done` for utterances whose speech playback has reached."""
        if self.playout.start_time is None:
            return
        self.playout.advance()
        now_s = self.playout.position_seconds  # media played through the last tick
        for utterance in self.speech.utterances:
            span = utterance.speech_span
            if span is None:
                continue
            key = utterance.text_base
            text_end = utterance.text_base + len(utterance.frontend.text)
            if now_s > span[0] and (key, "started") not in self._announced:
                self._announced.add((key, "started"))
                ttfa = time.monotonic() - self._text_first_pushed.get(key, time.monotonic())
                self.engine.metrics.observe_ttfa(ttfa)
                event = {"type": "speech.started", "text_start": key, "media_time": span[0], "ttfa_ms": ttfa * 1e3}
                breakdown = self._first_audio(key, span[0])
                if breakdown is not None:
                    self.engine.metrics.observe_first_audio(breakdown)
                    event["spans_ms"] = {name: seconds * 1e3 for name, seconds in breakdown.spans.items()}
                self._emit(event)
            if utterance.interrupted:  # `input.interrupted` already told where it stopped
                self._announced.add((key, "done"))
            finished = not utterance.open and now_s >= span[1]
            if finished and (key, "started") in self._announced and (key, "done") not in self._announced:
                self._announced.add((key, "done"))
                self._emit({"type": "speech.done", "text_start": key, "text_end": text_end, "media_time": span[1]})
        live = {u.text_base for u in self.speech.utterances}
        for per_utterance in (self._text_first_pushed, self._text_marks, self._text_ready):
            for key in [k for k in per_utterance if k not in live]:
                del per_utterance[key]

    def finish(self, reason: str) -> None:
        """End every iterator of the session, closed for `reason` (called by the engine when it closes it)."""
        self.closed = True
        self.close_reason = reason
        for queue in (*self._subscribers, *self._event_queues):
            queue.put_nowait(None)

    def _emit(self, event: dict) -> None:
        event = {**event, "session_id": self.id}
        for queue in self._event_queues:
            queue.put_nowait(event)

    def _check_open(self) -> None:
        if self.closed:
            raise SonateInputError(f"session {self.id} is closed")
