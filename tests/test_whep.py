"""WHEP as draft-ietf-wish-whep (and WHIP, RFC 9725) says: statuses, headers, trickle ICE by PATCH, with real
aiortc peers against the real server on loopback (the clapper source), no mocks."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription, candidate_to_sdp

from sonate.models.errors import SonateInputError
from sonate.streamer.server.sdpfrag import parse_fragment
from tests.test_server import assert_error, new_session, running_server

SDP = {"Content-Type": "application/sdp"}
SDPFRAG = "application/trickle-ice-sdpfrag"
STRONG_ETAG = r'"[\x21\x23-\x7e]+"'  # RFC 9110 entity-tag, without the W/ of a weak one


def without_candidates(sdp: str) -> str:
    """The SDP with its `a=candidate` and `a=end-of-candidates` lines removed (what a trickling client sends)."""
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


def trickle_fragment(sdp: str, ufrag: str | None = None, pwd: str | None = None) -> str:
    """An RFC 8840 fragment of an offer's ICE credentials (or others given) and its first section's candidates."""
    media = SessionDescription.parse(sdp).media[0]
    lines = [f"a=ice-ufrag:{ufrag or media.ice.usernameFragment}", f"a=ice-pwd:{pwd or media.ice.password}"]
    lines += [f"m={media.kind} 9 {media.profile} {' '.join(map(str, media.fmt))}", f"a=mid:{media.rtp.muxId}"]
    lines += [f"a=candidate:{candidate_to_sdp(c)}" for c in media.ice_candidates] + ["a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n"


async def receiving_peer() -> RTCPeerConnection:
    """A peer offering recvonly audio and video, its candidates gathered (host only: loopback)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


