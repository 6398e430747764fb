"""The playout clock: ticks, holds on underrun, interruption."""

from __future__ import annotations

import numpy as np
import pytest

from sonate.streamer.media.chunk import AVChunk
from sonate.streamer.media.playout import TICK, Playout

CHUNK_S = 0.32


class FakeClock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chunk(index: int) -> AVChunk:
    """A chunk whose audio samples and frame pixels hold its index, so the test can see what plays."""
    audio = np.full(int(CHUNK_S * 16000), index, dtype=np.float32)
    frames = np.full((8, 4, 4, 3), index, dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(8)  # the frame number inside the chunk
    return AVChunk(index, index * CHUNK_S, audio, frames, 16000, 25)


def test_media_plays_at_its_ticks_and_holds_together() -> None:
    clock = FakeClock()
    playout = Playout(16000, 25, 4, 4, clock=clock)
    assert playout.tick_at(clock.now) == -1
    playout.push(chunk(0))
    assert playout.audio(0)[0] == 0 and playout.frame(3)[0, 0, 0] == 1  # tick 3 is in frame 1 (2 ticks a frame)
    clock.now += 0.5  # past the end of chunk 0 (16 ticks): holds begin
    playout.advance()
    assert playout.position == 16 and playout.underruns == 1 and playout.holds == 25 - 16 + 1
    held_frame = playout.frame(20)
    assert held_frame[0, 0, 0] == 7 and held_frame[1, 1, 0] == 0  # the last frame of chunk 0 stays up
    assert not playout.audio(20).any()  # silence
    playout.push(chunk(1))  # arrives at tick 25, an odd tick: play resumes on the next frame boundary
    clock.now += 0.1
    playout.advance()
    first_played = next(t for t in playout.ticks if t.position == 16)
    assert (first_played.tick - 16) % 2 == 0  # frames still start on even tick offsets
    assert playout.audio(first_played.tick)[0] == 1 and playout.frame(first_played.tick)[0, 0, 0] == 0
    assert playout.underruns == 1  # one episode


def test_chunks_must_follow_each_other() -> None:
    playout = Playout(16000, 25, 4, 4, clock=FakeClock())
    playout.push(chunk(0))
    with pytest.raises(ValueError, match="does not follow"):
        playout.push(chunk(2))


def test_drop_unplayed_keeps_the_playing_chunk() -> None:
    clock = FakeClock()
    playout = Playout(16000, 25, 4, 4, clock=clock)
    for i in range(4):
        playout.push(chunk(i))
    clock.now += CHUNK_S + 5 * TICK  # in chunk 1
    assert playout.playing_chunk().index == 1
    assert playout.drop_unplayed() == pytest.approx(2 * CHUNK_S)
    assert [c.index for c in playout.chunks] == [0, 1]
    playout.push(chunk(2))  # new media continues right after the playing chunk


def test_a_remade_chunk_replaces_the_cut_media_from_the_cut_on() -> None:
    """Speech taking the place of idle media: chunk 1 plays, the rest of it is cut at a frame boundary, and a
    remade chunk 1 plays from the cut, with no hold and no shift of the frame grid."""
    clock = FakeClock()
    playout = Playout(16000, 25, 4, 4, clock=clock)
    for i in range(3):
        playout.push(chunk(i))
    clock.now += CHUNK_S + 3 * TICK  # 3 ticks into chunk 1
    cut_s = CHUNK_S + 6 * TICK  # 3 frames into chunk 1
    with pytest.raises(ValueError, match="already played"):
        playout.truncate(CHUNK_S)
    playout.truncate(cut_s)
    assert playout.buffered_until == round(cut_s / TICK)
    remade = chunk(1)
    remade.audio[:] = 11
    remade.frames[..., 1] = 11
    playout.push(remade)
    with pytest.raises(ValueError, match="does not follow"):
        playout.push(chunk(1))  # only a chunk that reaches past the cut may overlap it
    clock.now += 0.2  # past the cut, still inside chunk 1
    playout.advance()
    assert playout.holds == 0
    cut_tick = round(cut_s / TICK)
    before, after = cut_tick - 1, cut_tick  # media ticks; the clock started at media 0, no holds
    assert playout.audio(before)[0] == 1 and playout.audio(after)[0] == 11
    assert playout.frame(before)[0, 0, 1] == 1 and playout.frame(after)[0, 0, 1] == 11
    assert playout.frame(after)[0, 0, 0] == 3  # frame 3 of the remade chunk: the grid did not move
    assert playout.buffered_until == round(2 * CHUNK_S / TICK)
    playout.push(chunk(2))
