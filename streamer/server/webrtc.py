"""WebRTC transport: a session's playout as aiortc audio and video tracks, and the server's peer connections.

Both tracks of a viewer read the same playout tick → media mapping (`Playout.audio` / `Playout.frame`) and pace
against the same fixed start: the media of tick t is released at `playout.start_time + t · TICK`, so timing
error never accumulates and an underrun holds sound and picture together. Both tracks of one viewer start on
the same tick, so a receiver that dates each track from its first frame (aiortc rebases each track's RTP
timestamps to 0) sees them aligned; a browser aligns them from the RTCP sender reports, whose clock-to-RTP
mapping the pacing makes true.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription
from av import AudioFrame, VideoFrame

from sonate.models.errors import SonateInputError
from sonate.streamer.media.playout import TICK, Playout
from sonate.streamer.media.resample import AUDIO_FRAME_SAMPLES, AUDIO_RATE, StreamingResampler
from sonate.streamer.server.sdpfrag import IceFragment

logger = logging.getLogger(__name__)

AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)  # audio pts are in samples
VIDEO_CLOCK_RATE = 90000  # Hz: the RTP video clock
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
MAX_START_SKEW = 0.5  # seconds: a viewer's second track starting later than this starts at its own tick
ICE_TIMEOUT = 15.0  # seconds a new viewer has to reach "connected"


class ViewerStart:
    """The tick a viewer's tracks start at, shared so that its audio and video begin on the same media instant.

    The first track to ask fixes it: the current tick, rounded down to a video frame boundary (the frame on
    screen now). A track asking more than `MAX_START_SKEW` later starts at its own current frame instead of
    bursting old media.
    """

    def __init__(self) -> None:
        self.tick: int | None = None

    def first_tick(self, playout: Playout) -> int:
        """The tick this viewer's media starts at (the playout must have started)."""
        current = playout.tick_at(playout.clock())
        if self.tick is None or (current - self.tick) * TICK > MAX_START_SKEW:
            if self.tick is not None:
                logger.warning("viewer track started %.2f s after its other track", (current - self.tick) * TICK)
            self.tick = current - current % playout.ticks_per_frame
        return self.tick


class _PlayoutTrack(MediaStreamTrack):
    """Paces a track from the playout clock: tick t is released at `playout.start_time + t · TICK` (monotonic s)."""

    def __init__(self, playout: Playout, start: ViewerStart | None = None) -> None:
        super().__init__()
        self.playout = playout
        self._start = start if start is not None else ViewerStart()
        self._tick: int | None = None  # the tick of the last frame released

    async def _next_tick(self, step_ticks: int) -> int:
        """Wait for the playout to start, then for the next frame's due time; returns its tick."""
        if self.readyState != "live":
            raise MediaStreamError
        await self.playout.started.wait()
        assert self.playout.start_time is not None
        self._tick = self._start.first_tick(self.playout) if self._tick is None else self._tick + step_ticks
        due = self.playout.start_time + self._tick * TICK
        await asyncio.sleep(max(0.0, due - self.playout.clock()))
        return self._tick


