"""The `sonate` command line: one program, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from sonate.clients.say import add_say_parser
from sonate.models.errors import SonateInputError
from sonate.streamer.bench_capacity import add_bench_capacity_parser
from sonate.streamer.bench_compare import add_bench_compare_parser
from sonate.streamer.bench_e2e import add_bench_e2e_parser, add_model_arguments, load_bench_model
from sonate.streamer.bench_kernels import add_bench_kernels_parser
from sonate.streamer.bench_sweep import add_bench_sweep_parser
from sonate.streamer.cli_data import add_data_parser
from sonate.streamer.cli_eval import add_eval_parser
from sonate.streamer.cli_train import add_train_parser


def _add_generate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate",
        help="speak a text as an audio-video clip (MP4)",
        description="Generate a talking-avatar clip (H.264 + AAC MP4) from text, chunk by chunk through the "
        "streaming sampler. Without --checkpoint it uses the embedded default model.",
    )
    p.add_argument("--text", required=True, help="what to say; [S0]..[S7] tags mark speakers in a dialogue")
    p.add_argument("--out", required=True, type=Path, help="the MP4 file to write")
    p.add_argument("--voice", type=Path, help="reference voice clip to clone (WAV, FLAC, MP3, OGG; any rate)")
    p.add_argument("--avatar", type=Path, help="reference avatar image (PNG or JPEG)")
    p.add_argument("--instruction", default="", help="describes the voice and the face, e.g. 'a calm low voice'")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--steps", type=int, help="Euler steps per chunk (default: the checkpoint's, 4)")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    from sonate.models.checkpoint import load_checkpoint
    from sonate.models.media_io import load_audio, load_image
    from sonate.streamer.clip import generate_clip
    from sonate.streamer.mp4 import write_mp4

    if args.steps is not None and args.steps < 1:
        raise SonateInputError("--steps must be at least 1")
    checkpoint = load_checkpoint(args.checkpoint)
    model, cfg = checkpoint.model, checkpoint.model.cfg
    voice = None if args.voice is None else load_audio(args.voice, cfg.sample_rate, max_seconds=30.0)
    avatar = None if args.avatar is None else load_image(args.avatar, cfg.avatar_image_size)
    started = time.perf_counter()
    clip = generate_clip(
        model,
        checkpoint.codecs,
        args.text,
        voice=voice,
        avatar=avatar,
        instruction=args.instruction,
        seed=args.seed,
        steps=args.steps,
    )
    elapsed = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(args.out, clip.frames, clip.audio, fps=clip.fps, sample_rate=clip.sample_rate)
    print(f"wrote {args.out} ({clip.seconds:.2f} s, generated in {elapsed:.2f} s)")


def _add_serve(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="run the HTTP, websocket and WebRTC server",
        description="Serve live talking-avatar sessions on one port: the REST API, the websocket session "
        "protocol, WebRTC (WHEP-style), /metrics and the demo page. See docs/protocol.md.",
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
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from sonate.models.checkpoint import load_checkpoint
    from sonate.streamer.engine import Engine, EngineConfig
    from sonate.streamer.server import ServerConfig, create_app

    if args.max_sessions < 1 or args.session_timeout <= 0 or not 0 < args.port < 65536:
        raise SonateInputError("--max-sessions must be at least 1, --session-timeout positive and --port in 1..65535")
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format, force=True)
    checkpoint = load_checkpoint(args.checkpoint)
    engine = Engine(
        checkpoint.model, EngineConfig(max_sessions=args.max_sessions, source=args.source), checkpoint.codecs
    )
    config = ServerConfig(host=args.host, port=args.port, session_timeout_s=args.session_timeout)
    app = create_app(engine, config)
    shown_host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host  # an IPv6 address
    print(f"sonate: demo page at http://{shown_host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        ws="websockets-sansio",  # the websockets library's implementation (`websockets` is its deprecated legacy one)
        ws_max_size=config.ws_max_message_bytes,
        ws_per_message_deflate=False,  # media is JPEG and PCM: compressing it costs CPU for nothing
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )


def _add_bench(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("bench", help="measure speed", description="Benchmarks that print figures.")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    m = targets.add_parser(
        "model",
        help="stream media through the sampler in-process",
        description="Stream media through the chunked sampler (model only, batch 1) and report chunk latency, "
        "real-time factor and the speedup of the KV cache over recomputing the visible context.",
    )
    add_model_arguments(m)
    m.add_argument("--seconds", type=float, default=30.0, help="media seconds to stream (default 30)")
    m.add_argument("--steps", type=int, default=4, help="Euler steps per chunk (default 4)")
    m.add_argument("--no-cfg", action="store_true", help="guidance off (one branch)")
    m.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    m.add_argument(
        "--recompute-seconds",
        type=_seconds_list,
        default=(),
        metavar="S1,S2,…",
        help="also time one chunk made by recomputing all of S seconds streamed (no cache, no window), e.g. 5,20,60",
    )
    m.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    m.set_defaults(run=_run_bench_model)
    add_bench_e2e_parser(targets)
    add_bench_kernels_parser(targets)
    add_bench_compare_parser(targets)
    add_bench_capacity_parser(targets)
    add_bench_sweep_parser(targets)


def _seconds_list(text: str) -> tuple[float, ...]:
    """`5,20,60` → (5.0, 20.0, 60.0): positive seconds."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}") from None
    if not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"every length must be positive, got {text!r}")
    return values


def _run_bench_model(args: argparse.Namespace) -> None:
    from sonate.models.sampler import Guidance
    from sonate.streamer.bench import bench_model, model_report
    from sonate.streamer.bench_plots import plot_recompute_curve
    from sonate.streamer.bench_report import write_outputs

    if args.seconds <= 0 or args.steps < 1:
        raise SonateInputError("--seconds must be positive and --steps at least 1")
    model, codecs = load_bench_model(args.checkpoint, args.preset)
    cfg = model.cfg
    guidance = Guidance() if args.no_cfg else Guidance.of(cfg)
    result = bench_model(cfg, args.seconds, args.steps, guidance, threads=args.threads, model=model, codecs=codecs,
                         recompute_seconds=args.recompute_seconds)  # fmt: skip
    plots = {"recompute": lambda path: plot_recompute_curve(result, path)} if args.recompute_seconds else {}
    write_outputs(result, model_report(result), args.json, plots)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `sonate` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="sonate",
        description="Real-time streaming joint audio-video generation with zero-shot voice cloning.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(commands)
    _add_serve(commands)
    _add_bench(commands)
    add_say_parser(commands)
    add_data_parser(commands)
    add_eval_parser(commands)
    add_train_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: run one subcommand; bad input prints one line on stderr and exits with status 2."""
    logging.basicConfig(level=logging.WARNING, format="sonate: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except SonateInputError as exc:
        print(f"sonate: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
