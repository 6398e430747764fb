"""The server end to end: the real app on uvicorn in a thread, a small random model, real HTTP and websocket
clients on loopback, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from sonate.clients import DEMO_PAGE
from sonate.models.checkpoint import random_model
from sonate.streamer.engine.engine import Engine, EngineConfig, EngineMetrics
from sonate.streamer.engine.timing import ChunkTiming, ComputeTiming
from sonate.streamer.media.chunk import AVChunk
from sonate.streamer.media.clapper import beep_times, flash_times
from sonate.streamer.protocol import (
    KIND_AUDIO,
    KIND_VIDEO,
    MAX_PIECE_CHARS,
    MEDIA_HEADER,
    MediaMessage,
    ProtocolError,
    parse_client_message,
    pcm16,
)
from sonate.streamer.server.app import ServerConfig
from sonate.streamer.server.launch import serve_in_background
from sonate.streamer.server.metrics import LatencyHistograms
from sonate.streamer.server.websocket import MEDIA_QUEUE_MESSAGES, Outbox
from tests.conftest import small_config

SAMPLE_RATE = 16000  # Hz: the small model's rate
TEXT = "Hello there, how are you today?"
LONG_TEXT = "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen."


# --- a real server in a thread ----------------------------------------------------------------------------------


@dataclass
class Served:
    """A running server: its URLs, app and event loop (run coroutines in it with `call`)."""

    url: str
    ws_url: str
    app: object
    engine: Engine
    loop: asyncio.AbstractEventLoop

    @property
    def registry(self):
        return self.app.state.registry

    def call(self, coro, timeout: float = 10.0):
        """Run a coroutine in the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def acall(self, coro, timeout: float = 10.0):
        """`call` without blocking the calling loop."""
        return await asyncio.wait_for(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop)), timeout)


@contextlib.contextmanager
def running_server(source: str = "model", max_sessions: int = 2, **config: object) -> Iterator[Served]:
    model = random_model(small_config(n_layers=1))
    engine = Engine(model, EngineConfig(max_sessions=max_sessions, source=source))
    server_config = ServerConfig(**{"max_body_bytes": 1024 * 1024, "demo_page": DEMO_PAGE, **config})
    with serve_in_background(engine, server_config) as server:
        yield Served(server.url, "ws" + server.url.removeprefix("http"), server.app, engine, server.loop)


@pytest.fixture
def served() -> Iterator[Served]:
    with running_server() as s:
        yield s


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as client:
        yield client


async def new_session(http: httpx.AsyncClient, **body: object) -> str:
    response = await http.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


@contextlib.asynccontextmanager
async def session_socket(served: Served, session_id: str) -> AsyncIterator[ClientConnection]:
    async with connect(f"{served.ws_url}/v1/sessions/{session_id}/ws", proxy=None, compression=None) as ws:
        yield ws


