"""The routes that describe the server: the demo page, `/healthz` and `/metrics` (open, but for `/metrics` once
a metrics key is configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client.exposition import choose_encoder

from sonate.streamer.server.auth import MetricsAccess
from sonate.streamer.server.dependencies import AppConfig, AppEngine, AppMetrics, AppRegistry
from sonate.streamer.server.errors import ApiError

PLACEHOLDER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sonate</title></head>
<body><h1>sonate</h1><p>The server is running; no demo page is configured.
See <code>docs/protocol.md</code> for the API, <a href="/healthz">/healthz</a> and <a href="/metrics">/metrics</a>.</p>
</body></html>
"""

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def demo_page(config: AppConfig) -> HTMLResponse:
    """The configured page (`ServerConfig.demo_page`: the browser demo under `sonate serve`), or a placeholder."""
    if config.demo_page is None or not config.demo_page.is_file():
        return HTMLResponse(PLACEHOLDER_PAGE)
    return HTMLResponse(config.demo_page.read_text(encoding="utf-8"))


@router.get("/healthz")
async def health(engine: AppEngine, registry: AppRegistry) -> dict:
    """The server's state: open sessions and slots, the media source, and the media format (Hz, fps, pixels);
    503 `engine_failed`, saying why, once the engine has stopped serving."""
    if engine.failure is not None:
        raise ApiError(503, "engine_failed", engine.failure)
    cfg = engine.cfg
    return {
        "status": "ok",
        "sessions": len(registry.sessions),
        "max_sessions": engine.config.max_sessions,
        "source": engine.config.source,
        "sample_rate": cfg.sample_rate,
        "fps": cfg.video_fps,
        "width": cfg.video_width,
        "height": cfg.video_height,
    }


@router.get("/metrics", dependencies=[MetricsAccess])
async def metrics(request: Request, collectors: AppMetrics) -> Response:
    """Every figure for Prometheus, in the text format the scraper asks for (Prometheus text by default); 401
    without the metrics key as Bearer, when `ServerConfig.metrics_key` is set."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(collectors), media_type=content_type)
