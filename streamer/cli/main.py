"""The `sonate` command line: one program, one subcommand per job.

Each subcommand lives in a module of its own that is imported only when that subcommand runs, so `sonate --help`
and `sonate say` load neither torch nor the server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sonate.models.errors import SonateInputError

COMMANDS = {  # name: (the module that adds its arguments and runs it, its one-line help)
    "generate": ("sonate.streamer.cli.generate", "speak a text as an audio-video clip (MP4)"),
    "serve": ("sonate.streamer.cli.serve", "run the HTTP, websocket and WebRTC server"),
    "say": ("sonate.streamer.cli.say", "speak a text through a running server and record the reply (MP4)"),
    "bench": ("sonate.streamer.cli.bench", "measure speed"),
    "data": ("sonate.streamer.cli.data", "make the synthetic talking-avatar world"),
    "eval": ("sonate.streamer.cli.evaluate", "measure lip sync, WER, timbre similarity and identity on the world"),
    "train": ("sonate.streamer.cli.train", "train the codecs and the model on a world"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `sonate`; `command`'s module is imported to add that subcommand's arguments (every
    command's, when None)."""
    parser = argparse.ArgumentParser(
        prog="sonate",
        description="Real-time streaming joint audio-video generation with zero-shot voice cloning.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: run one subcommand; bad input prints one line on stderr and exits with status 2."""
    logging.basicConfig(level=logging.WARNING, format="sonate: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), "")  # no option of `sonate` takes a value
    args = build_parser(command).parse_args(argv)
    try:
        args.run(args)
    except SonateInputError as exc:
        print(f"sonate: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
