"""What the server hosts: the open sessions with who is connected to each, and the uploaded voices and avatars.

A session is *connected* while a websocket or a WebRTC viewer is attached to it; a session nobody has been
connected to for `timeout_s` seconds expires. The registry owns the WebRTC viewers (their count feeds the
session's viewer count) and one small task per session that times speech for the time-to-first-audio figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from sonate.models.errors import SonateInputError
from sonate.streamer.engine.engine import Engine
from sonate.streamer.engine.reference_media import default_avatar, default_voice
from sonate.streamer.engine.session import Session
from sonate.streamer.server.auth import new_token
from sonate.streamer.server.metrics import LatencyHistograms
from sonate.streamer.server.webrtc import WebRTCViewers

log = logging.getLogger(__name__)

DEFAULT_ID = "default"


class NotFound(LookupError):
    """A session, voice, avatar or viewer id the server does not know; `code` names which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownReference(SonateInputError):
    """A request names a voice or avatar that was never uploaded; `code` is `unknown_voice` or `unknown_avatar`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StorageFull(SonateInputError):
    """The library holds as many uploads as it may."""


@dataclass
class Reference:
    """One stored voice (float32 [samples] at the model's rate) or avatar (uint8 [H, W, 3]); None is the default."""

    id: str
    data: np.ndarray | None
    info: dict
    created_at: float = field(default_factory=time.time)  # Unix seconds
    owner: str | None = None  # the id of the API key that uploaded it


class Library:
    """The uploads of one kind ("voice" or "avatar"), with a built-in `default`, at most `limit` of them."""

    def __init__(self, kind: str, limit: int, default_info: dict) -> None:
        self.kind = kind
        self.limit = limit
        self.items: dict[str, Reference] = {DEFAULT_ID: Reference(DEFAULT_ID, None, {**default_info, "builtin": True})}

    def add(self, data: np.ndarray, info: dict, owner: str | None = None) -> Reference:
        if len(self.items) - 1 >= self.limit:
            raise StorageFull(f"{self.limit} {self.kind}s are stored already; delete one first")
        reference = Reference(uuid.uuid4().hex[:16], data, {**info, "builtin": False}, owner=owner)
        self.items[reference.id] = reference
        return reference

    def get(self, reference_id: str) -> Reference:
        """The reference, or UnknownReference naming what to do instead."""
        reference = self.items.get(reference_id)
        if reference is None:
            raise UnknownReference(
                f"unknown_{self.kind}", f"no {self.kind} {reference_id!r}; upload one to /v1/{self.kind}s first"
            )
        return reference

    def remove(self, reference_id: str) -> None:
        if reference_id == DEFAULT_ID:
            raise SonateInputError(f"the built-in {self.kind} cannot be deleted")
        if self.items.pop(reference_id, None) is None:
            raise NotFound(f"{self.kind}_not_found", f"no {self.kind} {reference_id!r}")

    def owned_by(self, owner: str) -> int:
        """How many of the uploads the API key `owner` (its id) made."""
        return sum(r.owner == owner for r in self.items.values())

    def describe(self) -> list[dict]:
        return [
            {f"{self.kind}_id": r.id, **r.info, "created_at": r.created_at}
            for r in sorted(self.items.values(), key=lambda r: (not r.info["builtin"], r.created_at))
        ]


@dataclass
class Hosted:
    """A session as the server hosts it."""

    session: Session
    voice_id: str
    avatar_id: str
    websockets: int = 0  # open websockets of the session
    media_websockets: int = 0  # of those, the ones with media subscribed
    webrtc_viewers: int = 0
    idle_since: float | None = field(default_factory=time.monotonic)  # monotonic s; None while connected
    watcher: asyncio.Task | None = None  # `Registry._watch` of this session
    token: str = field(default_factory=new_token, repr=False)  # lets a client reach this session (see `auth`)
    owner: str | None = None  # the id of the API key that opened it

    @property
    def connected(self) -> bool:
        return self.websockets > 0 or self.webrtc_viewers > 0


@dataclass
class RegistryStats:
    """Running counts and the latency histograms for /metrics."""

    opened: int = 0
    expired: int = 0
    rejected_full: int = 0  # session requests refused because every slot was taken
    media_dropped: int = 0  # websocket media messages dropped for slow clients (counted as each socket closes)
    latency: LatencyHistograms = field(default_factory=LatencyHistograms)


class Registry:
    """The open sessions, their connections and WebRTC viewers, and the voice and avatar libraries."""

    def __init__(
        self,
        engine: Engine,
        session_timeout_s: float,
        max_uploads: int,
        ice_timeout_s: float,
    ) -> None:
        cfg = engine.cfg
        self.engine = engine
        self.session_timeout_s = session_timeout_s
        self.sessions: dict[str, Hosted] = {}
        self.voices = Library("voice", max_uploads, {"seconds": None, "sample_rate": cfg.sample_rate})
        size = cfg.avatar_image_size
        self.avatars = Library("avatar", max_uploads, {"width": size, "height": size})
        self.viewers = WebRTCViewers(ice_timeout_s=ice_timeout_s, on_viewers_changed=self._viewers_changed)
        self.stats = RegistryStats()
        self._reaper: asyncio.Task | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start expiring idle sessions; safe to call twice."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="sonate-session-reaper")

    async def stop(self) -> None:
        """Close every viewer and session and stop the reaper; safe to call twice."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for session_id in list(self.sessions):
            await self.close(session_id, "server_shutdown")
        await self.viewers.close_all()

    # --- sessions ----------------------------------------------------------------------------------------------

    async def open(
        self, voice_id: str, avatar_id: str, instruction: str, seed: int | None, owner: str | None = None
    ) -> Hosted:
        """Open a session with stored references for the API key `owner` (its id); EngineFull, UnknownReference
        or SonateInputError if it cannot."""
        voice, avatar = self.voices.get(voice_id).data, self.avatars.get(avatar_id).data
        session = await self.engine.open_session(voice=voice, avatar=avatar, instruction=instruction, seed=seed)
        hosted = Hosted(session, voice_id, avatar_id, owner=owner)
        hosted.watcher = asyncio.create_task(self._watch(hosted), name=f"sonate-watch-{session.id}")
        self.sessions[session.id] = hosted
        self.stats.opened += 1
        return hosted

    def owned_by(self, owner: str) -> int:
        """How many open sessions the API key `owner` (its id) opened."""
        return sum(h.owner == owner for h in self.sessions.values())

    def get(self, session_id: str) -> Hosted:
        hosted = self.sessions.get(session_id)
        if hosted is None:
            raise NotFound("session_not_found", f"no session {session_id!r}: it was closed, expired or never existed")
        return hosted

    async def close(self, session_id: str, reason: str) -> bool:
        """Close a session, its viewers and its websockets (they are told `reason`); False if it is unknown."""
        hosted = self.sessions.pop(session_id, None)
        if hosted is None:
            return False
        await self.viewers.close_session(session_id)
        await hosted.session.close(reason)  # ends its iterators: websockets see the end, say why and close
        if hosted.watcher is not None:
            hosted.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hosted.watcher
        log.info("session %s closed: %s", session_id, reason)
        return True

    async def resolve(self, voice_id: str | None, avatar_id: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The voice and avatar data for a session update (None where the id is None); `default` is real data."""
        cfg = self.engine.cfg
        voice = avatar = None
        if voice_id is not None:
            voice = self.voices.get(voice_id).data
            if voice is None:
                loop = asyncio.get_running_loop()
                voice = await loop.run_in_executor(None, default_voice, cfg.sample_rate)
        if avatar_id is not None:
            avatar = self.avatars.get(avatar_id).data
            if avatar is None:
                avatar = default_avatar(cfg.avatar_image_size)
        return voice, avatar

    # --- connections -------------------------------------------------------------------------------------------

    def connect(self, hosted: Hosted) -> None:
        """A websocket attached."""
        hosted.websockets += 1
        hosted.idle_since = None

    def disconnect(self, hosted: Hosted) -> None:
        """A websocket went away."""
        hosted.websockets = max(0, hosted.websockets - 1)
        self._touch(hosted)

    def _viewers_changed(self, session_id: str, count: int) -> None:
        """WebRTC viewers of a session came or went: keep the session's viewer count in step."""
        hosted = self.sessions.get(session_id)
        if hosted is None:
            return
        for _ in range(count, hosted.webrtc_viewers):
            hosted.session.remove_viewer()
        for _ in range(hosted.webrtc_viewers, count):
            hosted.session.add_viewer()
        hosted.webrtc_viewers = count
        self._touch(hosted)
        log.info("session %s: %d WebRTC viewer(s)", session_id, count)

    def _touch(self, hosted: Hosted) -> None:
        if hosted.connected:
            hosted.idle_since = None
        elif hosted.idle_since is None:
            hosted.idle_since = time.monotonic()

    # --- background --------------------------------------------------------------------------------------------

    async def expire_idle(self, now: float | None = None) -> list[str]:
        """Close the sessions nobody has been connected to for the timeout; returns their ids."""
        now = time.monotonic() if now is None else now
        expired = [
            session_id
            for session_id, hosted in self.sessions.items()
            if hosted.idle_since is not None and now - hosted.idle_since >= self.session_timeout_s
        ]
        for session_id in expired:
            log.info("session %s expired: nobody connected for %.0f s", session_id, self.session_timeout_s)
            if await self.close(session_id, "expired"):
                self.stats.expired += 1
        return expired

    def sync_stats(self) -> None:
        """Bring the latency histograms up to date with the timings the engine recorded."""
        self.stats.latency.follow(self.engine.metrics)

    async def _reap(self) -> None:
        period = min(1.0, self.session_timeout_s / 4)  # seconds between checks
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire_idle()
                self.sync_stats()
            except Exception:
                log.exception("a pass of the session reaper failed (the next one comes in %.1f s)", period)

    async def _watch(self, hosted: Hosted) -> None:
        """Own one hosted session's watcher: time its speech until the session ends. A watcher that fails is
        logged and fails its session (`session_failed`); a session that ended without the registry closing it
        (the engine failed it) is then closed here too, so its viewers go and its id is forgotten."""
        session = hosted.session
        try:
            if not session.closed:  # (checked in the same step that subscribes: it cannot close in between)
                await self._time_speech(session)
        except Exception:
            log.exception("session %s: timing its speech failed", session.id)
            await session.fail("session_failed", "the server failed on this session (see its log); open a new one")
        if self.sessions.get(session.id) is hosted:
            hosted.watcher = None  # (this very task: closing must not wait for it)
            await self.close(session.id, session.close_reason or "closed")

    async def _time_speech(self, session: Session) -> None:
        """Observe each utterance's time to first audio (the `speech.started` events) until the session ends."""
        async for event in session.events():
            if event["type"] == "speech.started":
                self.stats.latency.ttfa.observe(event["ttfa_ms"] / 1000)
