"""How the server listens and what it accepts: `ServerConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sonate.streamer.server.auth import ApiKey


@dataclass
class ServerConfig:
    """How the server listens and what it accepts.

    session_timeout_s: a session nobody is connected to (no websocket, no WebRTC viewer) closes after this
    long (s); max_body_bytes: the largest request body (uploads); voice clips must last min_voice_seconds to
    max_voice_seconds; max_uploads: stored voices (and, separately, avatars) besides the built-in ones;
    retry_after_s: what a 503 tells a client to wait (s); ice_timeout_s: how long a WebRTC viewer has to
    connect (s); ws_max_message_bytes: the websocket frame limit (larger messages close the socket); demo_page:
    the HTML file served at `/` (None: a placeholder; `sonate serve` serves the browser demo of `sonate.clients`).

    Access (docs/deploy.md): api_keys: the keys the control API takes as `Authorization: Bearer` (none: the API
    is open and the server serves loopback only, unless insecure_no_auth); metrics_key: the Bearer `/metrics`
    asks for (None: open); cors_origins: the origins whose pages may call the API (none: same origin only);
    ssl_certfile and ssl_keyfile: PEM files that make the server speak HTTPS and WSS.
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
    demo_page: Path | None = None
    api_keys: tuple[ApiKey, ...] = ()
    insecure_no_auth: bool = False
    metrics_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
