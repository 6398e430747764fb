"""The routes of a session: create, describe and delete it, and its websocket (its WebRTC viewers are `whep`'s).

Creating one takes an API key (on a server with keys); the rest take the key or the session's own token."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocket

from sonate.models.errors import SonateInputError
from sonate.streamer.engine.engine import EngineFailed, EngineFull
from sonate.streamer.protocol import ProtocolError, SessionCreate, error_body
from sonate.streamer.server.auth import CallerKey, SessionAccess, bearer_of, check_limit, check_session_access
from sonate.streamer.server.dependencies import AppConfig, AppRegistry, hosted_or_404, read_body
from sonate.streamer.server.errors import ApiError
from sonate.streamer.server.registry import UnknownReference
from sonate.streamer.server.websocket import SocketConnection

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/sessions")


@router.post("", status_code=201)
async def create_session(request: Request, registry: AppRegistry, config: AppConfig, key: CallerKey) -> JSONResponse:
    """Open a session; 201 with its id, its token and the URLs (token included) of its websocket and WHEP
    endpoint; 429 when the API key has as many sessions open as it may."""
    try:
        body = SessionCreate.from_json(await read_body(request, config.max_body_bytes))
    except ProtocolError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    owner = check_limit(key, "sessions", registry.owned_by, config.retry_after_s)
    try:
        hosted = await registry.open(body.voice_id, body.avatar_id, body.instruction, body.seed, owner)
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
    log.info("session %s opened%s", session_id, f" with API key {owner}" if owner else "")
    base = str(request.base_url).rstrip("/")
    ws_base = "wss" + base[len("https") :] if base.startswith("https") else "ws" + base[len("http") :]
    content = {
        "session_id": session_id,
        "token": hosted.token,
        "ws_url": f"{ws_base}/v1/sessions/{session_id}/ws?token={hosted.token}",
        "whep_url": f"{base}/v1/sessions/{session_id}/whep?token={hosted.token}",
        "voice_id": hosted.voice_id,
        "avatar_id": hosted.avatar_id,
    }
    return JSONResponse(content, status_code=201, headers={"Location": f"/v1/sessions/{session_id}"})


@router.get("/{session_id}", dependencies=[SessionAccess])
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


@router.delete("/{session_id}", status_code=204, dependencies=[SessionAccess])
async def delete_session(session_id: str, registry: AppRegistry) -> Response:
    """Close the session, its viewers and its websockets (told `deleted`)."""
    if not await registry.close(session_id, "deleted"):
        hosted_or_404(registry, session_id)  # raises the 404
    return Response(status_code=204)


@router.websocket("/{session_id}/ws")
async def session_socket(
    websocket: WebSocket, session_id: str, registry: AppRegistry, config: AppConfig, token: str | None = None
) -> None:
    """The websocket session protocol (docs/protocol.md). Without the session's token (`?token=` or Bearer) or
    an API key it is refused with a 401 (another session's token: 403), an unknown session with a 404 (or close
    code 4401, 4403, 4404 where the server cannot answer a handshake with HTTP)."""
    try:
        check_session_access(config, registry, session_id, bearer_of(websocket.headers), token)
    except ApiError as exc:
        await _refuse(websocket, exc.status, exc.code, exc.message, exc.headers)
        return
    hosted = registry.sessions.get(session_id)
    if hosted is None:
        message = f"no session {session_id!r}: it was closed, expired or never existed"
        await _refuse(websocket, 404, "session_not_found", message)
        return
    await SocketConnection(websocket, hosted, registry).run()


async def _refuse(
    websocket: WebSocket, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    """Refuse a websocket handshake with an HTTP error, or close code 4000 + status where HTTP cannot answer."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error_body(code, message), status, headers))
    else:
        await websocket.close(code=4000 + status, reason=code)
