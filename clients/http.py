"""The server's HTTP API for clients: sessions, uploads and the requests of WebRTC viewers.

Requests go through `urllib` in a worker thread (no extra dependency) and never through a proxy: the media of a
session travel peer to peer over UDP anyway, so the server must be reachable directly. Errors come back as
SonateClientError carrying the server's error code (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from sonate.models.errors import SonateInputError

HTTP_TIMEOUT_S = 30.0  # one HTTP request, connection and answer (uploads are decoded before the answer)


class SonateClientError(SonateInputError):
    """The server refused a request or cannot be reached; `status` is the HTTP status (None when unreachable)
    and `code` the error code of the server's JSON body (`unreachable` when there was no answer)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "unreachable") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class SessionInfo:
    """A session as `POST /v1/sessions` describes it; `ws_url` and `whep_url` carry its `token`, which lets
    whoever holds it use and watch this session without an API key."""

    session_id: str
    ws_url: str
    whep_url: str
    voice_id: str
    avatar_id: str
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class SonateClient:
    """The server's HTTP API at `base_url` (e.g. `http://127.0.0.1:8000`), with `api_key` (sent as
    `Authorization: Bearer` to that server only) where the server asks for one. Every method raises
    SonateClientError with the server's error code and message when a request is refused."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SonateClientError(f"the server URL must look like http://host:port, got {base_url!r}", code="bad_url")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    async def health(self) -> dict:
        """`GET /healthz`: status, sessions, source and the media format (sample_rate, fps, width, height)."""
        return (await self.request("GET", "/healthz")).json()

    async def create_session(
        self,
        voice_id: str | None = None,
        avatar_id: str | None = None,
        instruction: str = "",
        seed: int | None = None,
    ) -> SessionInfo:
        """Open a session (voice and avatar default to the server's built-in ones)."""
        body: dict[str, object] = {"instruction": instruction}
        for name, value in (("voice_id", voice_id), ("avatar_id", avatar_id), ("seed", seed)):
            if value is not None:
                body[name] = value
        data = (await self.request("POST", "/v1/sessions", json.dumps(body).encode(), "application/json")).json()
        return SessionInfo(
            data["session_id"], data["ws_url"], data["whep_url"], data["voice_id"], data["avatar_id"], data["token"]
        )

    async def describe_session(self, session_id: str) -> dict:
        """`GET /v1/sessions/{id}`: connections, playback position, media seconds and underruns."""
        return (await self.request("GET", f"/v1/sessions/{_quote(session_id)}")).json()

    async def delete_session(self, session_id: str) -> None:
        """End a session; its websockets and viewers are closed by the server."""
        await self.request("DELETE", f"/v1/sessions/{_quote(session_id)}")

    async def upload_voice(self, data: bytes) -> str:
        """Upload a reference voice clip (WAV, FLAC, MP3, OGG; 0.5 to 30 s) to clone; returns its voice id."""
        return (await self.request("POST", "/v1/voices", data, "application/octet-stream")).json()["voice_id"]

    async def upload_avatar(self, data: bytes) -> str:
        """Upload a reference avatar picture (PNG or JPEG); returns its avatar id."""
        return (await self.request("POST", "/v1/avatars", data, "application/octet-stream")).json()["avatar_id"]

    async def request(
        self, method: str, path_or_url: str, body: bytes | None = None, content_type: str | None = None
    ) -> Response:
        """One HTTP request (a path on the server, or an absolute URL); a status ≥ 400 raises SonateClientError."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        return await asyncio.to_thread(self._request, method, url, body, content_type)

    def _request(self, method: str, url: str, body: bytes | None, content_type: str | None) -> Response:
        request = urllib.request.Request(url, data=body, method=method)
        if content_type is not None:
            request.add_header("Content-Type", content_type)
        if self._api_key is not None and url.startswith(self.base_url + "/"):
            request.add_header("Authorization", f"Bearer {self._api_key}")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                headers = {name.lower(): value for name, value in answer.headers.items()}
                return Response(answer.status, headers, answer.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            code, message = f"http_{exc.code}", raw.decode("utf-8", "replace")[:200] or exc.reason
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                error = json.loads(raw)["error"]
                code, message = error["code"], error["message"]
            raise SonateClientError(f"{method} {url}: {exc.code} {code}: {message}", status=exc.code,
                                    code=code) from None  # fmt: skip
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SonateClientError(f"cannot reach the sonate server at {self.base_url}: {reason}") from None


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
