"""Who may do what (docs/deploy.md): API keys for the control API, session tokens for one session's websocket,
viewers and state, the metrics key, per-key limits, and the refusal to serve off loopback without keys.

Keys and tokens are compared in constant time (`hmac.compare_digest`) and never logged: a key shows in the log
only as its id (the first 8 hex digits of its SHA-256), and `RedactTokens` blanks the `token=` of the URLs
uvicorn logs. With no key configured nothing is checked: the API is open, as on a loopback-only server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

from sonate.models.errors import SonateInputError
from sonate.streamer.server.errors import ApiError

if TYPE_CHECKING:
    from sonate.streamer.server.config import ServerConfig
    from sonate.streamer.server.registry import Registry

MIN_KEY_CHARS = 16  # shorter keys are refused: they could be guessed
TOKEN_BYTES = 32  # random bytes of a session token (43 URL-safe characters)
LIMITS = {"sessions": "max_sessions", "voices": "max_voices", "avatars": "max_avatars"}  # key file name: field
KEY_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what a key may hold: the characters of a Bearer token


@dataclass(frozen=True)
class ApiKey:
    """One API key and its limits: sessions open at once, voices and avatars stored (None: the server's own)."""

    secret: str
    max_sessions: int | None = None
    max_voices: int | None = None
    max_avatars: int | None = None

    def __repr__(self) -> str:  # never the secret
        return f"ApiKey(id={self.id!r})"

    @property
    def id(self) -> str:
        """What the log and the registry call the key: the first 8 hex digits of its SHA-256."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:8]


def new_token() -> str:
    """A fresh session token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


# --- configuration ------------------------------------------------------------------------------------------------


def parse_key(line: str, where: str) -> ApiKey:
    """One key line: `KEY [sessions=N] [voices=N] [avatars=N]`; SonateInputError saying what is wrong at `where`."""
    secret, *limits = line.split()
    if len(secret) < MIN_KEY_CHARS or not KEY_CHARS.fullmatch(secret):
        raise SonateInputError(
            f"{where}: a key must be at least {MIN_KEY_CHARS} characters of A-Z a-z 0-9 . _ ~ + / = -"
        )
    fields: dict[str, int] = {}
    for limit in limits:
        name, _, value = limit.partition("=")
        if name not in LIMITS or not value.isdigit():
            raise SonateInputError(f"{where}: expected sessions=N, voices=N or avatars=N after the key, got {limit!r}")
        fields[LIMITS[name]] = int(value)
    return ApiKey(secret, **fields)


def load_keys(key_file: Path | None, env_keys: str | None) -> tuple[ApiKey, ...]:
    """The keys of `key_file` (one a line; blank lines and `#` comments skipped) and of `env_keys` (the
    comma-separated `SONATE_API_KEYS`, no limits); SonateInputError for a bad line, a duplicate or no key."""
    keys: list[ApiKey] = []
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise SonateInputError(f"cannot read the key file {key_file}: {reason}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(parse_key(line, f"{key_file}, line {number}"))
        if not keys:
            raise SonateInputError(f"the key file {key_file} holds no key")
    for number, secret in enumerate((env_keys or "").split(","), 1):
        if secret.strip():
            keys.append(parse_key(secret.strip(), f"SONATE_API_KEYS, key {number}"))
    if len({key.secret for key in keys}) < len(keys):
        raise SonateInputError("the same API key is given twice")
    return tuple(keys)


def check_exposure(config: ServerConfig) -> None:
    """SonateInputError when `config` would serve an address off loopback with no key (and no insecure_no_auth)."""
    if config.api_keys or config.insecure_no_auth or is_loopback(config.host):
        return
    raise SonateInputError(
        f"refusing to serve {config.host or 'every address'} without API keys: give --api-key-file "
        "(or SONATE_API_KEYS), serve 127.0.0.1, or say --insecure-no-auth"
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_access(config: ServerConfig) -> str:
    """One log line on who may do what: the keys (by id), /metrics, the CORS origins and TLS."""
    keys = ", ".join(f"{key.id}{_limits(key)}" for key in config.api_keys)
    return "; ".join(
        [
            f"API keys: {keys}" if keys else "no API key: the API is open",
            "/metrics needs its key" if config.metrics_key else "/metrics open",
            f"CORS origins: {', '.join(config.cors_origins) or 'none'}",
            "TLS on" if config.ssl_certfile else "TLS off",
        ]
    )


def _limits(key: ApiKey) -> str:
    limits = [f"{name}={getattr(key, field)}" for name, field in LIMITS.items() if getattr(key, field) is not None]
    return f" ({' '.join(limits)})" if limits else ""


# --- checks -------------------------------------------------------------------------------------------------------


def _matches(presented: str, secrets_: Iterable[str]) -> bool:
    """Whether `presented` equals one of `secrets_`, each compared in constant time (all of them, always)."""
    found = False
    for secret in secrets_:
        found |= hmac.compare_digest(presented.encode(), secret.encode())
    return found


def _key_of(config: ServerConfig, presented: str | None) -> ApiKey | None:
    """The configured key equal to `presented`, or None."""
    if presented is None:
        return None
    found = None
    for key in config.api_keys:
        if hmac.compare_digest(presented.encode(), key.secret.encode()):
            found = key
    return found


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def bearer_of(headers: Headers) -> str | None:
    """The credentials of an `Authorization: Bearer` header, or None."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def check_session_access(config: ServerConfig, registry: Registry, session_id: str, *presented: str | None) -> None:
    """Let the request through when one of the credentials it `presented` is an API key or `session_id`'s own
    token; ApiError 401 for none or only wrong ones, 403 for another session's token. Nothing is checked on a
    server without keys."""
    if not config.api_keys:
        return
    given = [credential for credential in presented if credential]
    hosted = registry.sessions.get(session_id)
    for credential in given:
        if _key_of(config, credential) is not None or (hosted is not None and _matches(credential, [hosted.token])):
            return
    if not given:
        raise _unauthorized("this session needs its token (?token= or Authorization: Bearer) or an API key")
    tokens = [h.token for h in registry.sessions.values()]
    if any(_matches(credential, tokens) for credential in given):
        raise ApiError(403, "forbidden", f"this token belongs to another session, not {session_id!r}")
    raise _unauthorized("the token or API key is wrong (or its session has ended)")


_bearer = HTTPBearer(auto_error=False, description="an API key, or a session's token on that session's routes")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_key(connection: HTTPConnection, credentials: BearerCredentials) -> ApiKey | None:
    """The API key the request carries as Bearer (None on a server without keys); 401 when it has none."""
    config: ServerConfig = connection.app.state.config
    if not config.api_keys:
        return None
    key = _key_of(config, credentials.credentials if credentials else None)
    if key is None:
        raise _unauthorized("send an API key as Authorization: Bearer <key>")
    return key


def require_session_access(
    connection: HTTPConnection,
    session_id: str,
    credentials: BearerCredentials,
    token: Annotated[str | None, Query(description="the session's token, as its ws_url and whep_url carry it")] = None,
) -> None:
    """`check_session_access` for the request's Bearer and `?token=`."""
    bearer = credentials.credentials if credentials else None
    check_session_access(connection.app.state.config, connection.app.state.registry, session_id, bearer, token)


def require_metrics_key(connection: HTTPConnection, credentials: BearerCredentials) -> None:
    """401 unless the request carries the metrics key as Bearer (when one is configured)."""
    expected = connection.app.state.config.metrics_key
    if expected is not None and (credentials is None or not _matches(credentials.credentials, [expected])):
        raise _unauthorized("/metrics needs the metrics key as Authorization: Bearer <key>")


CallerKey = Annotated[ApiKey | None, Depends(require_key)]
SessionAccess = Depends(require_session_access)
MetricsAccess = Depends(require_metrics_key)


def check_limit(key: ApiKey | None, what: str, count: Callable[[str], int], retry_after_s: int) -> str | None:
    """The id of `key` (None on a server without keys), after a 429 with `Retry-After` when `key` already has as
    many of `what` ("sessions", "voices", "avatars": `count(key id)` of them) as its limit allows."""
    if key is None:
        return None
    limit = getattr(key, LIMITS[what])
    if limit is not None and count(key.id) >= limit:
        raise ApiError(
            429,
            "limit_reached",
            f"this API key may have {limit} {what} at once; close or delete one first",
            {"Retry-After": str(retry_after_s)},
        )
    return key.id


# --- logs ---------------------------------------------------------------------------------------------------------

TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Blanks `token=…` in the arguments of the records of a logger (uvicorn logs every URL with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(TOKEN_IN_URL.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_uvicorn_logs() -> None:
    """Put `RedactTokens` on uvicorn's loggers (once); call it after uvicorn configured its logging."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
