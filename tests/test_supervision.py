"""Supervised tasks: each long-lived task's owner notices when it fails, says so to whom it concerns and cleans
up — the engine's scheduler and announcer, a websocket's tasks, the registry's watcher and reaper. Every failure
here is injected into the real engine (clapper media: no model compute) or the real server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import httpx
import pytest

from sonate.models.checkpoint import random_model
from sonate.streamer.engine.engine import Engine, EngineConfig, EngineFailed
from sonate.streamer.engine.session import Session
from sonate.streamer.server.registry import Registry
from sonate.streamer.server.websocket import JpegEncoder
from tests.conftest import small_config
from tests.test_server import assert_error, new_session, next_event, running_server, send, session_socket, wait_until

TIMEOUT_S = 20.0  # deadline of every wait here


def clapper_engine() -> Engine:
    """A small engine whose chunks are A/V sync test media (no model compute), with three session slots."""
    model = random_model(small_config(n_layers=1, max_rollback_chunks=4))
    return Engine(model, EngineConfig(max_sessions=3, source="clapper"))


class Listener:
    """Every event of a session from now on, collected by a task that ends when the session closes."""

    def __init__(self, session: Session) -> None:
        self.events: list[dict] = []
        self._stream = session.events()  # (subscribes now)
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self._stream:
            self.events.append(event)

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]


async def broken_make_chunks(self: Engine, due: list[Session]) -> None:
    raise RuntimeError("injected scheduler failure")


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def logged_with_traceback(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() and r.exc_info is not None for r in caplog.records if r.levelno >= logging.ERROR)


# --- the engine --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["the scheduler raises", "the compute process dies"])
async def test_a_failed_scheduler_fails_every_session_and_stop_still_stops_the_compute_process(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = clapper_engine()
    await engine.start()
    pid = engine.compute_pid
    assert pid is not None
    try:
        sessions = [await engine.open_session(seed=i) for i in range(2)]
        listeners = [Listener(session) for session in sessions]
        assert engine.failure is None
        if failure == "the scheduler raises":
            monkeypatch.setattr(Engine, "_make_chunks", broken_make_chunks)
        else:
            os.kill(pid, signal.SIGKILL)
        for session in sessions:
            session.add_viewer()  # someone watches: its first chunk is due
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*(listener.task for listener in listeners))  # they end when the sessions close
        cause = "injected scheduler failure" if failure == "the scheduler raises" else "the compute process died"
        assert engine.failure is not None and cause in engine.failure
        for session, listener in zip(sessions, listeners, strict=True):
            assert listener.types() == ["error"]
            error = listener.events[0]
            assert error["code"] == "engine_failed" and cause in error["message"]
            assert error["session_id"] == session.id
            assert session.closed and session.close_reason == "engine_failed"
        assert engine.sessions == {}
        assert logged_with_traceback(caplog, "the scheduler failed")
        with pytest.raises(EngineFailed, match=cause):
            await engine.open_session()
        if failure == "the scheduler raises":
            assert process_exists(pid)  # (so that its absence below says that stop() stopped it)
    finally:
        await engine.stop()
    assert engine.compute_pid is None and not process_exists(pid)
    await engine.stop()  # twice is fine


async def test_a_session_whose_announcement_fails_is_closed_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with clapper_engine() as engine:
        failing, healthy = [await engine.open_session(seed=i) for i in range(2)]
        failing_events, healthy_events = Listener(failing), Listener(healthy)
        announce = Session.announce_playback

        def announce_or_fail(session: Session) -> None:
            if session is failing:
                raise RuntimeError("injected announcement failure")
            announce(session)

        monkeypatch.setattr(Session, "announce_playback", announce_or_fail)
        async with asyncio.timeout(TIMEOUT_S):
            await failing_events.task
        assert failing_events.types() == ["error"] and failing_events.events[0]["code"] == "session_failed"
        assert failing.closed and failing.close_reason == "session_failed"
        assert logged_with_traceback(caplog, f"session {failing.id}: announcing its playback failed")
        healthy.push_text("Hello there.")
        healthy.flush()
        async with asyncio.timeout(TIMEOUT_S):
            while "speech.done" not in healthy_events.types():
                await asyncio.sleep(0.02)
        assert healthy_events.types() == ["speech.started", "speech.done"]
        assert engine.failure is None and list(engine.sessions) == [healthy.id]


# --- through the server ------------------------------------------------------------------------------------------


async def test_a_failed_engine_fails_websocket_sessions_and_healthz_answers_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_server(source="clapper") as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=TIMEOUT_S) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            session_id = await new_session(http)
            async with session_socket(served, session_id) as ws:
                await next_event(ws, "session.ready")
                monkeypatch.setattr(Engine, "_make_chunks", broken_make_chunks)
                await send(ws, type="media.subscribe")  # a viewer: the session's first chunk is due
                error = await next_event(ws, "error", TIMEOUT_S)
                assert error["code"] == "engine_failed" and "injected scheduler failure" in error["message"]
                assert (await next_event(ws, "session.closed"))["reason"] == "engine_failed"
                await asyncio.wait_for(ws.wait_closed(), TIMEOUT_S)
                assert ws.close_code == 1000
            health = assert_error(await http.get("/healthz"), 503, "engine_failed")
            assert_error(await http.post("/v1/sessions", json={}), 503, "engine_failed")
            assert "injected scheduler failure" in health["message"]
            assert_error(await http.get(f"/v1/sessions/{session_id}"), 404, "session_not_found")


async def test_a_failed_websocket_task_ends_its_connection_and_a_failed_watcher_its_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_server(source="clapper", max_sessions=3) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=TIMEOUT_S) as http:
            ids = [await new_session(http) for _ in range(3)]
            sessions = [served.registry.sessions[session_id].session for session_id in ids]
            async with (
                session_socket(served, ids[0]) as forwarder_fails,
                session_socket(served, ids[1]) as watcher_fails,
                session_socket(served, ids[2]) as pump_fails,
            ):
                for ws in (forwarder_fails, watcher_fails, pump_fails):
                    await next_event(ws, "session.ready")
                # 1. an event that is not JSON fails the event forwarder: that connection ends, the session stays
                served.loop.call_soon_threadsafe(sessions[0]._emit, {"type": "test.event", "value": object()})
                assert (await next_event(forwarder_fails, "error"))["code"] == "internal_error"
                await asyncio.wait_for(forwarder_fails.wait_closed(), TIMEOUT_S)
                assert forwarder_fails.close_code == 1011
                assert (await http.get(f"/v1/sessions/{ids[0]}")).status_code == 200
                await send(watcher_fails, type="input.text", text="Hi ", id=1)
                assert (await next_event(watcher_fails, "input.accepted"))["id"] == 1  # the others go on
                # 2. a `speech.started` without its time fails the registry's watcher: that session ends
                served.loop.call_soon_threadsafe(sessions[1]._emit, {"type": "speech.started"})
                assert (await next_event(watcher_fails, "error"))["code"] == "session_failed"
                assert (await next_event(watcher_fails, "session.closed"))["reason"] == "session_failed"
                await asyncio.wait_for(watcher_fails.wait_closed(), TIMEOUT_S)
                assert watcher_fails.close_code == 1000
                assert_error(await http.get(f"/v1/sessions/{ids[1]}"), 404, "session_not_found")
                # 3. a frame that does not encode fails the media pump: that connection ends, the session stays
                monkeypatch.setattr(JpegEncoder, "encode", lambda self, frame: 1 / 0)
                await send(pump_fails, type="media.subscribe")
                assert (await next_event(pump_fails, "error", TIMEOUT_S))["code"] == "internal_error"
                await asyncio.wait_for(pump_fails.wait_closed(), TIMEOUT_S)
                assert pump_fails.close_code == 1011
                assert (await http.get(f"/v1/sessions/{ids[2]}")).status_code == 200
            assert served.engine.failure is None
            assert (await http.get("/healthz")).json()["status"] == "ok"


async def test_the_reaper_outlives_a_failing_pass(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expire_idle = Registry.expire_idle
    passes: list[float | None] = []

    async def fail_first_pass(self: Registry, now: float | None = None) -> list[str]:
        passes.append(now)
        if len(passes) == 1:
            raise RuntimeError("injected reaper failure")
        return await expire_idle(self, now)

    monkeypatch.setattr(Registry, "expire_idle", fail_first_pass)
    with running_server(source="clapper", session_timeout_s=0.4) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=TIMEOUT_S) as http:
            session_id = await new_session(http)
            await wait_until(lambda: session_id not in served.registry.sessions, TIMEOUT_S)  # a later pass ran
    assert logged_with_traceback(caplog, "a pass of the session reaper failed")
