"""`sonate say`: a client of a running server; it loads neither torch nor the server."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from sonate.clients.say import SayResult, say


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sonate say`."""
    p.description = (
        "Open a session on a running `sonate serve`, stream the text to it, receive the avatar over "
        "WebRTC and write what arrives to an MP4; prints when the first audio and video of the speech arrived."
    )
    p.add_argument("text", help="what to say")
    p.add_argument("--server", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    p.add_argument("--out", required=True, type=Path, help="the MP4 file to write")
    p.add_argument("--voice", type=Path, help="reference voice clip to clone (WAV, FLAC, MP3, OGG; 0.5 to 30 s)")
    p.add_argument("--avatar", type=Path, help="reference avatar picture (PNG or JPEG)")
    p.add_argument("--instruction", default="", help="describes the voice and the face, e.g. 'a calm low voice'")
    p.add_argument(
        "--words-per-second", type=float, help="send the text word by word at this rate (default: all at once)"
    )
    p.add_argument("--api-key", help="the server's API key, where it asks for one (default: env SONATE_API_KEY)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """The `say` subcommand: runs `say` and prints what it measured."""
    started = time.monotonic()
    try:
        result = asyncio.run(_say_args(args))
    except TimeoutError:
        print("sonate: error: the server did not finish speaking in time", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {result.out} ({result.media_seconds:.2f} s of media, {time.monotonic() - started:.1f} s in all)")
    latency = result.latency
    if latency is None:
        print("no speech.started arrived")
        return
    print(f"time to first audio  {_ms(latency.ttfa_ms)}  (text sent → its first phoneme's audio received)")
    print(f"time to first video  {_ms(latency.ttfv_ms)}  (text sent → the frame showing it received)")
    print(f"server's ttfa        {latency.server_ttfa_ms:.0f} ms  (text pushed → speech playing, at the server)")
    print(f"speech duration      {result.speech_seconds:.2f} s")


async def _say_args(args: argparse.Namespace) -> SayResult:
    return await say(
        args.server,
        args.text,
        args.out,
        voice=args.voice,
        avatar=args.avatar,
        instruction=args.instruction,
        words_per_second=args.words_per_second,
        api_key=args.api_key or os.environ.get("SONATE_API_KEY"),
    )


def _ms(value: float | None) -> str:
    return "n/a (not found in the received media)" if value is None else f"{value:.0f} ms"
