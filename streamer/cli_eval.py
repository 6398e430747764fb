"""`sonate eval`: lip sync, intelligibility, timbre similarity and identity on a split of the world.

Registered by the `sonate` program through :func:`add_eval_parser`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from sonate.models.errors import SonateInputError
from sonate.models.metrics.evaluate import GeneratedMedia, SystemUnderTest
from sonate.models.world.dataset import ClipInfo, World
from sonate.streamer.progress import ProgressBar

if TYPE_CHECKING:
    from sonate.models.decoders import Codecs
    from sonate.models.frontend import PhonemeTimeline
    from sonate.models.sampler import Guidance
    from sonate.models.transformer import SonateModel

__all__ = ["Timing", "add_eval_parser", "checkpoint_system", "model_system"]

Timing = Literal["clip", "text"]  # what the system under test speaks each clip from (see --timing)


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

    if args.max_clips is not None and args.max_clips < 1:
        raise SonateInputError("--max-clips must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise SonateInputError("--steps must be at least 1")
    if args.checkpoint not in (GROUND_TRUTH, "default") and not Path(args.checkpoint).is_dir():
        raise SonateInputError(f"--checkpoint {args.checkpoint!r} is not a folder, 'default' or 'ground-truth'")
    system, random_weights = None, False
    if args.checkpoint != GROUND_TRUTH:
        system, random_weights = checkpoint_system(args.checkpoint, args.seed, args.steps, args.one_pass, args.timing)
    bar = ProgressBar("eval")
    result = evaluate(
        args.data,
        system,
        split=args.split,
        max_clips=args.max_clips,
        progress=lambda done, total: bar.update(done, total, "clips,"),
    )
    bar.close()
    result = {"checkpoint": args.checkpoint, "random_weights": random_weights, "one_pass": args.one_pass,
              "timing": args.timing, **result}  # fmt: skip
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def checkpoint_system(
    checkpoint: str, seed: int, steps: int | None, one_pass: bool = False, timing: Timing = "clip"
) -> tuple[SystemUnderTest, bool]:
    """The clip maker of a checkpoint ("default" or a folder) for `evaluate`, and whether its weights are random."""
    from sonate.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(None if checkpoint == "default" else Path(checkpoint))
    return model_system(loaded.model, loaded.codecs, seed, steps, None, one_pass, timing), loaded.random_weights


def model_system(
    model: SonateModel,
    codecs: Codecs,
    seed: int,
    steps: int | None,
    guidance: Guidance | None,
    one_pass: bool,
    timing: Timing = "clip",
) -> SystemUnderTest:
    """The clip maker of `model` for `evaluate`: each clip's sentence in its reference voice and avatar, made
    with `steps` Euler steps and `guidance` (None: the model's), on the clip's timeline or from its text alone
    (`timing`, see `--timing`)."""
    from sonate.streamer.clip import open_clip_stream, speak_clip, speech_timeline

    cfg = model.cfg

    def speak(world: World, info: ClipInfo, timeline: PhonemeTimeline, index: int) -> GeneratedMedia:
        stream = open_clip_stream(
            model,
            codecs,
            voice=world.reference_voice(info.timbre, "a", cfg.sample_rate),
            avatar=world.reference_image(info.avatar, cfg.avatar_image_size),
            instruction=info.instruction,
            seed=seed + index,
            steps=steps,
            guidance=guidance,
            one_pass=one_pass,
        )
        if timing == "clip":
            clip = speak_clip(stream, codecs, timeline, seconds=timeline.duration_s)
        else:
            clip = speak_clip(stream, codecs, speech_timeline(info.text))
        return GeneratedMedia(clip.audio, clip.frames, clip.sample_rate, clip.fps)

    return speak
