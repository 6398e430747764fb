"""One websocket of a session: client messages in; events, and paced media when subscribed, out.

The connection owns three tasks besides the receive loop it runs itself: the *sender* (the only writer of
the socket), the *event forwarder* (the session's playback events) and, while media is subscribed, the
*media pump*. The pump paces media from the session's playout clock exactly as the WebRTC tracks do: the media
of tick t goes out at `playout.start_time + t · TICK`, so what a client receives is what plays now (an
interruption therefore never sends media that was dropped). Outgoing messages wait in an `Outbox`: control
messages in order, media in a short bounded queue that drops its oldest message when the client reads too
slowly — the engine never waits for a socket. A task that fails (anything but its expected ending) is logged
and ends this connection with close code 1011 (after an `internal_error` event, unless the sender is what
failed), while the session and its other connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from sonate.models.errors import SonateInputError
from sonate.streamer.media.playout import TICK, Playout
from sonate.streamer.protocol import (
    KIND_AUDIO,
    KIND_VIDEO,
    MEDIA_HEADER,
    InputFlush,
    InputInterrupt,
    InputText,
    MediaMessage,
    MediaSubscribe,
    MediaUnsubscribe,
    ProtocolError,
    SessionUpdate,
    error_event,
    parse_client_message,
    pcm16,
)
from sonate.streamer.server.registry import Hosted, Registry, UnknownReference
from sonate.streamer.server.webrtc import ViewerStart

log = logging.getLogger(__name__)

MEDIA_QUEUE_MESSAGES = 100  # media messages waiting for a slow client before the oldest is dropped (~1.3 s)
CONTROL_QUEUE_MESSAGES = 1000  # control messages waiting before the client is dropped as too slow
MAX_MEDIA_LAG = 0.2  # seconds the pump may fall behind the playout clock before it skips ahead
JPEG_QSCALE = 3  # mjpeg quantizer scale: 2 is the best quality, 31 the worst
CLOSE_NORMAL = 1000
CLOSE_TOO_SLOW = 1008  # policy violation: the client does not read its events
CLOSE_INTERNAL_ERROR = 1011  # the server failed on this connection


@dataclass(frozen=True)
class Closing:
    """Outbox marker: close the socket with `code` and `reason` after what is queued before it."""

    code: int
    reason: str


class Outbox:
    """Messages waiting to be sent: control messages (never dropped, bounded) first, then media (drops oldest)."""

    def __init__(self) -> None:
        self.control: deque[object] = deque()
        self.media: deque[bytes] = deque(maxlen=MEDIA_QUEUE_MESSAGES)
        self.dropped = 0  # media messages dropped for a slow client
        self.overflowed = False
        self._ready = asyncio.Event()

    def put_event(self, event: dict) -> None:
        if len(self.control) >= CONTROL_QUEUE_MESSAGES:
            self.overflowed = True
            self.control.clear()
            self.control.append(Closing(CLOSE_TOO_SLOW, "the client reads too slowly"))
        elif not self.overflowed:
            self.control.append(json.dumps(event))
        self._ready.set()

    def put_media(self, message: bytes) -> None:
        if len(self.media) == self.media.maxlen:
            self.dropped += 1
        self.media.append(message)
        self._ready.set()

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code` and `reason` once every control message before this is sent."""
        self.control.append(Closing(code, reason))
        self._ready.set()

    def clear_media(self) -> None:
        self.media.clear()

    async def get(self) -> object:
        while not self.control and not self.media:
            self._ready.clear()
            await self._ready.wait()
        return self.control.popleft() if self.control else self.media.popleft()


class JpegEncoder:
    """RGB frames → JPEG bytes with FFmpeg's mjpeg encoder (intra-only: every packet is a whole JPEG)."""

    def __init__(self, width: int, height: int, fps: int) -> None:
        self.codec = av.CodecContext.create("mjpeg", "w")
        self.codec.width, self.codec.height = width, height
        self.codec.pix_fmt = "yuvj420p"
        self.codec.time_base = Fraction(1, fps)
        self.codec.options = {"qmin": str(JPEG_QSCALE), "qmax": str(JPEG_QSCALE)}

    def encode(self, frame: np.ndarray) -> bytes:
        """uint8 RGB [H, W, 3] → one JPEG image."""
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuvj420p")
        return b"".join(bytes(packet) for packet in self.codec.encode(picture))


