"""The engine and its sessions, in real time with a small random model."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from sonate.models.checkpoint import random_model
from sonate.models.config import SonateConfig
from sonate.models.errors import SonateInputError
from sonate.streamer.engine.engine import Engine, EngineConfig, EngineFull
from sonate.streamer.engine.session import Session
from sonate.streamer.engine.timing import FIRST_AUDIO_SPANS
from sonate.streamer.media.chunk import AVChunk
from sonate.streamer.media.playout import TICK
from tests.conftest import small_config


def small_engine(**config: object) -> Engine:
    model = random_model(small_config(n_layers=1, max_rollback_chunks=4))
    return Engine(model, EngineConfig(**{"max_sessions": 2, **config}))


def silent_chunk(cfg: SonateConfig, index: int = 0) -> AVChunk:
    """Chunk `index` of a session's timeline: silence and black frames."""
    return AVChunk(index, index * cfg.chunk_seconds, np.zeros(cfg.chunk_audio_samples, np.float32),
                   np.zeros((cfg.chunk_video_frames, cfg.video_height, cfg.video_width, 3), np.uint8),
                   cfg.sample_rate, cfg.video_fps)  # fmt: skip


def watched_session(engine: Engine, session_id: str, slot: int, clock: Callable[[], float]) -> Session:
    """A session of a (not started) engine with one viewer and a playout clock the test moves."""
    session = Session(engine, session_id, slot)
    session.add_viewer()
    session.playout.clock = clock
    return session


async def collect(session: Session, chunks: list[AVChunk], events: list[dict]) -> list[asyncio.Task]:
    async def chunks_task() -> None:
        async for chunk in session.chunks():
            chunks.append(chunk)

    async def events_task() -> None:
        async for event in session.events():
            events.append(event)

    return [asyncio.create_task(chunks_task()), asyncio.create_task(events_task())]


async def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_text_is_spoken_in_order_and_reported() -> None:
    async with small_engine() as engine:
        session = await engine.open_session(seed=1)
        chunks, events = [], []
        tasks = await collect(session, chunks, events)
        text = "Hello there, how are you?"
        for word in text.split(" "):
            session.push_text(word + " ")
            await asyncio.sleep(0.03)
        await wait_for(lambda: any(e["type"] == "speech.done" for e in events))
        assert [e["type"] for e in events] == ["speech.started", "speech.done"]
        assert events[0]["text_start"] == 0 and events[1]["text_end"] == len(text) + 1
        spans = [(c.text_start, c.text_end) for c in chunks if c.text_start >= 0]
        assert spans[0][0] == 0 and max(end for _, end in spans) == len(text) - 1  # the "?" is not a word
        assert all(a[0] <= b[0] for a, b in itertools.pairwise(spans))  # never goes back in the text
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert session.playback_position == len(text) - 1
        for task in tasks:
            task.cancel()


async def test_interrupt_drops_unplayed_media_and_continues() -> None:
    async with small_engine() as engine:
        session = await engine.open_session(seed=2)
        chunks, events = [], []
        tasks = await collect(session, chunks, events)
        first = "One two three four five six seven eight nine ten eleven twelve."
        session.push_text(first)
        session.flush()
        await wait_for(lambda: session.playback_position > 0)
        made_before = session.next_chunk
        interruption = session.interrupt()
        assert 0 < interruption.played_until < len(first)  # mid-sentence: the rest is reported unspoken
        assert interruption.text_end == len(first)
        resumed_at = round(interruption.media_time / engine.cfg.chunk_seconds)
        assert resumed_at <= made_before  # rolled back to the chunk after the playing one
        second = "Sorry, go on."
        start, end = session.push_text(second)
        session.flush()
        await wait_for(lambda: any(e["type"] == "speech.done" and e["text_start"] == start for e in events))
        regenerated = max(i for i, c in enumerate(chunks) if c.index == resumed_at)  # the last one made there
        after = chunks[regenerated:]
        assert [c.index for c in after] == list(range(resumed_at, resumed_at + len(after)))
        assert after[0].pts == pytest.approx(interruption.media_time)
        assert all(c.text_start < 0 or c.text_start >= start for c in after)  # no old text after the cut
        assert session.playout.buffered_until * 0.02 >= interruption.media_time
        kinds = [e["type"] for e in events]
        assert kinds.index("input.interrupted") < len(kinds) - 1
        assert session.playback_position == end - 1  # "on" spoken, the "." is not a word
        for task in tasks:
            task.cancel()


