"""`sonate serve`: the HTTP, websocket and WebRTC server on one port."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sonate.models.errors import SonateInputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sonate serve`."""
    p.description = (
        "Serve live talking-avatar sessions on one port: the REST API, the websocket session "
        "protocol, WebRTC (WHEP-style), /metrics and the demo page. See docs/protocol.md."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--max-sessions", type=int, default=4, help="sessions served at once (default 4)")
    p.add_argument(
        "--source",
        choices=["model", "clapper"],
        default="model",
        help="'clapper' replaces the model with A/V sync test media: a flash and a beep every second",
    )
    p.add_argument(
        "--session-timeout", type=float, default=60.0, help="seconds before an unattended session closes (default 60)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(default info)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from sonate.clients import DEMO_PAGE
    from sonate.models.checkpoint import load_checkpoint
    from sonate.streamer.engine.engine import Engine, EngineConfig
    from sonate.streamer.server.config import ServerConfig
    from sonate.streamer.server.launch import serve

    if args.max_sessions < 1 or args.session_timeout <= 0 or not 0 < args.port < 65536:
        raise SonateInputError("--max-sessions must be at least 1, --session-timeout positive and --port in 1..65535")
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format, force=True)
    checkpoint = load_checkpoint(args.checkpoint)
    engine = Engine(
        checkpoint.model, EngineConfig(max_sessions=args.max_sessions, source=args.source), checkpoint.codecs
    )
    config = ServerConfig(host=args.host, port=args.port, session_timeout_s=args.session_timeout, demo_page=DEMO_PAGE)
    shown_host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host  # an IPv6 address
    print(f"sonate: demo page at http://{shown_host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(engine, config, log_level=args.log_level)
