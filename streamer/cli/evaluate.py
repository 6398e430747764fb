"""`sonate eval`: lip sync, intelligibility, timbre similarity and identity on a split of the world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from tqdm import tqdm

from sonate.models.errors import SonateInputError
from sonate.streamer.bench import BAR_FORMAT, advance
from sonate.streamer.engine.evaluation import Timing


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sonate eval`."""
    p.description = (
        "Score a checkpoint — or the data itself (ground-truth) — on a split of a world made by "
        "`sonate data make`: SyncNet-style lip sync, pocketsphinx WER, Resemblyzer timbre similarity and "
        "identity colour error, each beside the ground truth. See docs/world.md."
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
    p.add_argument(
        "--one-pass",
        action="store_true",
        help="generate with no KV cache, re-running the one-pass forward every step (the offline reference)",
    )
    p.add_argument(
        "--timing",
        default="clip",
        choices=get_args(Timing),
        help="clip: speak each clip's own phoneme timeline, lead-in included, for the clip's length, so the "
        "generated and true clips have the same layout (default); text: speak the sentence alone, as `sonate "
        "generate` does (no lead-in, silence to whole chunks after it)",
    )
    p.add_argument("--json", type=Path, help="also write the figures (and per-clip details) to this JSON file")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from sonate.models.metrics.evaluate import GROUND_TRUTH, evaluate, format_report
    from sonate.streamer.engine.evaluation import checkpoint_system

    if args.max_clips is not None and args.max_clips < 1:
        raise SonateInputError("--max-clips must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise SonateInputError("--steps must be at least 1")
    if args.checkpoint not in (GROUND_TRUTH, "default") and not Path(args.checkpoint).is_dir():
        raise SonateInputError(f"--checkpoint {args.checkpoint!r} is not a folder, 'default' or 'ground-truth'")
    system, random_weights = None, False
    if args.checkpoint != GROUND_TRUTH:
        system, random_weights = checkpoint_system(args.checkpoint, args.seed, args.steps, args.one_pass, args.timing)
    bar = tqdm(desc="eval", unit="clips", bar_format=BAR_FORMAT)
    result = evaluate(
        args.data,
        system,
        split=args.split,
        max_clips=args.max_clips,
        progress=lambda done, total: advance(bar, done, total),
    )
    bar.close()
    result = {"checkpoint": args.checkpoint, "random_weights": random_weights, "one_pass": args.one_pass,
              "timing": args.timing, **result}  # fmt: skip
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
