"""`sonate eval`: lip sync, intelligibility, timbre similarity and identity on a split of the world.

Registered by the `sonate` program through :func:`add_eval_parser`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sonate.models.errors import SonateInputError

__all__ = ["add_eval_parser"]


def add_eval_parser(subcommands: argparse._SubParsersAction) -> None:
    """Add `sonate eval` to the `sonate` program's subcommands."""
    p = subcommands.add_parser(
        "eval",
        help="measure lip sync, WER, timbre similarity and identity on the world",
        description="Score a checkpoint — or the data itself (ground-truth) — on a split of a world made by "
        "`sonate data make`: SyncNet-style lip sync, pocketsphinx WER, Resemblyzer timbre similarity and "
        "identity colour error, each beside the ground truth. See docs/world.md.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint folder, 'default' (the embedded model) or 'ground-truth' (score the data itself)",
    )
    p.add_argument("--data", required=True, type=Path, help="world folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="(default test)")
    p.add_argument("--max-clips", type=int, help="score only the first N clips of the split")
    p.add_argument("--seed", type=int, default=0, help="generation seed of the first clip (default 0)")
    p.add_argument("--steps", type=int, help="Euler steps per chunk (default: the checkpoint's)")
    p.add_argument("--json", type=Path, help="also write the figures (and per-clip details) to this JSON file")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from sonate.models.metrics.evaluate import GROUND_TRUTH, evaluate, format_report
    from sonate.models.world.cli import ProgressBar

    if args.max_clips is not None and args.max_clips < 1:
        raise SonateInputError("--max-clips must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise SonateInputError("--steps must be at least 1")
    if args.checkpoint not in (GROUND_TRUTH, "default") and not Path(args.checkpoint).is_dir():
        raise SonateInputError(f"--checkpoint {args.checkpoint!r} is not a folder, 'default' or 'ground-truth'")
    bar = ProgressBar("eval")
    result = evaluate(
        args.data,
        args.checkpoint,
        split=args.split,
        max_clips=args.max_clips,
        seed=args.seed,
        steps=args.steps,
        progress=lambda done, total: bar.update(done, total, "clips,"),
    )
    bar.close()
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