class SocketConnection:
    """Serves one accepted websocket of a hosted session until either side ends it."""

    def __init__(self, websocket: WebSocket, hosted: Hosted, registry: Registry) -> None:
        self.websocket = websocket
        self.hosted = hosted
        self.session = hosted.session
        self.registry = registry
        self.outbox = Outbox()
        self._sender: asyncio.Task | None = None
        self._forwarder: asyncio.Task | None = None
        self._pump: asyncio.Task | None = None

    async def run(self) -> None:
        """Accept, greet with `session.ready`, serve client messages until disconnect, then free everything."""
        sid = self.session.id
        await self.websocket.accept()
        self.registry.connect(self.hosted)
        log.info("session %s: websocket connected", sid)
        try:
            self._sender = asyncio.create_task(self._send_loop(), name=f"sonate-ws-send-{sid}")
            self._forwarder = asyncio.create_task(self._supervise("event forwarder", self._forward_events),
                                                  name=f"sonate-ws-events-{sid}")  # fmt: skip
            await asyncio.sleep(0)  # let the forwarder subscribe to the session's events before any input
            self.outbox.put_event(self._ready_event())
            await self._receive_loop()
        finally:
            await self._unsubscribe()
            for task in (self._forwarder, self._sender):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.registry.disconnect(self.hosted)
            self.registry.stats.media_dropped += self.outbox.dropped
            log.info("session %s: websocket gone (%d media messages dropped)", sid, self.outbox.dropped)

    async def _supervise(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run the connection's task `name` (the event forwarder, the media pump) until it ends or is cancelled;
        one that fails is logged and ends the connection: an `internal_error` event, then close code 1011. The
        receive loop then sees the close and `run` frees the rest."""
        try:
            await work()
        except Exception:
            log.exception("session %s: websocket %s failed: closing the connection", self.session.id, name)
            self.outbox.put_event(error_event("internal_error", f"the server's websocket {name} failed; reconnect"))
            self.outbox.close(CLOSE_INTERNAL_ERROR, "internal_error")

    # --- reading -----------------------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                self.outbox.put_event(error_event("invalid_message", "send JSON text messages, not binary ones"))
                continue
            try:
                request = parse_client_message(raw)
            except ProtocolError as exc:
                self.outbox.put_event(error_event(exc.code, exc.message, exc.message_id))
                continue
            try:
                await self._handle(request)
            except ProtocolError as exc:
                self.outbox.put_event(error_event(exc.code, exc.message, request.id))
            except UnknownReference as exc:
                self.outbox.put_event(error_event(exc.code, str(exc), request.id))
            except SonateInputError as exc:
                code = "session_closed" if self.session.closed else "invalid_input"
                self.outbox.put_event(error_event(code, str(exc), request.id))
            except Exception:
                log.exception("session %s: %s failed", self.session.id, type(request).__name__)
                self.outbox.put_event(error_event("internal_error", "the server failed on this message", request.id))

    async def _handle(self, request: object) -> None:
        session = self.session
        if session.closed:
            raise ProtocolError("session_closed", f"session {session.id} is closed")
        match request:
            case InputText(text=text, id=message_id):
                try:
                    start, end = session.push_text(text)
                except SonateInputError as exc:
                    raise ProtocolError("too_much_text", str(exc)) from None
                self._reply({"type": "input.accepted", "text_start": start, "text_end": end}, message_id)
            case InputFlush():
                session.flush()
            case InputInterrupt():
                session.interrupt()  # the session emits `input.interrupted`; the forwarder sends it
            case SessionUpdate(instruction=instruction, voice_id=voice_id, avatar_id=avatar_id, id=message_id):
                voice, avatar = await self.registry.resolve(voice_id, avatar_id)
                await session.update(instruction=instruction, voice=voice, avatar=avatar)
                self.hosted.voice_id = voice_id or self.hosted.voice_id
                self.hosted.avatar_id = avatar_id or self.hosted.avatar_id
                updated = {"voice_id": self.hosted.voice_id, "avatar_id": self.hosted.avatar_id}
                self._reply({"type": "session.updated", **updated}, message_id)
            case MediaSubscribe(id=message_id):
                await self._subscribe()
                audio = {"encoding": "pcm16le", "sample_rate": session.playout.sample_rate, "channels": 1}
                video = {"encoding": "jpeg", "fps": session.playout.fps}
                media = {"header_bytes": MEDIA_HEADER.size, "audio": audio, "video": video}
                self._reply({"type": "media.subscribed", **media}, message_id)
            case MediaUnsubscribe(id=message_id):
                await self._unsubscribe()
                self._reply({"type": "media.unsubscribed"}, message_id)

    def _reply(self, event: dict, message_id: str | int | None) -> None:
        self.outbox.put_event(event if message_id is None else {**event, "id": message_id})

    def _ready_event(self) -> dict:
        cfg = self.registry.engine.cfg
        return {
            "type": "session.ready",
            "session_id": self.session.id,
            "sample_rate": cfg.sample_rate,
            "fps": cfg.video_fps,
            "width": cfg.video_width,
            "height": cfg.video_height,
            "chunk_seconds": cfg.chunk_seconds,
            "tick_seconds": TICK,
            "voice_id": self.hosted.voice_id,
            "avatar_id": self.hosted.avatar_id,
        }

    # --- writing -----------------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """The only writer of the socket; ends when it is closed either way. If it fails, nothing else can send:
        it logs the failure and closes the socket at once with code 1011."""
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, Closing):
                    await self.websocket.close(item.code, item.reason)
                    return
                if isinstance(item, bytes):
                    await self.websocket.send_bytes(item)
                else:
                    await self.websocket.send_text(item)  # type: ignore[arg-type]
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            log.debug("session %s: websocket send ended: %r", self.session.id, exc)
        except Exception:
            log.exception("session %s: websocket sender failed: closing the connection", self.session.id)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.websocket.close(CLOSE_INTERNAL_ERROR, "internal_error")

    async def _forward_events(self) -> None:
        """Send the session's playback events; when the session closes, say why and close the socket."""
        if not self.session.closed:  # (checked in the same step that subscribes: it cannot close in between)
            async for event in self.session.events():
                self.outbox.put_event(event)
        reason = self.session.close_reason or "closed"
        self.outbox.put_event({"type": "session.closed", "session_id": self.session.id, "reason": reason})
        self.outbox.close(CLOSE_NORMAL, reason)

    # --- media -------------------------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        if self._pump is not None:
            return
        self.session.add_viewer()
        self.hosted.media_websockets += 1
        self._pump = asyncio.create_task(self._supervise("media pump", self._pump_media),
                                         name=f"sonate-ws-media-{self.session.id}")  # fmt: skip

    async def _unsubscribe(self) -> None:
        if self._pump is None:
            return
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        self._pump = None
        self.outbox.clear_media()
        self.session.remove_viewer()
        self.hosted.media_websockets -= 1

    async def _pump_media(self) -> None:
        """Send each tick's audio (and each new frame) when the playout plays it."""
        playout = self.session.playout
        await playout.started.wait()
        assert playout.start_time is not None
        encoder = JpegEncoder(playout.width, playout.height, playout.fps)
        loop = asyncio.get_running_loop()
        tick = ViewerStart().first_tick(playout)
        sent_frame = False
        while True:
            late = playout.clock() - (playout.start_time + tick * TICK)  # seconds behind the clock
            if late < 0:
                await asyncio.sleep(-late)
            elif late > MAX_MEDIA_LAG:
                skipped = int(late / TICK)
                log.debug("session %s: media pump %.0f ms late, skips %d ticks", self.session.id, late * 1e3,
                          skipped)  # fmt: skip
                self.outbox.dropped += skipped
                tick += skipped
                continue
            position = playout.media_at(tick).position
            if position is not None:
                await self._send_tick(playout, tick, position, encoder, loop, not sent_frame)
                sent_frame = True
            tick += 1

    async def _send_tick(
        self,
        playout: Playout,
        tick: int,
        position: int,
        encoder: JpegEncoder,
        loop: asyncio.AbstractEventLoop,
        first: bool,
    ) -> None:
        """Queue tick `tick`'s audio and, when a frame starts there (or this is the first), its frame."""
        pts = position * TICK  # seconds of session media time
        audio = playout.audio(tick)
        if position % playout.ticks_per_frame == 0 or first:
            frame = playout.frame(tick)
            jpeg = await loop.run_in_executor(None, encoder.encode, frame)
            frame_pts = (position - position % playout.ticks_per_frame) * TICK
            self.outbox.put_media(MediaMessage(KIND_VIDEO, frame_pts, jpeg).encode())
        self.outbox.put_media(MediaMessage(KIND_AUDIO, pts, pcm16(audio)).encode())