@pytest.fixture
async def whep() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An HTTP client of a clapper server and the WHEP endpoint of one of its sessions."""
    with running_server(source="clapper") as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as http:
            yield http, f"/v1/sessions/{await new_session(http)}/whep"


def test_fragments_parse_per_section_and_refuse_what_they_cannot_read() -> None:
    fragment = parse_fragment(
        "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:EsAw\r\n"
        "a=candidate:3471623853 1 udp 1686052607 198.51.100.2 61765 typ srflx raddr 10.0.0.1 rport 8998\r\n"
        "a=end-of-candidates\r\n"
    )
    assert (fragment.ufrag, fragment.pwd, fragment.end_of_candidates) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1", True)
    assert [(c.sdpMid, c.ip, c.port, c.type) for c in fragment.candidates] == [
        ("0", "192.0.2.1", 61764, "host"),
        ("1", "198.51.100.2", 61765, "srflx"),
    ]
    assert fragment.candidates[1].relatedAddress == "10.0.0.1"
    no_m_line = parse_fragment("a=mid:0\na=candidate:1 1 udp 1 192.0.2.1 5000 typ host\n")
    assert [c.sdpMid for c in no_m_line.candidates] == ["0"] and not no_m_line.end_of_candidates
    with pytest.raises(SonateInputError, match="no a=mid"):
        parse_fragment("a=candidate:1 1 udp 1 192.0.2.1 5000 typ host\n")
    with pytest.raises(SonateInputError, match="not an ICE candidate"):
        parse_fragment("a=mid:0\na=candidate:1 1 udp\n")
    with pytest.raises(SonateInputError, match="differs"):
        parse_fragment("a=ice-ufrag:one\nm=audio 9 RTP/AVP 0\na=ice-ufrag:two\n")


async def test_whep_statuses_and_headers(whep: tuple[httpx.AsyncClient, str]) -> None:
    http, endpoint = whep
    options = await http.options(endpoint)
    assert options.status_code == 204
    assert (options.headers["allow"], options.headers["accept-patch"]) == ("OPTIONS, POST", SDPFRAG)
    not_allowed = await http.get(endpoint)
    assert_error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "OPTIONS, POST"
    assert (await http.options("/v1/voices")).headers["allow"] == "GET, POST"  # every method, not the first route's
    pc = await receiving_peer()
    try:
        offer = pc.localDescription.sdp
        assert_error(await http.post(endpoint, content=offer, headers={"Content-Type": "text/plain"}), 415,
                     "unsupported_media_type")  # fmt: skip
        created = await http.post(endpoint, content=offer, headers=SDP)
        assert created.status_code == 201, created.text
        location, etag = created.headers["location"], created.headers["etag"]
        assert re.fullmatch(rf"{endpoint}/\w+", location) and re.fullmatch(STRONG_ETAG, etag), (location, etag)
        assert created.headers["accept-patch"] == SDPFRAG
        options = await http.options(location)
        assert options.status_code == 204
        assert (options.headers["allow"], options.headers["accept-patch"]) == ("DELETE, OPTIONS, PATCH", SDPFRAG)
        not_allowed = await http.post(location, content=offer, headers=SDP)
        assert_error(not_allowed, 405, "method_not_allowed")
        assert not_allowed.headers["allow"] == "DELETE, OPTIONS, PATCH"

        fragment = trickle_fragment(offer)
        frag = {"Content-Type": SDPFRAG, "If-Match": etag}
        assert_error(await http.patch(location, content=fragment, headers={**frag, **SDP}), 415,
                     "unsupported_media_type")  # fmt: skip
        for stale in ('"not-the-etag"', f"W/{etag}"):  # a weak tag never matches strongly
            assert_error(await http.patch(location, content=fragment, headers={**frag, "If-Match": stale}), 412,
                         "precondition_failed")  # fmt: skip
        assert_error(await http.patch(location, content=b"a=mid:0\r\na=candidate:1 1\r\n", headers=frag), 400,
                     "bad_sdpfrag")  # fmt: skip
        unknown_mid = fragment.replace("a=mid:0", "a=mid:7")
        assert_error(await http.patch(location, content=unknown_mid, headers=frag), 400, "bad_sdpfrag")
        restart = trickle_fragment(offer, ufrag="Rst1", pwd="a-new-ice-password-of-22")
        assert_error(await http.patch(location, content=restart, headers={**frag, "If-Match": "*"}), 422,
                     "ice_restart_unsupported")  # fmt: skip
        assert (await http.patch(location, content=fragment, headers=frag)).status_code == 204
        assert (await http.patch(location, content=fragment, headers={"Content-Type": SDPFRAG})).status_code == 204
        viewer = location.rsplit("/", 1)[1]
        assert_error(await http.patch(f"{endpoint}/nope", content=fragment, headers=frag), 404, "viewer_not_found")
        elsewhere = f"/v1/sessions/{await new_session(http)}/whep/{viewer}"  # another session's viewer id
        assert_error(await http.patch(elsewhere, content=fragment, headers=frag), 404, "viewer_not_found")
        assert_error(await http.delete(elsewhere), 404, "viewer_not_found")
        assert_error(await http.patch(f"/v1/sessions/nope/whep/{viewer}", content=fragment, headers=frag), 404,
                     "session_not_found")  # fmt: skip
        assert_error(await http.options(f"{endpoint}/nope"), 404, "viewer_not_found")

        assert_error(await http.delete(location, headers={"If-Match": '"stale"'}), 412, "precondition_failed")
        assert (await http.delete(location, headers={"If-Match": etag})).status_code == 204
        assert_error(await http.patch(location, content=fragment, headers=frag), 404, "viewer_not_found")
        assert_error(await http.delete(location), 404, "viewer_not_found")
    finally:
        await pc.close()


async def test_a_client_that_trickles_its_candidates_by_patch_connects(whep: tuple[httpx.AsyncClient, str]) -> None:
    """The offer carries no candidates and the client drops the answer's: media can flow only if the server
    checks the candidates the client PATCHed (the client learns the server's address from those checks)."""
    http, endpoint = whep
    pc = await receiving_peer()
    try:
        offer = pc.localDescription.sdp
        assert "a=candidate:" in offer
        created = await http.post(endpoint, content=without_candidates(offer), headers=SDP)
        assert created.status_code == 201, created.text
        answer = without_candidates(created.text)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        headers = {"Content-Type": SDPFRAG, "If-Match": created.headers["etag"]}
        patched = await http.patch(created.headers["location"], content=trickle_fragment(offer), headers=headers)
        assert patched.status_code == 204, patched.text
        async with asyncio.timeout(15):
            while pc.connectionState != "connected":
                assert pc.connectionState not in ("failed", "closed")
                await asyncio.sleep(0.02)
        tracks = {t.kind: t.receiver.track for t in pc.getTransceivers()}
        async with asyncio.timeout(15):
            audio = [await tracks["audio"].recv() for _ in range(10)]
            video = [await tracks["video"].recv() for _ in range(5)]
        assert all(frame.sample_rate == 48000 for frame in audio)
        assert video[-1].width > 0 and video[-1].pts > video[0].pts
        assert (await http.delete(created.headers["location"])).status_code == 204
    finally:
        await pc.close()
