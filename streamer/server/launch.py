"""Running the server on uvicorn, its settings in one place: in the foreground (`sonate serve`) or on a
background thread with its own event loop (the benchmarks and the tests).

Both use uvloop and the websockets library's sans-I/O implementation (`websockets` is its deprecated legacy one)
with `ServerConfig.ws_max_message_bytes` as the frame limit and no per-message compression (media is JPEG and
PCM: compressing it costs CPU for nothing), TLS from `ServerConfig.ssl_certfile` and `ssl_keyfile` when set, and
session tokens blanked from uvicorn's log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from sonate.streamer.engine.engine import Engine
from sonate.streamer.server.app import create_app
from sonate.streamer.server.auth import check_exposure, redact_uvicorn_logs
from sonate.streamer.server.config import ServerConfig

GRACEFUL_SHUTDOWN_S = 5  # seconds open connections get to finish once the server is told to stop
START_TIMEOUT_S = 30.0  # seconds a background server has to come up (the engine starts its compute process first)
STOP_TIMEOUT_S = GRACEFUL_SHUTDOWN_S + 10.0  # seconds a background server has to stop
POLL_S = 0.01  # seconds between looks at whether a background server has started


def uvicorn_settings(config: ServerConfig, log_level: str) -> dict:
    """uvicorn's settings (`uvicorn.Config`'s arguments besides the app) for a server made with `config`."""
    tls = {"ssl_certfile": config.ssl_certfile, "ssl_keyfile": config.ssl_keyfile} if config.ssl_certfile else {}
    return {
        "host": config.host,
        "port": config.port,
        "loop": "uvloop",
        "ws": "websockets-sansio",
        "ws_max_size": config.ws_max_message_bytes,
        "ws_per_message_deflate": False,
        "log_level": log_level,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        **tls,
    }


def serve(engine: Engine, config: ServerConfig, log_level: str = "info") -> None:
    """Serve `engine` on `config.host`:`config.port` in this thread until interrupted (Ctrl-C or SIGTERM);
    SonateInputError, before anything starts, for an address off loopback without API keys (`check_exposure`)."""
    check_exposure(config)
    redact_uvicorn_logs()  # (uvicorn's logging configuration keeps the filters of its loggers)
    uvicorn.run(create_app(engine, config), **uvicorn_settings(config, log_level))


@dataclass
class BackgroundServer:
    """A server running on a thread of this process: its base URL (`http://127.0.0.1:PORT`, https with TLS), its
    app and the event loop it runs in (give it coroutines with `asyncio.run_coroutine_threadsafe`)."""

    url: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop


@contextlib.contextmanager
def serve_in_background(
    engine: Engine, config: ServerConfig | None = None, log_level: str = "warning"
) -> Iterator[BackgroundServer]:
    """Serve `engine` on a free loopback port (not `config.host`:`config.port`) from a thread with its own event
    loop until the block ends; RuntimeError if it does not start within `START_TIMEOUT_S` or stop within
    `STOP_TIMEOUT_S`."""
    config = config or ServerConfig()
    app = create_app(engine, config)
    redact_uvicorn_logs()
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_settings(config, log_level)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:  # what `uvicorn.Server.run` does, keeping hold of the loop
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            loops.append(runner.get_loop())
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name=f"sonate-server-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see the log above")
            time.sleep(POLL_S)
        scheme = "https" if config.ssl_certfile else "http"
        yield BackgroundServer(f"{scheme}://127.0.0.1:{port}", app, loops[0])
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"the server did not stop within {STOP_TIMEOUT_S:g} s")
