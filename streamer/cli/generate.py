"""`sonate generate`: speak a text as a talking-avatar clip (MP4), chunk by chunk through the streaming sampler."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sonate.models.errors import SonateInputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sonate generate`."""
    p.description = (
        "Generate a talking-avatar clip (H.264 + AAC MP4) from text, chunk by chunk through the "
        "streaming sampler. Without --checkpoint it uses the embedded default model."
    )
    p.add_argument("--text", required=True, help="what to say; [S0]..[S7] tags mark speakers in a dialogue")
    p.add_argument("--out", required=True, type=Path, help="the MP4 file to write")
    p.add_argument("--voice", type=Path, help="reference voice clip to clone (WAV, FLAC, MP3, OGG; any rate)")
    p.add_argument("--avatar", type=Path, help="reference avatar image (PNG or JPEG)")
    p.add_argument("--instruction", default="", help="describes the voice and the face, e.g. 'a calm low voice'")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--steps", type=int, help="Euler steps per chunk (default: the checkpoint's, 4)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from sonate.models.checkpoint import load_checkpoint
    from sonate.models.media_io import load_audio, load_image
    from sonate.streamer.engine.clip import generate_clip
    from sonate.streamer.media.mp4 import write_mp4

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
