"""The Python client of the sonate server: sessions and uploads over HTTP, text over the websocket, media over WebRTC.

```python
client = SonateClient("http://127.0.0.1:8000")
info = await client.create_session(instruction="a calm voice")
async with ClientSession(client, info, ClientOptions(record_to="reply.mp4", reference=True)) as session:
    await session.stream_text("Hello there, how are you? ", words_per_second=30)
    await session.flush()
    await session.wait_for("speech.done")
print(session.speech_latencies()[0].ttfa_ms)  # text sent → its first phoneme's audio received (ms)
await client.delete_session(info.session_id)
```

HTTP goes through `urllib` in a worker thread (`sonate.clients.http`), the websocket through `websockets`, and
WebRTC through aiortc with recvonly audio and video transceivers, WHEP-style. Neither HTTP nor the websocket go
through proxies: the media travel peer to peer over UDP anyway, so the server must be reachable directly. The
protocol is docs/protocol.md; `sonate.streamer.protocol` frames the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from sonate.clients.http import SessionInfo, SonateClient, SonateClientError
from sonate.clients.latency import MediaReference, SpeechLatency, measure_speech
from sonate.clients.recorder import MediaRecorder
from sonate.models.errors import SonateInputError
from sonate.streamer.protocol import (
    KIND_AUDIO,
    MAX_PIECE_CHARS,
    ClientMessage,
    InputFlush,
    InputInterrupt,
    InputText,
    MediaMessage,
    MediaSubscribe,
    SessionUpdate,
    encode_client_message,
)

__all__ = ["ClientOptions", "ClientSession", "Event", "SessionInfo", "SonateClient", "SonateClientError", "TextPiece"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0  # the websocket handshake plus `session.ready`, and WebRTC reaching "connected"
WS_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the largest message the client accepts (a JPEG frame is far smaller)


@dataclass
class TextPiece:
    """A piece of text sent: `id` on the wire, `sent_at` (monotonic s), and its offsets once accepted."""

    text: str
    id: int
    sent_at: float
    text_start: int | None = None
    text_end: int | None = None


@dataclass(frozen=True)
class Event:
    """One event from the server (`data` as the protocol defines it) and when it arrived (monotonic s)."""

    data: dict
    received_at: float

    @property
    def type(self) -> str:
        return str(self.data.get("type"))

    def __getitem__(self, name: str) -> object:
        return self.data[name]

    def get(self, name: str, default: object = None) -> object:
        return self.data.get(name, default)


EventCallback = Callable[[Event], None]


@dataclass
class ClientOptions:
    """How a ClientSession connects.

    record_to: write the received media to this MP4; webrtc: receive media over WebRTC (recorded by the session's
    MediaRecorder); reference: also subscribe to media on the websocket and keep its audio, which lets
    `speech_latencies` find each utterance in the WebRTC media; ice_servers: STUN/TURN servers (default none:
    host candidates, for a server on the same host or LAN); connect_timeout_s: seconds for each connection.
    """

    record_to: str | Path | None = None
    webrtc: bool = True
    reference: bool = False
    ice_servers: list[RTCIceServer] = field(default_factory=list)
    connect_timeout_s: float = CONNECT_TIMEOUT_S


class ClientSession:
    """One session seen from a client: the websocket (text in, events out) and a WebRTC viewer (media in).

    `connect()` (or `async with`) opens the websocket, waits for `session.ready`, then connects WebRTC and starts
    recording. Events are kept in `history` and handed to `on_event` callbacks and `iter_events()` iterators.
    `close()` ends the viewer (DELETE of its WHEP resource), the websocket and the recording; it does not delete
    the session (`SonateClient.delete_session` does).
    """

    def __init__(self, client: SonateClient, info: SessionInfo, options: ClientOptions | None = None) -> None:
        self.client = client
        self.info = info
        self.options = options or ClientOptions()
        self.ready: dict | None = None  # the `session.ready` event: sample_rate, fps, width, height, ...
        self.history: list[Event] = []  # every event received, in order
        self.pieces: list[TextPiece] = []  # every text piece sent, in order
        self.recorder: MediaRecorder | None = None
        self.reference: MediaReference | None = None
        self.closed_reason: str | None = None  # set when the socket ends (`session.closed` reason, or why)
        self._callbacks: list[EventCallback] = []
        self._queues: list[asyncio.Queue[Event | None]] = []
        self._changed = asyncio.Event()  # set whenever an event arrives or the socket ends
        self._ws: ClientConnection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._pc: RTCPeerConnection | None = None
        self._viewer_url: str | None = None
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the websocket and, with `options.webrtc`, the WebRTC viewer (waits until media can flow)."""
        timeout = self.options.connect_timeout_s
        try:
            self._ws = await asyncio.wait_for(
                connect(self.info.ws_url, proxy=None, compression=None, max_size=WS_MAX_MESSAGE_BYTES), timeout
            )
        except InvalidStatus as exc:
            raise SonateClientError(f"the websocket was refused: HTTP {exc.response.status_code}",
                                    status=exc.response.status_code, code="websocket_refused") from None  # fmt: skip
        except (OSError, InvalidURI, TimeoutError) as exc:
            raise SonateClientError(f"cannot open the websocket {self.info.ws_url}: {exc or 'timed out'}") from None
        self._receiver = asyncio.create_task(self._receive(), name=f"sonate-client-ws-{self.info.session_id}")
        ready = await self.wait_for("session.ready", timeout=timeout)
        self.ready = ready.data
        if self.options.reference:
            self.reference = MediaReference(int(ready["sample_rate"]))
            await self.send(MediaSubscribe())
        if self.options.webrtc:
            await self._connect_webrtc()

    async def close(self) -> None:
        """End the viewer, the websocket and the recording (the MP4 is complete afterwards); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._viewer_url is not None:
                with contextlib.suppress(SonateClientError):  # gone already: the session was deleted or expired
                    await self.client.request("DELETE", self._viewer_url)
                self._viewer_url = None
            if self._pc is not None:
                await self._pc.close()
            if self._ws is not None:
                await self._ws.close()
        finally:
            if self._receiver is not None:
                self._receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._receiver
                self._receiver = None
            if self.recorder is not None:
                await self.recorder.stop()

    async def __aenter__(self) -> ClientSession:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    # --- text in -------------------------------------------------------------------------------------------------

    async def send(self, message: ClientMessage) -> None:
        """Send one protocol message (see `sonate.streamer.protocol`)."""
        if self._ws is None:
            raise RuntimeError("the session is not connected: call connect() first")
        try:
            await self._ws.send(encode_client_message(message))
        except ConnectionClosed:
            raise SonateClientError(f"the session's websocket is closed ({self.closed_reason or 'closed'})",
                                    code="session_closed") from None  # fmt: skip

    async def send_text(self, text: str) -> TextPiece:
        """Append one piece of text (at most 4096 characters) to what the avatar says."""
        piece = TextPiece(text, len(self.pieces), time.monotonic())
        self.pieces.append(piece)
        await self.send(InputText(text, piece.id))
        return piece

    async def stream_text(self, text: str, words_per_second: float | None = None) -> list[TextPiece]:
        """Send `text` word by word at `words_per_second` (paced from one start), or at once when None."""
        if words_per_second is not None and words_per_second <= 0:
            raise SonateInputError(f"words per second must be positive, got {words_per_second}")
        if words_per_second is None:
            pieces = [text[i : i + MAX_PIECE_CHARS] for i in range(0, len(text), MAX_PIECE_CHARS)]
        else:
            pieces = re.findall(r"\s*\S+\s*", text) or [text]
        start, sent = time.monotonic(), []
        for index, piece in enumerate(pieces):
            if words_per_second is not None:
                await asyncio.sleep(max(0.0, start + index / words_per_second - time.monotonic()))
            sent.append(await self.send_text(piece))
        return sent

    async def flush(self) -> None:
        """Speak the text still waiting now."""
        await self.send(InputFlush())

    async def interrupt(self) -> None:
        """Barge in: the server answers `input.interrupted` with what was played."""
        await self.send(InputInterrupt())

    async def update(
        self, *, instruction: str | None = None, voice_id: str | None = None, avatar_id: str | None = None
    ) -> None:
        """Change the instruction, voice or avatar from the next chunk on (answered by `session.updated`)."""
        await self.send(SessionUpdate(instruction, voice_id, avatar_id))

    # --- events out ----------------------------------------------------------------------------------------------

    def on_event(self, callback: EventCallback) -> None:
        """Call `callback(event)` for every event from now on (on the event loop; exceptions are logged)."""
        self._callbacks.append(callback)

    async def iter_events(self) -> AsyncIterator[Event]:
        """Every event from now on, until the websocket closes."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.remove(queue)

    async def wait_for(
        self, kind: str, predicate: Callable[[Event], bool] | None = None, timeout: float = 30.0, since: int = 0
    ) -> Event:
        """The first event of type `kind` in `history[since:]` (arrived already or to come) that `predicate` accepts.

        Raises TimeoutError after `timeout` seconds and SonateClientError when the socket closes first.
        """
        index = since
        async with asyncio.timeout(timeout):
            while True:
                while index < len(self.history):
                    event = self.history[index]
                    index += 1
                    if event.type == kind and (predicate is None or predicate(event)):
                        return event
                if self.closed_reason is not None:
                    raise SonateClientError(f"the session's websocket closed ({self.closed_reason}) "
                                            f"before {kind}", code="session_closed")  # fmt: skip
                self._changed.clear()
                await self._changed.wait()

    def speech_latencies(self) -> list[SpeechLatency]:
        """Per `speech.started` so far: when its text was sent and when its first phoneme reached this client.

        The WebRTC figures need `options.reference` (and `options.webrtc`); read them after `close()` for the
        whole recording.
        """
        started = [(event.data, event.received_at) for event in self.history if event.type == "speech.started"]
        sent = [(p.text_start, p.sent_at) for p in self.pieces if p.text_start is not None]
        return measure_speech(started, sent, self.recorder, self.reference)

    # --- internals -----------------------------------------------------------------------------------------------

    async def _receive(self) -> None:
        """Own the websocket's receiving side: events into the history, reference audio into the reference."""
        assert self._ws is not None
        try:
            async for message in self._ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    self._take_media(message, now)
                    continue
                event = Event(json.loads(message), now)
                if event.type == "input.accepted" and isinstance(event.get("id"), int):
                    self._accepted(event)
                elif event.type == "session.closed":
                    self.closed_reason = str(event.get("reason"))
                elif event.type == "error":
                    log.warning("session %s: server error %s: %s", self.info.session_id, event.get("code"),
                                event.get("message"))  # fmt: skip
                self._dispatch(event)
            self.closed_reason = self.closed_reason or "closed by the server"
        except ConnectionClosed as exc:
            self.closed_reason = self.closed_reason or f"connection lost: {exc}"
        except asyncio.CancelledError:
            self.closed_reason = self.closed_reason or "closed by the client"
            raise
        except Exception:
            log.exception("session %s: the websocket receiver failed", self.info.session_id)
            self.closed_reason = self.closed_reason or "receiver failed"
        finally:
            self._changed.set()
            for queue in self._queues:
                queue.put_nowait(None)

    def _take_media(self, message: bytes, arrival: float) -> None:
        if self.reference is None:
            return
        try:
            media = MediaMessage.decode(message)
        except ValueError:
            log.warning("session %s: a binary message is not media", self.info.session_id)
            return
        if media.kind == KIND_AUDIO:
            pcm = np.frombuffer(media.payload, dtype="<i2").astype(np.float32) / 32767
            self.reference.add(media.pts, pcm, arrival)

    def _accepted(self, event: Event) -> None:
        piece_id = int(event["id"])  # type: ignore[call-overload]
        if 0 <= piece_id < len(self.pieces):
            piece = self.pieces[piece_id]
            piece.text_start, piece.text_end = int(event["text_start"]), int(event["text_end"])  # type: ignore[call-overload]

    def _dispatch(self, event: Event) -> None:
        self.history.append(event)
        self._changed.set()
        for queue in self._queues:
            queue.put_nowait(event)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("session %s: an event callback failed", self.info.session_id)

    async def _connect_webrtc(self) -> None:
        """Offer recvonly audio and video, POST it to the WHEP URL, apply the answer, wait for "connected"."""
        assert self.ready is not None
        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.options.ice_servers)))
        changed = asyncio.Event()
        pc.on("connectionstatechange", changed.set)
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())  # gathers the ICE candidates: no trickle
        answer = await self.client.request("POST", self.info.whep_url, pc.localDescription.sdp.encode(),
                                           "application/sdp")  # fmt: skip
        location = answer.headers.get("location")
        if answer.status != 201 or location is None:
            raise SonateClientError(f"the WHEP endpoint answered {answer.status} without a Location",
                                    status=answer.status, code="bad_answer")  # fmt: skip
        self._viewer_url = urllib.parse.urljoin(self.info.whep_url, location)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.body.decode(), type="answer"))
        self.recorder = MediaRecorder(
            sample_rate=int(self.ready["sample_rate"]),
            fps=int(self.ready["fps"]),
            width=int(self.ready["width"]),
            height=int(self.ready["height"]),
            path=self.options.record_to,
            session_id=self.info.session_id,
        )
        for transceiver in pc.getTransceivers():
            self.recorder.add_track(transceiver.receiver.track)
        try:
            async with asyncio.timeout(self.options.connect_timeout_s):
                while pc.connectionState != "connected":
                    if pc.connectionState in ("failed", "closed"):
                        raise SonateClientError(f"the WebRTC connection {pc.connectionState}", code="webrtc_failed")
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            raise SonateClientError(
                f"WebRTC did not connect within {self.options.connect_timeout_s:g} s: is UDP to the server open?",
                code="webrtc_timeout",
            ) from None
