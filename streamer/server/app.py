"""The HTTP and websocket server: a thin FastAPI layer over the engine, on one port.

`create_app` puts together what the routers serve — `pages` (the demo page, health, Prometheus metrics),
`sessions` (sessions and their websocket), `whep` (their WebRTC viewers) and `uploads` (voices and avatars) —
over one `Registry` of hosted sessions; they reach it, the engine and the config through `app.state` (see
`dependencies`). Every error is JSON `{"error": {"code", "message"}}`; the API and the websocket protocol are
documented in docs/protocol.md. `auth` guards the routes (API keys, session tokens, the metrics key) and
`ServerConfig.cors_origins` lets pages of other origins call them (docs/deploy.md). `launch` runs it on uvicorn;
`sonate serve` is the command.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sonate.streamer.engine.engine import Engine
from sonate.streamer.server import pages, sessions, uploads, whep
from sonate.streamer.server.auth import describe_access
from sonate.streamer.server.config import ServerConfig
from sonate.streamer.server.errors import install_error_handlers
from sonate.streamer.server.metrics import metrics_registry
from sonate.streamer.server.registry import Registry

log = logging.getLogger(__name__)

CORS_METHODS = ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]
CORS_HEADERS = ["Authorization", "Content-Type", "If-Match"]  # what pages elsewhere may send
CORS_EXPOSED = ["Location", "ETag", "Link", "Accept-Patch", "Retry-After"]  # what their scripts may read (WHEP's)


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `engine`; its lifespan starts and stops the engine, the sessions and the viewers."""
    config = config or ServerConfig()
    registry = Registry(engine, config.session_timeout_s, config.max_uploads, config.ice_timeout_s)
    app = FastAPI(title="sonate", version="0.1.0", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.registry = registry
    app.state.config = config
    app.state.metrics = metrics_registry(engine, registry)
    install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
        )
    for router in (pages.router, sessions.router, whep.router, uploads.router):
        app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine: Engine = app.state.engine
    registry: Registry = app.state.registry
    await engine.start()
    await registry.start()
    log.info("serving %d session slots (%s source)", engine.config.max_sessions, engine.config.source)
    log.info("access: %s", describe_access(app.state.config))
    try:
        yield
    finally:
        await registry.stop()
        await engine.stop()
