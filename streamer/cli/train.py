"""`sonate train`: the codecs, then the transformer, on a world made by `sonate data make`.

    sonate train codecs --data data/world --out out/codecs
    sonate train model --data data/world --codecs out/codecs --out out/train
    sonate train model --init out/train/checkpoint --mouth-weight 8 ...  # fine-tune a checkpoint
    torchrun --nproc-per-node 2 $(which sonate) train model ...      # data parallel (gloo on CPU, NCCL on GPU)

`train model` writes `OUT/checkpoint/` (a checkpoint folder `--checkpoint` accepts: the EMA weights and the
codecs) and a sample clip `OUT/samples/step-N.mp4` at every validation, logs every step to `OUT/log.jsonl`,
and resumes from `OUT/train_state.pt` when run again. Registered by the `sonate` program.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from sonate.models.errors import SonateInputError
from sonate.streamer.bench import BAR_FORMAT, advance

if TYPE_CHECKING:
    from sonate.models.config import SonateConfig
    from sonate.models.decoders import Codecs
    from sonate.models.train import Distributed, EncodedSplit
    from sonate.models.transformer import SonateModel
    from sonate.models.world.dataset import World


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `sonate train`."""
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    c = stages.add_parser("codecs", help="train the vocoder and the video autoencoder (the latent spaces)")
    c.add_argument("--data", required=True, type=Path, help="world folder")
    c.add_argument("--out", required=True, type=Path, help="folder for the three codec files")
    c.add_argument("--vocoder-steps", type=int, default=7500, help="(default 7500: ~13 min on one core)")
    c.add_argument("--video-steps", type=int, default=4000, help="(default 4000: ~18 min on one core)")
    c.add_argument("--seed", type=int, default=0, help="(default 0)")
    c.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    c.set_defaults(run=_run_train_codecs)
    m = stages.add_parser("model", help="train the joint transformer (flow matching, teacher forcing)")
    m.add_argument("--data", required=True, type=Path, help="world folder")
    m.add_argument("--codecs", required=True, type=Path, help="folder written by `sonate train codecs`")
    m.add_argument("--out", required=True, type=Path, help="run folder: state, log, samples, checkpoint/")
    m.add_argument("--preset", help="model preset of a fresh model (default tiny)")
    m.add_argument("--init", type=Path, help="start from this checkpoint folder's transformer (fine-tuning)")
    m.add_argument("--steps", type=int, default=2000, help="optimizer steps in all (default 2000)")
    m.add_argument("--batch", type=int, default=8, help="windows per step and process (default 8)")
    m.add_argument("--chunks", type=int, default=9, help="chunks per training window (default 9 = W + 1)")
    m.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    m.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    m.add_argument("--ema", type=float, default=0.999, help="EMA decay per step of the saved weights (default 0.999)")
    m.add_argument("--mouth-weight", type=float, default=0.0,
                   help="extra video-loss weight on the mouth box's latent cells (default 0)")  # fmt: skip
    m.add_argument("--val-every", type=int, default=250, help="validate, save and sample every N steps")
    m.add_argument("--max-clips", type=int, help="use only the first N training clips")
    m.add_argument("--seed", type=int, default=0, help="(default 0)")
    m.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice)")
    m.set_defaults(run=_run_train_model)