async def next_event(ws: ClientConnection, kind: str, timeout: float = 10.0, media: list | None = None) -> dict:
    """The next JSON event of type `kind`; other events are skipped, binary media goes to `media`."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                if media is not None:
                    media.append(MediaMessage.decode(message))
                continue
            event = json.loads(message)
            if event["type"] == kind:
                return event


async def send(ws: ClientConnection, **message: object) -> None:
    await ws.send(json.dumps(message))


def wav_bytes(seconds: float, rate: int = 22050) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buffer.getvalue()


def png_bytes(width: int = 96, height: int = 80) -> bytes:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = width, height, "rgb24", Fraction(1, 25)
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[:, : width // 2] = (200, 120, 40)
    return b"".join(bytes(p) for p in codec.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))


def decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="mjpeg") as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


# --- the websocket session protocol -----------------------------------------------------------------------------


async def test_text_streamed_word_by_word_is_accepted_then_spoken_in_order(
    served: Served, http: httpx.AsyncClient
) -> None:
    session_id = await new_session(http, instruction="a calm voice", seed=3)
    async with session_socket(served, session_id) as ws:
        ready = json.loads(await ws.recv())
        cfg = served.engine.cfg
        assert ready["type"] == "session.ready" and ready["session_id"] == session_id
        assert (ready["sample_rate"], ready["fps"], ready["width"], ready["height"]) == (
            cfg.sample_rate,
            cfg.video_fps,
            cfg.video_width,
            cfg.video_height,
        )
        assert ready["chunk_seconds"] == pytest.approx(cfg.chunk_seconds)
        words = [word + " " for word in TEXT.split(" ")]
        for word in words:
            await send(ws, type="input.text", text=word, id=word.strip())
            await asyncio.sleep(0.03)
        await send(ws, type="input.flush")
        received: list[dict] = []
        async with asyncio.timeout(60):  # the whole text is spoken well within this
            while not any(e["type"] == "speech.done" and e["text_end"] == len(TEXT) + 1 for e in received[-1:]):
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
        accepted = [e for e in received if e["type"] == "input.accepted"]
        assert [a["id"] for a in accepted] == [w.strip() for w in words]
        assert accepted[0]["text_start"] == 0 and accepted[-1]["text_end"] == len("".join(words))
        assert all(a["text_end"] == b["text_start"] for a, b in itertools.pairwise(accepted))
        events = [e for e in received if e["type"] in ("speech.started", "speech.done")]
        kinds = [e["type"] for e in events]
        assert kinds == ["speech.started", "speech.done"] * (len(events) // 2)  # every start has its end, in order
        assert events[0]["text_start"] == 0
        for started, done in zip(events[::2], events[1::2], strict=True):
            assert done["text_start"] == started["text_start"] and done["media_time"] > started["media_time"]
            assert started["session_id"] == session_id
        assert [e["text_start"] for e in events[::2]] == sorted({e["text_start"] for e in events[::2]})
        described = (await http.get(f"/v1/sessions/{session_id}")).json()
        assert described["websockets"] == 1 and described["playback_position"] == len(TEXT) - 1  # "?" is no word
    assert (await http.delete(f"/v1/sessions/{session_id}")).status_code == 204


async def record_chunks(served: Served, session_id: str) -> asyncio.Future:
    """Record every chunk the session makes (in the server's loop) until it closes."""

    async def run() -> list[AVChunk]:
        chunks = []
        async for chunk in served.registry.sessions[session_id].session.chunks():
            chunks.append(chunk)
        return chunks

    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), served.loop))


async def test_interrupt_reports_the_playback_position_and_stops_the_old_text(
    served: Served, http: httpx.AsyncClient
) -> None:
    session_id = await new_session(http, seed=5)
    recorded = await record_chunks(served, session_id)
    async with session_socket(served, session_id) as ws:
        await send(ws, type="media.subscribe")
        subscribed = await next_event(ws, "media.subscribed")
        assert subscribed["header_bytes"] == MEDIA_HEADER.size and subscribed["audio"]["sample_rate"] == SAMPLE_RATE
        await send(ws, type="input.text", text=LONG_TEXT)
        await send(ws, type="input.flush")
        before: list[MediaMessage] = []
        await next_event(ws, "speech.started", media=before)
        await asyncio.sleep(0.5)
        await send(ws, type="input.interrupt")
        interrupted = await next_event(ws, "input.interrupted", media=before)
        assert 0 < interrupted["played_until"] < len(LONG_TEXT) and interrupted["text_end"] == len(LONG_TEXT)
        cut = interrupted["media_time"]
        after: list[MediaMessage] = []
        with contextlib.suppress(TimeoutError):
            await next_event(ws, "never", timeout=1.0, media=after)
    assert (await http.delete(f"/v1/sessions/{session_id}")).status_code == 204
    chunks = await asyncio.wait_for(recorded, 10)

    assert any(c.pts >= cut and c.text_start >= 0 for c in chunks), "no media of the old text was made ahead"
    audio_after = [m for m in after if m.kind == KIND_AUDIO]
    assert audio_after and max(m.pts for m in audio_after) > cut + 0.3  # playback went on past the cut
    pts = [m.pts for m in [*before, *after] if m.kind == KIND_AUDIO]
    assert all(b > a for a, b in itertools.pairwise(pts))  # media time only moves forward
    tick_samples = SAMPLE_RATE // 50
    for message in audio_after:
        if message.pts < cut:
            continue  # the rest of the chunk that was playing
        sources = [c for c in chunks if c.pts <= message.pts < c.end]
        matching = []
        for chunk in sources:
            start = round((message.pts - chunk.pts) * SAMPLE_RATE)
            if pcm16(chunk.audio[start : start + tick_samples]) == message.payload:
                matching.append(chunk)
        assert matching and all(c.text_start == -1 for c in matching), f"old text played at {message.pts:.2f} s"


