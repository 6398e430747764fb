"""The HTTP and websocket server: a thin FastAPI layer over the engine, on one port.

Sessions, voice and avatar uploads, WebRTC viewers (WHEP-style), the websocket session protocol, health,
Prometheus metrics and the demo page. Every error is JSON `{"error": {"code", "message"}}`; the API and the
websocket protocol are documented in docs/protocol.md. Run it with `sonate serve`.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import av
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocket

from sonate.models.errors import SonateInputError
from sonate.models.media_io import load_audio, load_image
from sonate.streamer.engine.engine import Engine, EngineFull
from sonate.streamer.media.playout import TICK
from sonate.streamer.protocol import ProtocolError, SessionCreate, error_body
from sonate.streamer.server import metrics as prometheus
from sonate.streamer.server.registry import Hosted, Library, NotFound, Registry, StorageFull, UnknownReference
from sonate.streamer.server.websocket import SocketConnection

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024  # an SDP offer is a few kB
MAX_IMAGE_PIXELS = 40_000_000  # larger pictures are refused before they are decoded
PLACEHOLDER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sonate</title></head>
<body><h1>sonate</h1><p>The server is running; the demo page is not installed.
See <code>docs/protocol.md</code> for the API, <a href="/healthz">/healthz</a> and <a href="/metrics">/metrics</a>.</p>
</body></html>
"""


