"""What the routers share: the app's engine, registry, config and metrics as FastAPI dependencies (from `app.state`,
set by `create_app`), the request body within a limit, and a hosted session by id or a 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection

from sonate.streamer.engine.engine import Engine
from sonate.streamer.server.config import ServerConfig
from sonate.streamer.server.errors import ApiError
from sonate.streamer.server.registry import Hosted, NotFound, Registry


def _engine(connection: HTTPConnection) -> Engine:
    return connection.app.state.engine


def _registry(connection: HTTPConnection) -> Registry:
    return connection.app.state.registry


def _config(connection: HTTPConnection) -> ServerConfig:
    return connection.app.state.config


def _metrics(connection: HTTPConnection) -> CollectorRegistry:
    return connection.app.state.metrics


AppEngine = Annotated[Engine, Depends(_engine)]
AppRegistry = Annotated[Registry, Depends(_registry)]
AppConfig = Annotated[ServerConfig, Depends(_config)]
AppMetrics = Annotated[CollectorRegistry, Depends(_metrics)]


def hosted_or_404(registry: Registry, session_id: str) -> Hosted:
    """The hosted session, or a 404 `session_not_found`."""
    try:
        return registry.get(session_id)
    except NotFound as exc:
        raise ApiError(404, exc.code, exc.message) from None


async def read_body(request: Request, limit: int) -> bytes:
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
