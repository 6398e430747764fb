"""`sonate serve`: the HTTP, websocket and WebRTC server on one port."""

from __future__ import annotations

import argparse
import logging
import os
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
    access = p.add_argument_group("access (docs/deploy.md)")
    access.add_argument(
        "--api-key-file",
        type=Path,
        help="API keys, one a line: KEY [sessions=N] [voices=N] [avatars=N] (also: SONATE_API_KEYS=key,key)",
    )
    access.add_argument(
        "--insecure-no-auth", action="store_true", help="serve an address off loopback with no API key (anyone may)"
    )
    access.add_argument("--metrics-key", help="the Bearer key /metrics asks for (default: /metrics is open)")
    access.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin (https://host[:port]) whose pages may call the API; repeatable (default: none)",
    )
    access.add_argument("--ssl-certfile", type=Path, help="PEM certificate (chain): serve https:// and wss://")
    access.add_argument("--ssl-keyfile", type=Path, help="PEM private key of --ssl-certfile")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from sonate.clients import DEMO_PAGE
    from sonate.models.checkpoint import load_checkpoint
    from sonate.streamer.engine.engine import Engine, EngineConfig
    from sonate.streamer.server.auth import MIN_KEY_CHARS, check_exposure, load_keys
    from sonate.streamer.server.config import ServerConfig
    from sonate.streamer.server.launch import serve

    if args.max_sessions < 1 or args.session_timeout <= 0 or not 0 < args.port < 65536:
        raise SonateInputError("--max-sessions must be at least 1, --session-timeout positive and --port in 1..65535")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise SonateInputError("give both --ssl-certfile and --ssl-keyfile, or neither")
    if args.metrics_key is not None and len(args.metrics_key) < MIN_KEY_CHARS:
        raise SonateInputError(f"--metrics-key must be at least {MIN_KEY_CHARS} characters")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path is not None and not path.is_file():
            raise SonateInputError(f"no such file: {path}")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        session_timeout_s=args.session_timeout,
        demo_page=DEMO_PAGE,
        api_keys=load_keys(args.api_key_file, os.environ.get("SONATE_API_KEYS")),
        insecure_no_auth=args.insecure_no_auth,
        metrics_key=args.metrics_key,
        cors_origins=tuple(args.cors_origin),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    check_exposure(config)  # before the checkpoint loads: a refusal comes at once
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format, force=True)
    checkpoint = load_checkpoint(args.checkpoint)
    engine = Engine(
        checkpoint.model, EngineConfig(max_sessions=args.max_sessions, source=args.source), checkpoint.codecs
    )
    shown_host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host  # an IPv6 address
    scheme = "https" if args.ssl_certfile else "http"
    print(f"sonate: demo page at {scheme}://{shown_host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(engine, config, log_level=args.log_level)