async def test_idle_chunks_only_with_a_viewer() -> None:
    async with small_engine() as engine:
        session = await engine.open_session(seed=3)
        await asyncio.sleep(0.5)
        assert session.next_chunk == 0  # nobody watches, nothing to say: no work
        chunks, events = [], []
        tasks = await collect(session, chunks, events)
        await wait_for(lambda: len(chunks) >= 5)
        assert all(c.text_start == -1 for c in chunks)  # idle: silence phonemes
        playing = session.playout.position_seconds / engine.cfg.chunk_seconds
        assert session.next_chunk <= playing + engine.config.idle_lead_chunks + 1
        for task in tasks:
            task.cancel()


async def test_sessions_share_batches() -> None:
    async with small_engine() as engine:
        sessions = [await engine.open_session(seed=i) for i in range(2)]
        for session in sessions:
            session.push_text("A few words for each of us to say out loud.")
            session.flush()
        await wait_for(lambda: all(s.playback_position > 20 for s in sessions), timeout=15)
        assert engine.metrics.chunks > engine.metrics.batches  # some forwards carried both sessions


async def test_full_engine_and_closed_sessions() -> None:
    async with small_engine(max_sessions=1) as engine:
        session = await engine.open_session()
        with pytest.raises(EngineFull):
            await engine.open_session()
        await session.close()
        await session.close()  # twice is fine
        with pytest.raises(SonateInputError, match="closed"):
            session.push_text("hello")
        again = await engine.open_session()
        with pytest.raises(SonateInputError, match="at most"):
            again.push_text("x" * 5000)


async def test_many_sessions_leave_nothing_behind() -> None:
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    async with small_engine() as engine:
        for i in range(50):
            session = await engine.open_session(seed=i)
            session.push_text("hi ")
            await session.close()
        assert not engine.sessions and sorted(engine._free_slots) == [0, 1]
    assert len(asyncio.all_tasks()) == tasks_before
    assert threading.active_count() == threads_before


def test_lead_counts_chunks_beyond_the_one_playing() -> None:
    """Clock-free: with chunk 0 playing, an idle session's chunk 1 is due (so it is ready in time), chunk 2 may
    only fill a batch, chunk 3 must wait."""
    engine = small_engine(idle_lead_chunks=1)
    cfg = engine.cfg
    now = 1000.0
    session = watched_session(engine, "lead", 0, lambda: now)
    session.deliver(silent_chunk(cfg), epoch=0)
    session.next_chunk = 1
    assert session.chunk_slack(now) == 0  # due
    session.next_chunk = 2
    assert session.chunk_slack(now) == -1  # not due; it may fill a batch that runs anyway
    session.next_chunk = 3
    assert session.chunk_slack(now) is None
    session.next_chunk = 2
    now += cfg.chunk_seconds + 0.01  # chunk 1 plays (or holds): chunk 2 is due
    assert session.chunk_slack(now) == 0
    session.remove_viewer()
    assert session.chunk_slack(now) is None  # nobody watches, nothing to say: pause