def _run_train_codecs(args: argparse.Namespace) -> None:
    from sonate.models.audio_codec import train_vocoder
    from sonate.models.decoders import Codecs
    from sonate.models.video_codec import train_video_autoencoder
    from sonate.models.world.dataset import World

    if args.vocoder_steps < 1 or args.video_steps < 1:
        raise SonateInputError("--vocoder-steps and --video-steps must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    world = World(args.data)
    started = time.perf_counter()
    bar = tqdm(desc="vocoder", unit="steps", bar_format=BAR_FORMAT)
    vocoder = train_vocoder(
        world,
        args.vocoder_steps,
        batch=8,
        segment_seconds=1.0,
        lr=3e-3,
        seed=args.seed,
        progress=lambda step, steps, loss: advance(bar, step, steps, f"stft {loss['stft']:.3f} mel {loss['mel']:.3f}"),
    )
    bar.close()
    bar = tqdm(desc="video autoencoder", unit="steps", bar_format=BAR_FORMAT)
    encoder, decoder = train_video_autoencoder(
        world,
        args.video_steps,
        batch=8,
        lr=2e-3,
        seed=args.seed,
        progress=lambda step, loss: advance(bar, step + 1, args.video_steps, f"loss {loss:.4f}"),
    )
    bar.close()
    Codecs(vocoder, encoder, decoder).save(args.out)
    print(f"wrote the codecs to {args.out} in {time.perf_counter() - started:.0f} s")


def _run_train_model(args: argparse.Namespace) -> None:
    from sonate.models.checkpoint import from_pretrained, random_model, save_pretrained
    from sonate.models.config import SonateConfig
    from sonate.models.decoders import Codecs
    from sonate.models.train import Distributed, TrainConfig, TrainReport, init_for_training, train
    from sonate.models.world.dataset import World

    train_cfg = TrainConfig(
        steps=args.steps,
        batch=args.batch,
        chunks=args.chunks,
        lr=args.lr,
        warmup=args.warmup,
        ema=args.ema,
        mouth_weight=args.mouth_weight,
        val_every=args.val_every,
        seed=args.seed,
    )
    if min(args.steps, args.batch, args.chunks, args.val_every) < 1 or args.lr <= 0 or args.warmup < 0:
        raise SonateInputError("--steps, --batch, --chunks and --val-every must be at least 1, --lr positive")
    if not 0 <= args.ema < 1:
        raise SonateInputError("--ema must be in [0, 1)")
    if args.mouth_weight < 0:
        raise SonateInputError("--mouth-weight must not be negative")
    if args.init is not None and args.preset is not None:
        raise SonateInputError("give --preset or --init, not both: a fine-tuned model keeps its checkpoint's config")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    initial = from_pretrained(args.init).float() if args.init is not None else None
    cfg = initial.cfg if initial is not None else SonateConfig.preset(args.preset or "tiny")
    codecs = Codecs.load(args.codecs, cfg)
    world = World(args.data)
    ranks = Distributed.from_environment()
    try:
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        splits = {split: _encoded(cfg, world, split, codecs, out, args.max_clips, ranks) for split in ("train", "val")}
        if initial is not None:
            model = initial.train()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)  # every rank starts from the same weights
                model = random_model(cfg, seed=args.seed).float().train()
                init_for_training(model)
        bar = tqdm(desc="train", unit="steps", bar_format=BAR_FORMAT)
        log = (out / "log.jsonl").open("a") if ranks.rank == 0 else None

        def on_step(report: TrainReport) -> None:
            advance(bar, report.step, args.steps, f"loss {report.loss:.4f} ({report.windows_per_s:.1f} windows/s)")
            log.write(json.dumps(report.__dict__) + "\n")
            log.flush()

        def on_validate(step: int, ema: SonateModel, val_loss: float) -> None:
            save_pretrained(ema, out / "checkpoint", codecs)
            log.write(json.dumps({"step": step, "val_loss": val_loss}) + "\n")
            log.flush()
            _write_sample(world, ema, codecs, out / "samples" / f"step-{step:06d}.mp4")
            print(f"\nstep {step}: validation loss {val_loss:.4f}; wrote {out / 'checkpoint'}", flush=True)

        train(
            model, splits["train"], splits["val"], train_cfg, out, ranks=ranks, on_step=on_step, on_validate=on_validate
        )
        bar.close()
    finally:
        ranks.close()


def _encoded(
    cfg: SonateConfig, world: World, split: str, codecs: Codecs, out: Path, max_clips: int | None, ranks: Distributed
) -> EncodedSplit:
    """The encoded split, cached in `out` (rank 0 encodes, the other ranks wait and read it)."""
    import torch.distributed as dist

    from sonate.models.train import encode_split

    limit = max_clips if split == "train" else None
    path = out / f"encoded-{split}-{limit or 'all'}.pt"
    if ranks.rank == 0 and not path.is_file():
        bar = tqdm(desc=f"encode {split}", unit="clips", bar_format=BAR_FORMAT)
        data = encode_split(
            cfg,
            world,
            split,
            codecs,
            limit,
            progress=lambda done, total: advance(bar, done, total),
        )
        bar.close()
        torch.save(data, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    if ranks.world_size > 1:
        dist.barrier()
    return torch.load(path, weights_only=False)


def _write_sample(world: World, model: SonateModel, codecs: Codecs, path: Path) -> None:
    """Speak the first validation clip's sentence with its voice and avatar, to an MP4."""
    from sonate.streamer.engine.clip import generate_clip
    from sonate.streamer.media.mp4 import write_mp4

    cfg = model.cfg
    info = world.clips("val")[0]
    clip = generate_clip(
        model,
        codecs,
        info.text,
        voice=world.reference_voice(info.timbre, "a", cfg.sample_rate),
        avatar=world.reference_image(info.avatar, cfg.avatar_image_size),
        instruction=info.instruction,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, clip.frames, clip.audio, fps=clip.fps, sample_rate=clip.sample_rate)
