"""The HTTP and websocket server: a thin FastAPI layer over the engine, on one port.

`create_app` puts together what the routers serve — `pages` (the demo page, health, Prometheus metrics),
`sessions` (sessions, their websocket, WebRTC viewers) and `uploads` (voices and avatars) — over one `Registry`
of hosted sessions; they reach it, the engine and the config through `app.state` (see `dependencies`). Every
error is JSON `{"error": {"code", "message"}}`; the API and the websocket protocol are documented in
docs/protocol.md. `launch` runs it on uvicorn; `sonate serve` is the command.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sonate.streamer.engine.engine import Engine
from sonate.streamer.server import pages, sessions, uploads
from sonate.streamer.server.config import ServerConfig
from sonate.streamer.server.errors import install_error_handlers
from sonate.streamer.server.metrics import metrics_registry
from sonate.streamer.server.registry import Registry

log = logging.getLogger(__name__)


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
    for router in (pages.router, sessions.router, uploads.router):
        app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine: Engine = app.state.engine
    registry: Registry = app.state.registry
    await engine.start()
    await registry.start()
    log.info("serving %d session slots (%s source)", engine.config.max_sessions, engine.config.source)
    try:
        yield
    finally:
        await registry.stop()
        await engine.stop()
