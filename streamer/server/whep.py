"""A session's WebRTC viewers over WHEP (draft-ietf-wish-whep, which follows WHIP, RFC 9725).

`POST /v1/sessions/{id}/whep` with an SDP offer → 201 with the answer, the viewer's resource in `Location` and
its ICE session's `ETag`. The resource takes `PATCH` with a trickle ICE fragment (`application/trickle-ice-sdpfrag`,
RFC 8840): candidates → 204; an ICE restart (other credentials) → 422, since aiortc cannot restart ICE on a live
connection (a client ends the viewer and POSTs a new offer instead). `If-Match` is checked on PATCH and DELETE
(412 on a mismatch); `DELETE` ends the viewer; `OPTIONS` lists the methods and the patch format.
"""

from __future__ import annotations

import urllib.parse

from fastapi import APIRouter, Request, Response

from sonate.models.errors import SonateInputError
from sonate.streamer.server.auth import SessionAccess
from sonate.streamer.server.dependencies import AppRegistry, hosted_or_404, read_body
from sonate.streamer.server.errors import ApiError, allowed_methods
from sonate.streamer.server.registry import Registry
from sonate.streamer.server.sdpfrag import parse_fragment
from sonate.streamer.server.webrtc import IceSession

MAX_SDP_BYTES = 64 * 1024  # an SDP offer is a few kB
SDPFRAG = "application/trickle-ice-sdpfrag"

router = APIRouter(prefix="/v1/sessions", dependencies=[SessionAccess])  # the session's token or an API key


@router.post("/{session_id}/whep", status_code=201)
async def whep_offer(session_id: str, request: Request, registry: AppRegistry) -> Response:
    """A WebRTC viewer joins: its SDP offer in, 201 with the answer, the viewer's `Location` and its `ETag`."""
    hosted = hosted_or_404(registry, session_id)
    _require_content_type(request, "application/sdp", "the SDP offer")
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
    ice = registry.viewers.ice_session(session_id, viewer_id)
    if session_id not in registry.sessions or ice is None:  # closed while the answer was made
        await registry.viewers.close(viewer_id)
        hosted_or_404(registry, session_id)
        raise ApiError(404, "viewer_not_found", "the viewer ended before its answer was sent")
    location = f"/v1/sessions/{session_id}/whep/{viewer_id}"
    if (token := request.query_params.get("token")) is not None:  # a WHEP client uses the Location as it is
        location += "?" + urllib.parse.urlencode({"token": token})
    headers = {"Location": location, "ETag": ice.etag, "Accept-Patch": SDPFRAG}
    return Response(answer, status_code=201, media_type="application/sdp", headers=headers)


@router.patch("/{session_id}/whep/{viewer_id}", status_code=204)
async def whep_patch(session_id: str, viewer_id: str, request: Request, registry: AppRegistry) -> Response:
    """Trickled ICE candidates for the viewer's connection → 204; an ICE restart → 422 (not supported)."""
    ice = _ice_or_404(registry, session_id, viewer_id)
    _require_content_type(request, SDPFRAG, "the trickle ICE fragment")
    _check_if_match(request, ice)
    try:
        fragment = parse_fragment((await read_body(request, MAX_SDP_BYTES)).decode("utf-8"))
    except (UnicodeDecodeError, SonateInputError) as exc:
        raise ApiError(400, "bad_sdpfrag", f"not a trickle ICE SDP fragment: {exc}") from None
    if (fragment.ufrag or ice.ufrag) != ice.ufrag or (fragment.pwd or ice.pwd) != ice.pwd:
        raise ApiError(
            422,
            "ice_restart_unsupported",
            "the fragment's ICE credentials differ from the offer's: an ICE restart, which this server cannot do; "
            "DELETE this viewer and POST a new offer",
        )
    try:
        added = await registry.viewers.add_candidates(viewer_id, fragment)
    except SonateInputError as exc:
        raise ApiError(400, "bad_sdpfrag", str(exc)) from None
    if not added:  # ended meanwhile
        _ice_or_404(registry, session_id, viewer_id)
    return Response(status_code=204)


@router.delete("/{session_id}/whep/{viewer_id}", status_code=204)
async def whep_delete(session_id: str, viewer_id: str, request: Request, registry: AppRegistry) -> Response:
    """A WebRTC viewer leaves."""
    _check_if_match(request, _ice_or_404(registry, session_id, viewer_id))
    if not await registry.viewers.close(viewer_id):
        _ice_or_404(registry, session_id, viewer_id)  # ended meanwhile: raises the 404
    return Response(status_code=204)


@router.options("/{session_id}/whep", status_code=204)
async def whep_endpoint_options(session_id: str, request: Request, registry: AppRegistry) -> Response:
    """The endpoint's methods (`Allow`) and the resource's patch format (`Accept-Patch`)."""
    hosted_or_404(registry, session_id)
    return Response(status_code=204, headers={"Allow": allowed_methods(request), "Accept-Patch": SDPFRAG})


@router.options("/{session_id}/whep/{viewer_id}", status_code=204)
async def whep_resource_options(session_id: str, viewer_id: str, request: Request, registry: AppRegistry) -> Response:
    """The resource's methods (`Allow`) and its patch format (`Accept-Patch`)."""
    _ice_or_404(registry, session_id, viewer_id)
    return Response(status_code=204, headers={"Allow": allowed_methods(request), "Accept-Patch": SDPFRAG})


def _ice_or_404(registry: Registry, session_id: str, viewer_id: str) -> IceSession:
    """The viewer's ICE session, or a 404 (`session_not_found` or `viewer_not_found`)."""
    hosted_or_404(registry, session_id)
    ice = registry.viewers.ice_session(session_id, viewer_id)
    if ice is None:
        raise ApiError(404, "viewer_not_found", f"no viewer {viewer_id!r} in session {session_id!r}")
    return ice


def _require_content_type(request: Request, expected: str, what: str) -> None:
    """A 415 unless the request's media type is `expected`."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != expected:
        raise ApiError(415, "unsupported_media_type", f"send {what} with Content-Type: {expected}")


def _check_if_match(request: Request, ice: IceSession) -> None:
    """A 412 when `If-Match` names neither `*` nor the ICE session's entity tag (strong comparison)."""
    header = request.headers.get("if-match")
    if header is not None and not ({"*", ice.etag} & {tag.strip() for tag in header.split(",")}):
        raise ApiError(412, "precondition_failed", f"If-Match {header!r} does not match this ICE session's ETag")