@dataclass
class ServerConfig:
    """How the server listens and what it accepts.

    session_timeout_s: a session nobody is connected to (no websocket, no WebRTC viewer) closes after this
    long (s); max_body_bytes: the largest request body (uploads); voice clips must last min_voice_seconds to
    max_voice_seconds; max_uploads: stored voices (and, separately, avatars) besides the built-in ones;
    retry_after_s: what a 503 tells a client to wait (s); ice_timeout_s: how long a WebRTC viewer has to
    connect (s); ws_max_message_bytes: the websocket frame limit (larger messages close the socket).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    session_timeout_s: float = 60.0
    max_body_bytes: int = 10 * 1024 * 1024
    min_voice_seconds: float = 0.5
    max_voice_seconds: float = 30.0
    max_uploads: int = 256
    retry_after_s: int = 5
    ice_timeout_s: float = 15.0
    ws_max_message_bytes: int = 1024 * 1024


class ApiError(Exception):
    """An HTTP error answered as JSON `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `engine`; its lifespan starts and stops the engine, the sessions and the viewers."""
    config = config or ServerConfig()
    registry = Registry(engine, config.session_timeout_s, config.max_uploads, config.ice_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await registry.start()
        log.info("serving %d session slots (%s source)", engine.config.max_sessions, engine.config.source)
        try:
            yield
        finally:
            await registry.stop()
            await engine.stop()

    app = FastAPI(title="sonate", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.registry = registry
    app.state.engine = engine
    _install_error_handlers(app)
    cfg = engine.cfg

    # --- pages and health --------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(_demo_page())

    @app.get("/healthz")
    async def health() -> dict:
        return {
            "status": "ok",
            "sessions": len(registry.sessions),
            "max_sessions": engine.config.max_sessions,
            "source": engine.config.source,
            "sample_rate": cfg.sample_rate,
            "fps": cfg.video_fps,
            "width": cfg.video_width,
            "height": cfg.video_height,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        registry.sync_stats()
        return Response(_render_metrics(engine, registry), media_type=prometheus.CONTENT_TYPE)

    # --- sessions ----------------------------------------------------------------------------------------------

    @app.post("/v1/sessions", status_code=201)
    async def create_session(request: Request) -> JSONResponse:
        try:
            body = SessionCreate.from_json(await _read_body(request, config.max_body_bytes))
        except ProtocolError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        try:
            hosted = await registry.open(body.voice_id, body.avatar_id, body.instruction, body.seed)
        except EngineFull as exc:
            registry.stats.rejected_full += 1
            raise ApiError(503, "server_full", str(exc), {"Retry-After": str(config.retry_after_s)}) from None
        except UnknownReference as exc:
            raise ApiError(422, exc.code, str(exc)) from None
        except SonateInputError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        session_id = hosted.session.id
        base = str(request.base_url).rstrip("/")
        ws_base = "wss" + base[len("https") :] if base.startswith("https") else "ws" + base[len("http") :]
        content = {
            "session_id": session_id,
            "ws_url": f"{ws_base}/v1/sessions/{session_id}/ws",
            "whep_url": f"{base}/v1/sessions/{session_id}/whep",
            "voice_id": hosted.voice_id,
            "avatar_id": hosted.avatar_id,
        }
        return JSONResponse(content, status_code=201, headers={"Location": f"/v1/sessions/{session_id}"})

    @app.get("/v1/sessions/{session_id}")
    async def describe_session(session_id: str) -> dict:
        hosted = _hosted(registry, session_id)
        session = hosted.session
        return {
            "session_id": session_id,
            "voice_id": hosted.voice_id,
            "avatar_id": hosted.avatar_id,
            "websockets": hosted.websockets,
            "webrtc_viewers": hosted.webrtc_viewers,
            "playback_position": session.playback_position,
            "media_seconds": session.playout.position_seconds,
            "underruns": session.playout.underruns,
        }

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete_session(session_id: str) -> Response:
        if not await registry.close(session_id, "deleted"):
            _hosted(registry, session_id)  # raises the 404
        return Response(status_code=204)

    # --- WebRTC (WHEP-style) -----------------------------------------------------------------------------------

    @app.post("/v1/sessions/{session_id}/whep", status_code=201)
    async def whep_offer(session_id: str, request: Request) -> Response:
        hosted = _hosted(registry, session_id)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            raise ApiError(415, "unsupported_media_type", "send the SDP offer with Content-Type: application/sdp")
        body = await _read_body(request, MAX_SDP_BYTES)
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "bad_sdp", "the offer is not UTF-8 text; send an SDP offer") from None
        if not offer.lstrip().startswith("v=0"):
            raise ApiError(400, "bad_sdp", "the body is not an SDP offer (it must start with v=0)")
        try:
            answer, viewer_id = await registry.viewers.answer(offer, hosted.session.playout, session_id)
        except SonateInputError as exc:
            raise ApiError(400, "bad_sdp", str(exc)) from None
        if session_id not in registry.sessions:  # closed while the answer was made
            await registry.viewers.close(viewer_id)
            _hosted(registry, session_id)
        location = f"/v1/sessions/{session_id}/whep/{viewer_id}"
        return Response(answer, status_code=201, media_type="application/sdp", headers={"Location": location})

    @app.delete("/v1/sessions/{session_id}/whep/{viewer_id}", status_code=204)
    async def whep_delete(session_id: str, viewer_id: str) -> Response:
        _hosted(registry, session_id)
        if not await registry.viewers.close(viewer_id):
            raise ApiError(404, "viewer_not_found", f"no viewer {viewer_id!r} in session {session_id!r}")
        return Response(status_code=204)

    # --- the websocket -----------------------------------------------------------------------------------------

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def session_socket(websocket: WebSocket, session_id: str) -> None:
        hosted = registry.sessions.get(session_id)
        if hosted is None:
            message = f"no session {session_id!r}: it was closed, expired or never existed"
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(JSONResponse(error_body("session_not_found", message), 404))
            else:
                await websocket.close(code=4404, reason="session_not_found")
            return
        await SocketConnection(websocket, hosted, registry).run()

    # --- voices and avatars ------------------------------------------------------------------------------------

    @app.post("/v1/voices", status_code=201)
    async def upload_voice(request: Request) -> JSONResponse:
        body = await _read_body(request, config.max_body_bytes)
        longest = config.max_voice_seconds + TICK  # decode a little past the limit to tell "too long"
        try:
            voice = await asyncio.get_running_loop().run_in_executor(
                None, lambda: load_audio(body, cfg.sample_rate, max_seconds=longest)
            )
        except SonateInputError as exc:
            raise ApiError(422, "invalid_audio", str(exc)) from None
        seconds = len(voice) / cfg.sample_rate
        if not config.min_voice_seconds <= seconds <= config.max_voice_seconds:
            limits = f"{config.min_voice_seconds:g} to {config.max_voice_seconds:g} s"
            what = "too short" if seconds < config.min_voice_seconds else "too long"
            raise ApiError(422, "invalid_audio", f"the clip is {what} ({seconds:.2f} s); send {limits} of speech")
        try:
            reference = registry.voices.add(voice, {"seconds": round(seconds, 3), "sample_rate": cfg.sample_rate})
        except StorageFull as exc:
            raise ApiError(507, "storage_full", str(exc)) from None
        log.info("voice %s stored (%.2f s)", reference.id, seconds)
        return JSONResponse({"voice_id": reference.id, "seconds": round(seconds, 3)}, status_code=201)

    @app.post("/v1/avatars", status_code=201)
    async def upload_avatar(request: Request) -> JSONResponse:
        body = await _read_body(request, config.max_body_bytes)
        size = cfg.avatar_image_size
        try:
            avatar = await asyncio.get_running_loop().run_in_executor(None, _decode_avatar, body, size)
        except SonateInputError as exc:
            raise ApiError(422, "invalid_image", str(exc)) from None
        try:
            reference = registry.avatars.add(avatar, {"width": size, "height": size})
        except StorageFull as exc:
            raise ApiError(507, "storage_full", str(exc)) from None
        log.info("avatar %s stored", reference.id)
        return JSONResponse({"avatar_id": reference.id}, status_code=201)

    @app.get("/v1/voices")
    async def list_voices() -> dict:
        return {"voices": registry.voices.describe()}

    @app.get("/v1/avatars")
    async def list_avatars() -> dict:
        return {"avatars": registry.avatars.describe()}

    def remove_reference(store: Library, reference_id: str) -> Response:
        try:
            store.remove(reference_id)
        except NotFound as exc:
            raise ApiError(404, exc.code, exc.message) from None
        except SonateInputError as exc:
            raise ApiError(409, "builtin_reference", str(exc)) from None
        return Response(status_code=204)

    @app.delete("/v1/voices/{voice_id}", status_code=204)
    async def delete_voice(voice_id: str) -> Response:
        return remove_reference(registry.voices, voice_id)

    @app.delete("/v1/avatars/{avatar_id}", status_code=204)
    async def delete_avatar(avatar_id: str) -> Response:
        return remove_reference(registry.avatars, avatar_id)

    return app


# --- helpers -----------------------------------------------------------------------------------------------------


def _hosted(registry: Registry, session_id: str) -> Hosted:
    """The session, or a 404."""
    try:
        return registry.get(session_id)
    except NotFound as exc:
        raise ApiError(404, exc.code, exc.message) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes by its Content-Length and by what actually arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", f"the body may hold at most {limit} bytes, got {declared}")
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body may hold at most {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def _decode_avatar(body: bytes, size: int) -> np.ndarray:
    """`load_image`, after refusing pictures too large to decode safely (their header says how large)."""
    try:
        with av.open(io.BytesIO(body)) as container:
            streams = container.streams.video
            pixels = streams[0].codec_context.width * streams[0].codec_context.height if streams else 0
    except (av.FFmpegError, OSError, ValueError):
        pixels = 0  # load_image says what is wrong with it
    if pixels > MAX_IMAGE_PIXELS:
        raise SonateInputError(f"the picture has {pixels} pixels; send one of at most {MAX_IMAGE_PIXELS}")
    return load_image(body, size)


def _demo_page() -> str:
    page = resources.files("sonate.clients").joinpath("demo", "index.html")
    try:
        return page.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return PLACEHOLDER_PAGE


def _install_error_handlers(app: FastAPI) -> None:
    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "bad_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal_error", "the server failed on this request; see its log")


def _render_metrics(engine: Engine, registry: Registry) -> str:
    """Every figure of /metrics in the Prometheus text format."""
    out = prometheus.Exposition()
    stats, metrics = registry.stats, engine.metrics
    hosted = registry.sessions.values()
    out.gauge("sonate_sessions_active", "Open sessions.", len(registry.sessions))
    out.gauge("sonate_sessions_max", "Session slots of the engine.", engine.config.max_sessions)
    out.counter("sonate_sessions_opened_total", "Sessions opened.", stats.opened)
    out.counter("sonate_sessions_expired_total", "Sessions closed because nobody was connected.", stats.expired)
    out.counter("sonate_sessions_rejected_total", "Session requests refused: every slot taken.", stats.rejected_full)
    out.counter("sonate_chunks_total", "Chunks generated.", metrics.chunks)
    out.counter("sonate_batches_total", "Batches of chunks computed.", metrics.batches)
    out.counter("sonate_media_seconds_total", "Seconds of media generated.", metrics.media_seconds)
    out.counter("sonate_compute_seconds_total", "Seconds spent computing chunks.", metrics.compute_seconds)
    out.histogram("sonate_chunk_compute_seconds", "Compute time of one batch of chunks.", stats.compute)
    out.histogram("sonate_ttfa_seconds", "Time from a text's first piece to its speech playing.", stats.ttfa)
    out.histograms("sonate_batch_span_seconds", "Each part of a batch's trip through the compute process.",
                   metrics.batch_spans.histograms, "span")  # fmt: skip
    out.histograms("sonate_first_audio_span_seconds", "Each part of the time from text to its first audio.",
                   metrics.first_audio_spans.histograms, "span")  # fmt: skip
    out.counter("sonate_underruns_total", "Playout underruns (media expected but not ready).", engine.underruns)
    out.gauge("sonate_realtime_factor", "Compute seconds per media second so far.", metrics.rtf)
    viewers = {
        "webrtc": sum(h.webrtc_viewers for h in hosted),
        "websocket": sum(h.media_websockets for h in hosted),
    }
    out.gauges("sonate_viewers", "Viewers watching media, by transport.", viewers, "transport")
    out.gauge("sonate_websockets", "Open session websockets.", sum(h.websockets for h in hosted))
    out.counter("sonate_ws_media_dropped_total", "Websocket media messages dropped for slow clients.",
                stats.media_dropped)  # fmt: skip
    return out.render()