class PlayoutAudioTrack(_PlayoutTrack):
    """48 kHz mono s16 audio in 20 ms frames (960 samples), pts in samples on the session's clock (tick · 960).

    Each frame is one playout tick's audio (silence on a hold) resampled by one streaming resampler, so the
    sound is continuous across frames and holds; it lags the playout by the resampler's delay (~1 ms).
    """

    kind = "audio"

    def __init__(self, playout: Playout, start: ViewerStart | None = None) -> None:
        super().__init__(playout, start)
        self.resampler = StreamingResampler(playout.sample_rate, AUDIO_RATE, playout.tick_samples)

    async def recv(self) -> AudioFrame:
        """The next 20 ms audio frame, released when its tick is due."""
        tick = await self._next_tick(1)
        pcm = self.playout.audio(tick)
        n = self.playout.tick_samples
        if len(pcm) != n:  # a chunk whose audio does not fill its frames: fit it, never stall the stream
            logger.warning("tick %d has %d audio samples, expected %d", tick, len(pcm), n)
            fitted = np.zeros(n, dtype=np.float32)
            fitted[: min(n, len(pcm))] = pcm[:n]
            pcm = fitted
        samples = self.resampler.process(pcm)
        pcm16 = (np.clip(samples, -1.0, 1.0) * 32767).round().astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm16[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = tick * AUDIO_FRAME_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        return frame


class PlayoutVideoTrack(_PlayoutTrack):
    """One RGB frame per video frame of the playout (every `ticks_per_frame` ticks), pts on a 90 kHz clock.

    aiortc's encoder converts the rgb24 frame to yuv420p in its executor thread, off the event loop.
    """

    kind = "video"

    async def recv(self) -> VideoFrame:
        """The next video frame, released when its tick is due."""
        tick = await self._next_tick(self.playout.ticks_per_frame)
        frame = VideoFrame.from_ndarray(np.ascontiguousarray(self.playout.frame(tick)), format="rgb24")
        frame.pts = round(tick * TICK * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        return frame


@dataclass(frozen=True)
class IceSession:
    """A viewer's ICE session: its entity tag (a random strong ETag, quoted) and the viewer's ICE credentials."""

    etag: str
    ufrag: str
    pwd: str


@dataclass
class _Viewer:
    """One viewer: its peer connection, its ICE session and the task that owns it."""

    viewer_id: str
    session_id: str
    pc: RTCPeerConnection
    ice: IceSession
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on every connection state change
    stop_requested: bool = False
    task: asyncio.Task[None] | None = None


class WebRTCViewers:
    """Every RTCPeerConnection of the server: several viewers per session, each a pair of playout tracks.

    A viewer ends when the server closes it, when its connection becomes "failed" or "closed", or when it is
    not "connected" within `ice_timeout_s` seconds; a background task per viewer closes and forgets it, and
    `on_viewers_changed(session_id, count)` reports each new count. `ice_servers` defaults to none: host
    candidates only (a server on a public address, or a LAN); give STUN/TURN servers for anything behind NAT.
    """

    def __init__(
        self,
        ice_timeout_s: float = ICE_TIMEOUT,
        on_viewers_changed: Callable[[str, int], None] | None = None,
        ice_servers: list[RTCIceServer] | None = None,
    ) -> None:
        self.ice_timeout_s = ice_timeout_s
        self.on_viewers_changed = on_viewers_changed
        self.ice_servers = list(ice_servers or [])
        self._viewers: dict[str, _Viewer] = {}

    def viewer_count(self, session_id: str) -> int:
        """How many viewers the session has now."""
        return sum(1 for viewer in self._viewers.values() if viewer.session_id == session_id)

    async def answer(self, offer_sdp: str, playout: Playout, session_id: str) -> tuple[str, str]:
        """Answer a viewer's SDP offer with the session's tracks; returns (answer SDP with ICE candidates, viewer id).

        Raises SonateInputError for an offer that is not SDP, offers no audio or video to receive, or
        that aiortc cannot accept (no common codec, missing ICE or DTLS parameters).
        """
        description = _parse_offer(offer_sdp)
        kinds = _receivable_kinds(description)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            start = ViewerStart()
            track_types = {"audio": PlayoutAudioTrack, "video": PlayoutVideoTrack}
            tracks = {kind: track_types[kind](playout, start) for kind in kinds}
            for transceiver in pc.getTransceivers():
                track = tracks.pop(transceiver.kind, None)  # the first m-line of each kind gets the track
                if track is not None:
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = "sendonly"  # never receive: nobody would read it
                else:
                    transceiver.direction = "inactive"
            await pc.setLocalDescription(await pc.createAnswer())  # gathers the ICE candidates
        except (ValueError, InvalidStateError, OperationError) as exc:
            await pc.close()
            raise SonateInputError(f"cannot answer this WebRTC offer: {exc or type(exc).__name__}") from exc
        except BaseException:
            await pc.close()
            raise

        remote = description.media[0].ice  # setRemoteDescription checked it has both credentials
        ice = IceSession(f'"{secrets.token_urlsafe(12)}"', remote.usernameFragment, remote.password)
        viewer = _Viewer(uuid.uuid4().hex, session_id, pc, ice)
        pc.on("connectionstatechange", viewer.changed.set)
        self._viewers[viewer.viewer_id] = viewer
        viewer.task = asyncio.create_task(self._run(viewer), name=f"webrtc viewer {viewer.viewer_id}")
        logger.info("session %s: viewer %s answered (%s)", session_id, viewer.viewer_id, ", ".join(sorted(kinds)))
        self._notify(session_id)
        return pc.localDescription.sdp, viewer.viewer_id

    def ice_session(self, session_id: str, viewer_id: str) -> IceSession | None:
        """The ICE session of a viewer of this session; None if there is no such viewer."""
        viewer = self._viewers.get(viewer_id)
        return viewer.ice if viewer is not None and viewer.session_id == session_id else None

    async def add_candidates(self, viewer_id: str, fragment: IceFragment) -> bool:
        """Hand a viewer's trickled candidates (and its end-of-candidates) to its connection; False if the id is
        unknown. SonateInputError for a candidate of a mid the connection does not have."""
        viewer = self._viewers.get(viewer_id)
        if viewer is None:
            return False
        unknown = {c.sdpMid for c in fragment.candidates} - {t.mid for t in viewer.pc.getTransceivers()}
        if unknown:
            raise SonateInputError(f"the fragment has candidates for mids {sorted(unknown)} the offer did not have")
        for candidate in fragment.candidates:
            await viewer.pc.addIceCandidate(candidate)
        if fragment.end_of_candidates:
            await viewer.pc.addIceCandidate(None)
        return True

    async def close(self, viewer_id: str) -> bool:
        """Close one viewer and wait until its connection is closed; False if the id is unknown."""
        viewer = self._viewers.get(viewer_id)
        if viewer is None:
            return False
        viewer.stop_requested = True
        viewer.changed.set()
        assert viewer.task is not None
        # shield: a caller cancelled while waiting must not cancel the close half-way (its task owns the close)
        await asyncio.shield(viewer.task)
        return True

    async def close_session(self, session_id: str) -> None:
        """Close every viewer of a session."""
        ids = [v.viewer_id for v in self._viewers.values() if v.session_id == session_id]
        await asyncio.gather(*(self.close(viewer_id) for viewer_id in ids))

    async def close_all(self) -> None:
        """Close every viewer of the server; safe to call again."""
        await asyncio.gather(*(self.close(viewer_id) for viewer_id in list(self._viewers)))

    async def _run(self, viewer: _Viewer) -> None:
        """Own one viewer: wait until it is over, then close its connection and forget it."""
        try:
            reason = await self._until_over(viewer)
            logger.info("session %s: viewer %s ends: %s", viewer.session_id, viewer.viewer_id, reason)
        except Exception:
            logger.exception("session %s: viewer %s watcher failed", viewer.session_id, viewer.viewer_id)
        finally:
            try:
                await viewer.pc.close()
            except Exception:
                logger.exception("session %s: viewer %s did not close cleanly", viewer.session_id, viewer.viewer_id)
            finally:
                del self._viewers[viewer.viewer_id]
                self._notify(viewer.session_id)

    async def _until_over(self, viewer: _Viewer) -> str:
        """Wait until the viewer should end; returns why."""
        deadline = asyncio.get_running_loop().time() + self.ice_timeout_s
        connected = False
        while True:
            state = viewer.pc.connectionState
            if viewer.stop_requested:
                return "closed by the server"
            if state in ("failed", "closed"):
                return f"connection {state}"
            connected = connected or state == "connected"
            viewer.changed.clear()
            try:
                async with asyncio.timeout_at(None if connected else deadline):
                    await viewer.changed.wait()
            except TimeoutError:
                return f"not connected within {self.ice_timeout_s:g} s"

    def _notify(self, session_id: str) -> None:
        if self.on_viewers_changed is None:
            return
        try:
            self.on_viewers_changed(session_id, self.viewer_count(session_id))
        except Exception:
            logger.exception("session %s: on_viewers_changed failed", session_id)


def _parse_offer(offer_sdp: str) -> SessionDescription:
    """The parsed SDP offer; SonateInputError if it is not SDP."""
    try:
        return SessionDescription.parse(offer_sdp)
    except Exception as exc:  # the parser raises whatever its malformed input trips
        raise SonateInputError(f"the WebRTC offer is not valid SDP: {exc or type(exc).__name__}") from exc


def _receivable_kinds(description: SessionDescription) -> set[str]:
    """The media kinds ("audio", "video") an SDP offer asks to receive; SonateInputError if none."""
    kinds = {
        media.kind
        for media in description.media
        if media.kind in ("audio", "video") and (media.direction or "sendrecv") in ("sendrecv", "recvonly")
    }
    if not kinds:
        raise SonateInputError(
            "the WebRTC offer has no audio or video to receive: add recvonly (or sendrecv) audio and video transceivers"
        )
    return kinds
