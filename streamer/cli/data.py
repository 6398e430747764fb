"""`sonate data`: make, inspect and preview the synthetic talking-avatar world.

Registered by the `sonate` program through :func:`add_data_parser`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from sonate.models.errors import SonateInputError
from sonate.streamer.bench import BAR_FORMAT, advance


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sonate data`."""
    p.description = (
        "The synthetic world: espeak-ng speech in many timbres with exact phoneme timings and a "
        "procedurally rendered face whose mouth follows them. See docs/world.md."
    )
    jobs = p.add_subparsers(dest="job", required=True, metavar="JOB")
    m = jobs.add_parser(
        "make",
        help="write shards, references and a manifest (resumable)",
        description="Write a world to DIR: shards of clips, a reference clip pair per timbre, a reference image "
        "per avatar and manifest.json. Deterministic from --seed; rerun the same command to resume.",
    )
    m.add_argument("--out", required=True, type=Path, help="folder to write (created; resumed if it holds a world)")
    m.add_argument("--hours", required=True, type=float, help="target hours of clips, all splits together")
    m.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    m.add_argument("--timbres", type=int, default=240, help="distinct voices (default 240)")
    m.add_argument("--avatars", type=int, default=240, help="distinct faces (default 240)")
    m.add_argument("--heldout-fraction", type=float, default=0.1, help="of timbres/avatars for val and test each")
    m.add_argument("--eval-fraction", type=float, default=0.05, help="of clips for val and test each (default 0.05)")
    m.add_argument("--clips-per-shard", type=int, default=64, help="clips per shard file (default 64)")
    m.add_argument("--image-size", type=int, default=128, help="frame side in pixels (default 128)")
    m.add_argument("--workers", type=int, default=1, help="processes making shards (default 1)")
    m.set_defaults(run=_run_make)

    i = jobs.add_parser("info", help="summarise a world", description="Print a world's splits, sizes and speed.")
    i.add_argument("--data", required=True, type=Path, help="world folder")
    i.set_defaults(run=_run_info)

    v = jobs.add_parser("preview", help="write one clip as MP4", description="Write one clip of a world as MP4.")
    v.add_argument("--data", required=True, type=Path, help="world folder")
    v.add_argument("--clip", help="clip id (default: the first test clip)")
    v.add_argument("--out", required=True, type=Path, help="MP4 file to write")
    v.set_defaults(run=_run_preview)


def _run_make(args: argparse.Namespace) -> None:
    from sonate.models.world.make import WorldConfig, make_world

    if args.workers < 1:
        raise SonateInputError("--workers must be at least 1")
    config = WorldConfig(
        hours=args.hours,
        seed=args.seed,
        timbres=args.timbres,
        avatars=args.avatars,
        heldout_fraction=args.heldout_fraction,
        eval_fraction=args.eval_fraction,
        clips_per_shard=args.clips_per_shard,
        image_size=args.image_size,
    )
    bar = tqdm(desc="data make", unit="clips", bar_format=BAR_FORMAT)
    started = time.perf_counter()

    def progress(done: int, total: int, seconds: float) -> None:
        elapsed = time.perf_counter() - started
        advance(bar, done, total, f"{seconds / 3600:.3f} h, {seconds / max(elapsed, 1e-9):.1f}x real time")

    manifest = make_world(args.out, config, workers=args.workers, progress=progress)
    bar.close()
    _print_stats(args.out, manifest)


def _print_stats(root: Path, manifest: dict) -> None:
    stats = manifest["stats"]
    by_split = ", ".join(f"{split} {hours:.3f} h" for split, hours in stats["hours_by_split"].items())
    speed = stats["last_run_x_realtime"]
    print(f"world in {root}: {stats['clips']} clips, {stats['hours']:.3f} h ({by_split})")
    print(
        f"{len(manifest['timbres'])} timbres, {len(manifest['avatars'])} avatars; {stats['bytes'] / 1e6:.1f} MB "
        f"({stats['bytes_per_hour'] / 1e6:.0f} MB per hour)"
        + (f"; last run {speed:.1f}x real time" if speed else "; nothing left to make")
    )


def _run_info(args: argparse.Namespace) -> None:
    from sonate.models.world.dataset import World

    world = World(args.data)
    if not world.complete:
        print(f"{args.data} is not complete yet: rerun its `sonate data make` to finish it")
        return
    _print_stats(args.data, world.manifest)


def _run_preview(args: argparse.Namespace) -> None:
    from sonate.models.world.dataset import World
    from sonate.streamer.media.mp4 import write_mp4

    world = World(args.data)
    clips = world.clips()
    if not clips:
        raise SonateInputError(f"{args.data} holds no clips yet")
    if args.clip is None:
        info = (world.clips("test") or clips)[0]
    else:
        matches = [c for c in clips if c.id == args.clip]
        if not matches:
            raise SonateInputError(f"no clip {args.clip!r} in {args.data}; ids look like {clips[0].id}")
        info = matches[0]
    clip = world.load(info)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(args.out, clip.frames, clip.audio, fps=clip.fps, sample_rate=clip.sample_rate)
    print(f'wrote {args.out}: {info.id} ({clip.seconds:.2f} s) "{info.text}" — {info.instruction}')