def test_a_batch_that_runs_fills_with_sessions_one_chunk_early() -> None:
    """Clock-free: no batch while nobody is due; once one session is due, those one chunk early ride along
    (continuous batching) unless the batch is capped at one; two chunks early must wait."""
    now = 1000.0

    def engine_with(next_chunks: list[int], **config: object) -> tuple[Engine, list[Session]]:
        engine = small_engine(max_sessions=len(next_chunks), idle_lead_chunks=2, **config)
        sessions = []
        for slot, next_chunk in enumerate(next_chunks):
            session = watched_session(engine, f"s{slot}", slot, lambda: now)
            session.deliver(silent_chunk(engine.cfg), epoch=0)
            session.next_chunk = next_chunk
            engine.sessions[session.id] = session
            sessions.append(session)
        return engine, sessions

    engine, (early, due, _) = engine_with([3, 2, 4])  # chunk 0 playing: slack -1, 0 and -2 (left out)
    assert engine._due_sessions(now) == [due, early]
    engine, (_, due, _) = engine_with([3, 2, 4], max_batch=1)
    assert engine._due_sessions(now) == [due]
    engine, _ = engine_with([3, 3, 4])
    assert engine._due_sessions(now) == []


def test_speech_that_starts_early_is_due_in_the_same_pass(monkeypatch) -> None:
    """Clock-free: idle chunks 0–2 made, chunk 0 just begun; two final words (less than a chunk made ahead) start
    inside chunk 0, and that remade chunk is due at once — a later pass could be a batch too late."""
    engine = small_engine()
    monkeypatch.setattr(engine, "batch_latency_bound", lambda: 0.05)
    cfg = engine.cfg
    now = 1000.0
    session = watched_session(engine, "early", 0, lambda: now)
    for index in range(3):
        session.deliver(silent_chunk(cfg, index), epoch=0)
    session.next_chunk = 3
    now += 0.01
    session.push_text("Let me walk ")  # the first unit is "Let me": final; "walk" waits for more words
    assert session.chunk_slack(now) >= 0
    assert session.next_chunk == 0 and 0 < session.speech.current.offset_s < cfg.chunk_seconds
    assert session.playout.buffered_until * TICK == pytest.approx(session.speech.current.offset_s)
    assert session.speech.final_until() < 3 * cfg.chunk_seconds  # the old front would not have been due


async def test_a_long_piece_is_fed_to_g2p_in_bounded_steps() -> None:
    async with small_engine() as engine:
        session = await engine.open_session(seed=5)
        sentence = "This sentence is here to be spoken many times over. "
        session.push_text(sentence * 60)  # ~3000 characters: accepted at once, G2P spread over ticks
        assert session.speech.unfed
        await wait_for(lambda: not session.speech.unfed, timeout=20)
        assert session.speech.current.frontend.text == sentence * 60


async def test_waiting_text_is_dropped_by_an_interrupt() -> None:
    async with small_engine() as engine:
        session = await engine.open_session(seed=6)
        session.push_text("x" * 4000)  # one unfinished word
        for _ in range(3):
            session.push_text("y" * 4000)
        with pytest.raises(SonateInputError, match="waiting"):
            session.push_text("z" * 4000)
        session.interrupt()
        session.push_text("Hi ")  # the dropped text no longer counts


