"""The routes of a session: create, describe and delete it, its websocket, and its WebRTC viewers (WHEP-style:
POST an SDP offer, 201 with the answer and a `Location`, DELETE that to leave)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocket

from sonate.models.errors import SonateInputError
from sonate.streamer.engine.engine import EngineFailed, EngineFull
from sonate.streamer.protocol import ProtocolError, SessionCreate, error_body
from sonate.streamer.server.dependencies import AppConfig, AppRegistry, hosted_or_404, read_body
from sonate.streamer.server.errors import ApiError
from sonate.streamer.server.registry import UnknownReference
from sonate.streamer.server.websocket import SocketConnection

MAX_SDP_BYTES = 64 * 1024  # an SDP offer is a few kB

router = APIRouter(prefix="/v1/sessions")


@router.post("", status_code=201)
async def create_session(request: Request, registry: AppRegistry, config: AppConfig) -> JSONResponse:
    """Open a session; 201 with its id and the URLs of its websocket and WHEP endpoint."""
    try:
        body = SessionCreate.from_json(await read_body(request, config.max_body_bytes))
    except ProtocolError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    try:
        hosted = await registry.open(body.voice_id, body.avatar_id, body.instruction, body.seed)
    except EngineFull as exc:
        registry.stats.rejected_full += 1
        raise ApiError(503, "server_full", str(exc), {"Retry-After": str(config.retry_after_s)}) from None
    except EngineFailed as exc:
        raise ApiError(503, "engine_failed", str(exc)) from None
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


@router.get("/{session_id}")
async def describe_session(session_id: str, registry: AppRegistry) -> dict:
    """Who is connected to the session, what of its text has played, and its media clock (s)."""
    hosted = hosted_or_404(registry, session_id)
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


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, registry: AppRegistry) -> Response:
    """Close the session, its viewers and its websockets (told `deleted`)."""
    if not await registry.close(session_id, "deleted"):
        hosted_or_404(registry, session_id)  # raises the 404
    return Response(status_code=204)


@router.websocket("/{session_id}/ws")
async def session_socket(websocket: WebSocket, session_id: str, registry: AppRegistry) -> None:
    """The websocket session protocol (docs/protocol.md); an unknown session is refused with a 404 (or close
    code 4404 where the server cannot answer a handshake with HTTP)."""
    hosted = registry.sessions.get(session_id)
    if hosted is None:
        message = f"no session {session_id!r}: it was closed, expired or never existed"
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(error_body("session_not_found", message), 404))
        else:
            await websocket.close(code=4404, reason="session_not_found")
        return
    await SocketConnection(websocket, hosted, registry).run()


@router.post("/{session_id}/whep", status_code=201)
async def whep_offer(session_id: str, request: Request, registry: AppRegistry) -> Response:
    """A WebRTC viewer joins: its SDP offer in, 201 with the answer and the viewer's `Location`."""
    hosted = hosted_or_404(registry, session_id)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/sdp":
        raise ApiError(415, "unsupported_media_type", "send the SDP offer with Content-Type: application/sdp")
    body = await read_body(request, MAX_SDP_BYTES)
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
        hosted_or_404(registry, session_id)
    location = f"/v1/sessions/{session_id}/whep/{viewer_id}"
    return Response(answer, status_code=201, media_type="application/sdp", headers={"Location": location})


@router.delete("/{session_id}/whep/{viewer_id}", status_code=204)
async def whep_delete(session_id: str, viewer_id: str, registry: AppRegistry) -> Response:
    """A WebRTC viewer leaves."""
    hosted_or_404(registry, session_id)
    if not await registry.viewers.close(viewer_id):
        raise ApiError(404, "viewer_not_found", f"no viewer {viewer_id!r} in session {session_id!r}")
    return Response(status_code=204)