async def test_bad_messages_get_error_events_and_the_socket_stays_open(served: Served, http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    async with session_socket(served, session_id) as ws:
        await next_event(ws, "session.ready")
        cases = [
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_message"),
            (json.dumps({"type": "input.dance"}), "unknown_type"),
            (json.dumps({"type": "input.text", "text": 5}), "invalid_message"),
            (json.dumps({"type": "input.text", "text": "a" * (MAX_PIECE_CHARS + 1)}), "text_too_long"),
            (json.dumps({"type": "input.text", "text": "x" * 70_000}), "message_too_large"),
            (json.dumps({"type": "session.update"}), "invalid_message"),
            (json.dumps({"type": "session.update", "voice_id": "nobody", "id": 7}), "unknown_voice"),
            (json.dumps({"type": "session.update", "instruction": "i" * 5000}), "invalid_input"),
        ]
        for raw, code in cases:
            await ws.send(raw)
            error = await next_event(ws, "error")
            assert error["code"] == code, (raw[:40], error)
            assert error["message"]
        await ws.send(b"\x00\x01")
        assert (await next_event(ws, "error"))["code"] == "invalid_message"
        # Too much text waiting: four full pieces of one unfinished word are taken, the fifth is refused.
        for _ in range(4):
            await send(ws, type="input.text", text="a" * MAX_PIECE_CHARS)
        await send(ws, type="input.text", text="a" * MAX_PIECE_CHARS)
        assert (await next_event(ws, "error"))["code"] == "too_much_text"
        await send(ws, type="input.flush")  # (text still waiting at an interruption keeps counting as waiting)
        await send(ws, type="input.interrupt")
        await next_event(ws, "input.interrupted")
        # Still served: a good message is answered.
        await send(ws, type="session.update", instruction="a bright voice", avatar_id="default", id="u1")
        updated = await next_event(ws, "session.updated")
        assert updated["id"] == "u1" and updated["avatar_id"] == "default"
        await send(ws, type="input.text", text="Hi ")
        assert (await next_event(ws, "input.accepted"))["text_end"] > 0


async def test_a_websocket_message_over_the_configured_limit_closes_the_socket() -> None:
    limit = 2048  # bytes; the protocol itself takes pieces of up to MAX_PIECE_CHARS characters
    assert limit < MAX_PIECE_CHARS
    with running_server(ws_max_message_bytes=limit) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as http:
            session_id = await new_session(http)
            async with session_socket(served, session_id) as ws:
                await send(ws, type="input.text", text="a" * (limit // 2))
                assert (await next_event(ws, "input.accepted"))["text_end"] == limit // 2
                await send(ws, type="input.text", text="a" * limit)
                with pytest.raises(ConnectionClosedError):
                    await next_event(ws, "input.accepted")
                assert ws.close_code == 1009  # message too big


def test_client_messages_parse_and_media_frames_round_trip() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message('{"type": "input.text", "text": "hi", "id": [1]}')
    assert caught.value.code == "invalid_message"
    assert parse_client_message('{"type": "input.flush", "id": 3}').id == 3
    message = MediaMessage(KIND_VIDEO, 1.24, b"\xff\xd8jpeg")
    assert MediaMessage.decode(message.encode()) == message
    with pytest.raises(ValueError):
        MediaMessage.decode(b"XXXX" + message.encode()[4:])


async def test_a_slow_reader_loses_the_oldest_media_not_events() -> None:
    outbox = Outbox()
    for i in range(MEDIA_QUEUE_MESSAGES + 10):
        outbox.put_media(bytes([i % 256]))
    outbox.put_event({"type": "speech.started"})
    assert outbox.dropped == 10
    assert json.loads(await outbox.get())["type"] == "speech.started"  # events first
    assert await outbox.get() == bytes([10])  # the ten oldest media messages are gone


# --- HTTP: sessions, uploads, WebRTC, errors --------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


async def test_unknown_sessions_and_routes_are_json_404s(served: Served, http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/sessions/nope"), 404, "session_not_found")
    assert_error(await http.delete("/v1/sessions/nope"), 404, "session_not_found")
    assert_error(await http.post("/v1/sessions/nope/whep", content=b"v=0"), 404, "session_not_found")
    assert_error(await http.get("/v2/anything"), 404, "not_found")
    with pytest.raises(InvalidStatus) as caught:
        async with session_socket(served, "nope"):
            pass
    assert caught.value.response.status_code == 404
    assert json.loads(caught.value.response.body)["error"]["code"] == "session_not_found"
    assert_error(await http.post("/v1/sessions", content=b"{bad"), 400, "bad_request")
    assert_error(await http.post("/v1/sessions", json={"voice_id": "ghost"}), 422, "unknown_voice")
    assert_error(await http.post("/v1/sessions", json={"seed": -1}), 400, "bad_request")


async def test_uploads_are_decoded_checked_and_listed(served: Served, http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/voices", content=wav_bytes(1.5))
    assert response.status_code == 201, response.text
    voice_id = response.json()["voice_id"]
    assert response.json()["seconds"] == pytest.approx(1.5, abs=0.01)
    voices = (await http.get("/v1/voices")).json()["voices"]
    assert [v["voice_id"] for v in voices] == ["default", voice_id]
    assert_error(await http.post("/v1/voices", content=b"RIFF garbage" * 10), 422, "invalid_audio")
    assert_error(await http.post("/v1/voices", content=png_bytes()), 422, "invalid_audio")
    assert (
        "too short"
        in assert_error(await http.post("/v1/voices", content=wav_bytes(0.2)), 422, "invalid_audio")["message"]
    )
    long_clip = wav_bytes(31, rate=8000)
    assert "too long" in assert_error(await http.post("/v1/voices", content=long_clip), 422, "invalid_audio")["message"]

    response = await http.post("/v1/avatars", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    avatar_id = response.json()["avatar_id"]
    assert [a["avatar_id"] for a in (await http.get("/v1/avatars")).json()["avatars"]] == ["default", avatar_id]
    assert_error(await http.post("/v1/avatars", content=b"\x89PNG not really"), 422, "invalid_image")
    assert_error(await http.post("/v1/avatars", content=wav_bytes(1.0)), 422, "invalid_image")

    too_big = b"\x00" * (1024 * 1024 + 1)
    assert_error(await http.post("/v1/voices", content=too_big), 413, "body_too_large")

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds on what arrives
        for _ in range(5):
            yield b"\x00" * 300_000

    assert_error(await http.post("/v1/avatars", content=streamed()), 413, "body_too_large")

    session_id = await new_session(http, voice_id=voice_id, avatar_id=avatar_id)
    described = (await http.get(f"/v1/sessions/{session_id}")).json()
    assert (described["voice_id"], described["avatar_id"]) == (voice_id, avatar_id)
    assert (await http.delete(f"/v1/voices/{voice_id}")).status_code == 204
    assert_error(await http.delete(f"/v1/voices/{voice_id}"), 404, "voice_not_found")
    assert_error(await http.delete("/v1/avatars/default"), 409, "builtin_reference")


async def test_whep_answers_offers_counts_viewers_and_refuses_bad_ones(served: Served, http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    whep = f"/v1/sessions/{session_id}/whep"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        assert_error(await http.post(whep, content=offer, headers={"Content-Type": "text/plain"}), 415,
                     "unsupported_media_type")  # fmt: skip
        sdp = {"Content-Type": "application/sdp"}
        assert_error(await http.post(whep, content=b"hello", headers=sdp), 400, "bad_sdp")
        assert_error(await http.post(whep, content=b"v=0\r\nm=nonsense\r\n", headers=sdp), 400, "bad_sdp")
        response = await http.post(whep, content=offer, headers=sdp)
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/sdp")
        assert response.text.startswith("v=0")
        location = response.headers["location"]
        assert re.fullmatch(rf"/v1/sessions/{session_id}/whep/\w+", location)
        hosted = served.registry.sessions[session_id]
        assert hosted.webrtc_viewers == 1 and hosted.session.viewers == 1
        assert (await http.delete(location)).status_code == 204
        assert hosted.webrtc_viewers == 0 and hosted.session.viewers == 0
        assert_error(await http.delete(location), 404, "viewer_not_found")
    finally:
        await pc.close()


async def test_a_full_server_answers_503_with_retry_after(served: Served, http: httpx.AsyncClient) -> None:
    ids = [await new_session(http) for _ in range(2)]
    response = await http.post("/v1/sessions", json={})
    assert_error(response, 503, "server_full")
    assert int(response.headers["retry-after"]) > 0
    assert (await http.delete(f"/v1/sessions/{ids[0]}")).status_code == 204
    await new_session(http)


async def test_health_metrics_and_demo_page(served: Served, http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json()["status"] == "ok"
    page = await http.get("/")
    assert page.status_code == 200 and page.text == DEMO_PAGE.read_text(encoding="utf-8")
    session_id = await new_session(http)
    async with session_socket(served, session_id) as ws:
        await send(ws, type="input.text", text="Hi there.")
        await send(ws, type="input.flush")
        await next_event(ws, "speech.started")
    metrics = await http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in metrics.text.splitlines():
        if not line.startswith("#"):
            match = re.fullmatch(r'([a-z_]+(?:\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})?) (\S+)', line)
            assert match, line
            samples[match[1]] = float(match[2])
    assert samples["sonate_sessions_active"] == 1 and samples["sonate_chunks_total"] > 0
    assert samples["sonate_ttfa_seconds_count"] == 1 and samples["sonate_chunk_compute_seconds_count"] > 0
    assert samples['sonate_chunk_compute_seconds_bucket{le="+Inf"}'] == samples["sonate_chunk_compute_seconds_count"]
    assert samples['sonate_first_audio_span_seconds_count{span="euler"}'] == 1
    euler = 'sonate_batch_span_seconds_bucket{le="+Inf",span="euler"}'  # (prometheus_client sorts the labels)
    assert samples[euler] == samples['sonate_batch_span_seconds_count{span="euler"}'] > 0
    for name in ("sonate_underruns_total", "sonate_realtime_factor", 'sonate_viewers{transport="webrtc"}'):
        assert name in samples


def test_the_latency_histograms_observe_each_batch_the_engine_recorded_once() -> None:
    metrics, histograms = EngineMetrics(), LatencyHistograms()
    compute = ComputeTiming(started_at=0.01, ended_at=0.08, euler=0.05)
    timing = ChunkTiming(0, 1, sent_at=0.0, compute=compute, received_at=0.1, delivered_at=0.11)
    collectors = CollectorRegistry()
    for histogram in (histograms.compute, histograms.batch_spans):
        collectors.register(histogram)
    for batches in (3, 0, 1):  # follow after three batches, after none, after one more
        for _ in range(batches):
            metrics.observe_batch(timing, media_seconds=0.32)
        histograms.follow(metrics)
    assert collectors.get_sample_value("sonate_chunk_compute_seconds_count") == 4
    assert collectors.get_sample_value("sonate_chunk_compute_seconds_sum") == pytest.approx(4 * 0.1)
    assert collectors.get_sample_value("sonate_batch_span_seconds_sum", {"span": "euler"}) == pytest.approx(4 * 0.05)
    assert collectors.get_sample_value("sonate_batch_span_seconds_count", {"span": "deliver"}) == 4


# --- lifetimes: expiry, vanishing clients, cleanup ---------------------------------------------------------------


async def test_sessions_nobody_is_connected_to_expire() -> None:
    with running_server(session_timeout_s=0.6) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as http:
            lonely, watched = await new_session(http), await new_session(http)
            async with session_socket(served, watched):
                await asyncio.sleep(1.2)
                assert_error(await http.get(f"/v1/sessions/{lonely}"), 404, "session_not_found")
                assert (await http.get(f"/v1/sessions/{watched}")).status_code == 200  # connected: kept
            await asyncio.sleep(1.2)
            assert_error(await http.get(f"/v1/sessions/{watched}"), 404, "session_not_found")
            metrics = (await http.get("/metrics")).text
            assert "sonate_sessions_expired_total 2" in metrics


async def test_deleting_a_session_closes_its_websocket(served: Served, http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    async with session_socket(served, session_id) as ws:
        await next_event(ws, "session.ready")
        assert (await http.delete(f"/v1/sessions/{session_id}")).status_code == 204
        closed = await next_event(ws, "session.closed")
        assert closed["reason"] == "deleted"
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1000


async def test_a_viewer_that_never_connects_and_a_vanished_client_are_freed() -> None:
    with running_server(ice_timeout_s=0.5) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as http:
            session_id = await new_session(http)
            hosted = served.registry.sessions[session_id]
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Content-Type": "application/sdp"}
            response = await http.post(f"/v1/sessions/{session_id}/whep", content=pc.localDescription.sdp,
                                       headers=headers)  # fmt: skip
            assert response.status_code == 201  # the answer is never applied: ICE never completes
            await pc.close()
            await wait_until(lambda: hosted.webrtc_viewers == 0, timeout=5)

            ws = await connect(f"{served.ws_url}/v1/sessions/{session_id}/ws", proxy=None, compression=None)
            await send(ws, type="media.subscribe")
            await send(ws, type="input.text", text=LONG_TEXT)
            await next_event(ws, "speech.started", media=[])
            assert hosted.websockets == 1 and hosted.session.viewers == 1
            ws.transport.abort()  # vanish mid-stream: no close handshake
            await wait_until(lambda: hosted.websockets == 0 and hosted.media_websockets == 0)
            assert hosted.session.viewers == 0
            other = await new_session(http)  # the server carries on
            async with session_socket(served, other) as ws2:
                await send(ws2, type="input.text", text="Still here.")
                await next_event(ws2, "input.accepted")


async def task_names(served: Served) -> list[str]:
    """The server loop's tasks, by name and coroutine (without the engine's transient `wait_for` helper)."""

    async def names() -> list[str]:
        await asyncio.sleep(0.05)  # let cancelled tasks unwind
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current and t.get_coro().__qualname__ != "Event.wait"]
        return sorted(f"{t.get_name()}:{t.get_coro().__qualname__}" for t in tasks)

    return await served.acall(names())


async def test_twenty_sessions_in_a_row_leave_nothing_behind(served: Served, http: httpx.AsyncClient) -> None:
    baseline = await task_names(served)
    for i in range(20):
        session_id = await new_session(http, seed=i)
        async with session_socket(served, session_id) as ws:
            if i % 2:
                await send(ws, type="media.subscribe")
                await next_event(ws, "media.subscribed")
            await send(ws, type="input.text", text="Hi. ")
            await next_event(ws, "input.accepted")
            if i % 4 == 1:
                assert (await http.delete(f"/v1/sessions/{session_id}")).status_code == 204
                await next_event(ws, "session.closed")
        if i % 4 != 1:
            assert (await http.delete(f"/v1/sessions/{session_id}")).status_code == 204
    await wait_until(lambda: not served.registry.sessions and not served.engine.sessions)
    assert sorted(served.engine._free_slots) == [0, 1]
    for _ in range(50):
        if await task_names(served) == baseline:
            break
    final = await task_names(served)
    assert final == baseline, (final, baseline)


# --- the clapper source ------------------------------------------------------------------------------------------


async def test_clapper_media_over_the_websocket_is_in_sync() -> None:
    with running_server(source="clapper") as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as http:
            session_id = await new_session(http)
            media: list[MediaMessage] = []
            async with session_socket(served, session_id) as ws:
                await send(ws, type="media.subscribe")
                with contextlib.suppress(TimeoutError):
                    await next_event(ws, "never", timeout=2.2, media=media)
    audio = [m for m in media if m.kind == KIND_AUDIO]
    video = [m for m in media if m.kind == KIND_VIDEO]
    assert len(audio) > 60 and len(video) > 30
    first = round(audio[0].pts * SAMPLE_RATE)
    pcm = np.zeros(round(audio[-1].pts * SAMPLE_RATE) - first + SAMPLE_RATE // 50, dtype=np.float32)
    for message in audio:  # each at its pts: a tick lost to a stalled loop stays silent, nothing shifts
        start = round(message.pts * SAMPLE_RATE) - first
        pcm[start : start + SAMPLE_RATE // 50] = np.frombuffer(message.payload, dtype="<i2") / 32767
    beeps = beep_times(pcm, SAMPLE_RATE, audio[0].pts)
    flashes = flash_times((m.pts, decode_jpeg(m.payload)) for m in video)
    assert beeps and flashes
    for flash in flashes:
        assert min(abs(beep - flash) for beep in beeps) < 0.005  # the same presentation time (within 5 ms)


# --- the command line ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sonate_serve_starts_answers_health_and_stops() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "sonate.streamer.cli.main", "serve", "--port", str(port), "--source", "clapper"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert health.json()["status"] == "ok" and health.json()["source"] == "clapper"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output
