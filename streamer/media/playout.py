"""The playout buffer: a session's generated media released on one clock shared by every transport.

The clock ticks every `TICK` seconds (20 ms, one audio packet) from the moment the first chunk is ready. At
each tick the media position advances by one tick if the media is there; if not, the tick is a *hold*: the
position stays, audio plays silence and video repeats its frame, so sound and picture pause together and never
drift apart. Ticks are processed lazily from a monotonic clock, so every viewer of a session — however many,
whenever they join — sees the same media at the same tick.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sonate.streamer.media.chunk import AVChunk

TICK = 0.020  # seconds of media per tick: one 20 ms audio packet
HISTORY_TICKS = 250  # ticks remembered for late readers (5 s)


@dataclass
class TickMedia:
    """What plays at one tick: `position` is the media time its audio starts at, in ticks, or None for a hold;
    `shown` is the media tick whose video frame is on screen (the last one played, during a hold)."""

    tick: int
    position: int | None
    shown: int | None


class Playout:
    """Buffers chunks and maps the session clock's ticks onto media time, holding on underruns."""

    def __init__(
        self, sample_rate: int, fps: int, width: int, height: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        ticks_per_frame = 1 / (fps * TICK)
        if sample_rate * TICK != int(sample_rate * TICK) or ticks_per_frame != int(ticks_per_frame):
            raise ValueError(f"{sample_rate} Hz and {fps} fps must both divide into {TICK * 1000:g} ms ticks")
        self.sample_rate, self.fps, self.width, self.height = sample_rate, fps, width, height
        self.tick_samples = int(sample_rate * TICK)
        self.ticks_per_frame = int(ticks_per_frame)
        self.clock = clock
        self.chunks: deque[AVChunk] = deque()
        self.start_time: float | None = None  # monotonic seconds of tick 0
        self.ticks: deque[TickMedia] = deque(maxlen=HISTORY_TICKS)
        self.position = 0  # media ticks played through the last processed tick
        self.holds = 0  # ticks held for want of media
        self.underruns = 0  # hold episodes while media was expected
        self.expecting = True  # False while the session is paused on purpose: holds then are not underruns
        self.started = asyncio.Event()
        self._black = np.zeros((height, width, 3), dtype=np.uint8)

    @property
    def buffered_until(self) -> int:
        """Media time, in ticks, up to which chunks have arrived."""
        return _ticks(self.chunks[-1].end) if self.chunks else self.position

    @property
    def position_seconds(self) -> float:
        """Media seconds played so far."""
        return self.position * TICK

    def push(self, chunk: AVChunk) -> None:
        """Append the next chunk; the first one starts the clock. A chunk that starts before the buffered media
        ends (it remakes media `truncate` cut away) contributes its part from that end on."""
        if self.chunks and chunk.pts + 1e-9 < self.chunks[-1].end < chunk.end - 1e-9:
            chunk = chunk.part(self.chunks[-1].end, chunk.end)
        if self.chunks and abs(chunk.pts - self.chunks[-1].end) > 1e-9:
            raise ValueError(f"chunk at {chunk.pts:.3f} s does not follow media ending at {self.chunks[-1].end:.3f} s")
        self.chunks.append(chunk)
        if self.start_time is None:
            self.start_time = self.clock()
            self.started.set()

    def tick_at(self, now: float) -> int:
        """The tick playing at monotonic time `now` (-1 before the clock starts)."""
        if self.start_time is None:
            return -1
        return int((now - self.start_time) / TICK + 1e-9)

    def advance(self, now: float | None = None) -> None:
        """Process every tick up to `now`: advance through the media, or hold where it is missing."""
        last = self.tick_at(self.clock() if now is None else now)
        next_tick = self.ticks[-1].tick + 1 if self.ticks else 0
        for tick in range(next_tick, last + 1):
            held_before = bool(self.ticks) and self.ticks[-1].position is None
            # a hold lasts whole video frames, so frames keep starting on the same ticks as before it
            frame_aligned = (tick - self.position) % self.ticks_per_frame == 0
            if self.position < self.buffered_until and (frame_aligned or not held_before):
                self.ticks.append(TickMedia(tick, self.position, self.position))
                self.position += 1
            else:
                shown = self.ticks[-1].shown if self.ticks else None
                self.ticks.append(TickMedia(tick, None, shown))
                self.holds += 1
                if self.expecting and not held_before:
                    self.underruns += 1
        self._forget_played()

    def media_at(self, tick: int) -> TickMedia:
        """What plays at `tick` (processing ticks up to it first); ticks older than the history are holds."""
        self.advance(self.start_time + (tick + 0.5) * TICK if self.start_time is not None else None)
        if not self.ticks or tick < self.ticks[0].tick or tick > self.ticks[-1].tick:
            return TickMedia(tick, None, None)
        return self.ticks[tick - self.ticks[0].tick]

    def audio(self, tick: int) -> np.ndarray:
        """The tick's audio: float32 [tick_samples] at the model rate; silence on a hold."""
        media = self.media_at(tick)
        if media.position is None:
            return np.zeros(self.tick_samples, dtype=np.float32)
        chunk = self._chunk_at(media.position)
        start = (media.position - _ticks(chunk.pts)) * self.tick_samples
        return chunk.audio[start : start + self.tick_samples]

    def frame(self, tick: int) -> np.ndarray:
        """The video frame showing at `tick`: uint8 [H, W, 3]; the last frame played again on a hold."""
        media = self.media_at(tick)
        if media.shown is None:
            return self._black
        chunk = self._chunk_at(media.shown)
        return chunk.frames[(media.shown - _ticks(chunk.pts)) // self.ticks_per_frame]

    def playing_chunk(self) -> AVChunk | None:
        """The chunk whose media is playing now (None before the start or when nothing is buffered)."""
        self.advance()
        return self._chunk_at(max(self.position - 1, 0)) if self.chunks else None

    def drop_unplayed(self) -> float:
        """Forget every chunk after the one playing now; returns the media time (s) where new media must start."""
        playing = self.playing_chunk()
        keep_until = playing.end if playing is not None else self.position_seconds
        self.truncate(keep_until)
        return keep_until

    def truncate(self, seconds: float) -> None:
        """Forget the buffered media from `seconds` (a video frame boundary not yet played) on; the chunk
        holding that moment keeps its earlier part, and the next chunk pushed continues from there."""
        self.advance()
        cut = _ticks(seconds)
        if cut < self.position:
            raise ValueError(f"media at {seconds:.3f} s has already played")
        while self.chunks and _ticks(self.chunks[-1].pts) >= cut:
            self.chunks.pop()
        if self.chunks and _ticks(self.chunks[-1].end) > cut:
            last = self.chunks.pop()
            self.chunks.append(last.part(last.pts, seconds))

    def _chunk_at(self, position: int) -> AVChunk:
        for chunk in self.chunks:
            if _ticks(chunk.pts) <= position < _ticks(chunk.end):
                return chunk
        raise LookupError(f"no buffered chunk holds media tick {position}")

    def _forget_played(self) -> None:
        """Drop chunks that ended before the oldest remembered tick."""
        oldest = next((t.shown for t in self.ticks if t.shown is not None), self.position)
        while len(self.chunks) > 1 and _ticks(self.chunks[0].end) <= oldest:
            self.chunks.popleft()


def _ticks(seconds: float) -> int:
    """Seconds of media → whole ticks."""
    return round(seconds / TICK)