@pytest.mark.parametrize("safe", [True, False], ids=["early", "kept"])
async def test_speech_after_silence_starts_inside_the_idle_chunk_playing_when_safe(safe: bool, monkeypatch) -> None:
    async with small_engine() as engine:
        # a batch of this model takes ~10 ms; a fixed bound keeps the expectations independent of the machine's
        # load: 0.1 s leaves room inside a 0.32 s chunk; 10 s is longer than any chunk (the idle media must stay)
        monkeypatch.setattr(engine, "batch_latency_bound", lambda: 0.1 if safe else 10.0)
        session = await engine.open_session(seed=3)
        chunks, events = [], []
        tasks = await collect(session, chunks, events)
        chunk_s = engine.cfg.chunk_seconds
        # one tick into a chunk (at its very first tick, `playing_chunk` is still the one before)
        await wait_for(lambda: len(chunks) >= 6 and 0.01 < session.playout.position_seconds % chunk_s < 0.03)
        playing = session.playout.playing_chunk()
        assert session.generation_front > playing.end  # the idle lead: a chunk made ahead of the playing one
        front_at_push = session.generation_front
        session.push_text("Hello there.")
        session.flush()
        await wait_for(lambda: any(e["type"] == "speech.done" for e in events))
        offset = session.speech.current.offset_s
        if safe:  # inside the chunk that was playing (or at its end), on a frame boundary, that chunk made again
            assert playing.pts < offset <= playing.end + 1e-9 < front_at_push
            assert offset * engine.cfg.video_fps == pytest.approx(round(offset * engine.cfg.video_fps))
            remade = playing.index if offset < playing.end - 1e-9 else playing.index + 1
            assert [c.index for c in chunks].count(remade) == 2
        else:
            assert offset == pytest.approx(front_at_push)
            assert [c.index for c in chunks].count(playing.index) == 1
        assert events[0]["type"] == "speech.started" and events[0]["media_time"] == pytest.approx(offset, abs=0.05)
        assert session.playout.underruns == 0
        for task in tasks:
            task.cancel()


async def test_the_first_audio_spans_add_up_to_the_time_to_first_audio(monkeypatch) -> None:
    async with small_engine() as engine:
        session = await engine.open_session(seed=3)
        passes: list[float] = []  # when each announcer pass over the session began (monotonic s)
        announce = session.announce_playback

        def timed_announce() -> None:
            passes.append(time.monotonic())
            announce()

        monkeypatch.setattr(session, "announce_playback", timed_announce)
        chunks, events = [], []
        tasks = await collect(session, chunks, events)
        await wait_for(lambda: len(chunks) >= 3)  # idle media playing: speech starts inside it
        pushed_at: list[list[float]] = []  # per text, when each of its words was pushed (monotonic s)
        for text in ("Good morning, everyone.", "Nice to see you all."):
            pushed_at.append([])
            for word in text.split(" "):
                pushed_at[-1].append(time.monotonic())
                session.push_text(word + " ")
                await asyncio.sleep(1 / 30)
            session.flush()
            await wait_for(lambda t=text: any(e["type"] == "speech.done" and e["text_end"] >= len(session.text) - 1
                                              for e in events))  # fmt: skip
        started = [e for e in events if e["type"] == "speech.started"]
        breakdowns = engine.metrics.first_audio
        assert len(started) == len(breakdowns) == 2
        for event, breakdown, words_at in zip(started, breakdowns, pushed_at, strict=True):
            assert breakdown.text_start == event["text_start"] and breakdown.session_id == session.id
            assert list(breakdown.spans) == list(FIRST_AUDIO_SPANS)
            assert all(seconds >= 0 for seconds in breakdown.spans.values()), breakdown.spans
            assert sum(breakdown.spans.values()) == pytest.approx(breakdown.total, abs=1e-9)
            # the announcement comes in the first announcer pass after the phoneme starts playing, and its
            # ttfa, measured on its own, counts from the same first word
            announced_at = breakdown.text_received_at + event["ttfa_ms"] / 1e3
            announcing_pass = max(began for began in passes if began <= announced_at)
            assert breakdown.plays_at <= announced_at
            assert [began for began in passes if breakdown.plays_at <= began < announcing_pass] == []
            # the second word was needed: the text was received with the first word, ready only with the second
            assert words_at[0] <= breakdown.text_received_at < words_at[1]
            assert breakdown.text_received_at + breakdown.spans["text"] >= words_at[1]
            assert breakdown.spans["euler"] > 0 and breakdown.spans["other"] < 0.2 * breakdown.total
            assert event["spans_ms"]["euler"] == pytest.approx(breakdown.spans["euler"] * 1e3)
        assert engine.metrics.first_audio.total == 2  # each breakdown recorded once, and each batch with its chunks
        assert sum(timing.batch_size for timing in engine.metrics.batch_timings) == engine.metrics.chunks
        for task in tasks:
            task.cancel()
