"""Flow-matching training of the joint transformer on the teacher-forcing one-pass forward.

A training example is a window of `chunks` consecutive chunks of one world clip: its clean latents are the
context (teacher forcing), and every chunk also appears once noised at its own flow time t, seeing the prefix,
the clean chunks before it within the window W and itself — the mask and positions the streaming sampler
reproduces exactly. The loss is the mean squared error of the predicted velocity ε − x₀, per modality.

Guidance dropouts train the branches that classifier-free guidance combines: the reference voice replaced by a
white-noise clip (the noise-based negative), the instruction dropped, the phonemes dropped. Data parallel over
`torchrun` processes (gloo on CPU, NCCL on GPU) through `DistributedDataParallel`; every rank keeps the same
EMA weights, rank 0 validates and saves. The loop is resumable from its own state file.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from sonate.models.audio import white_noise
from sonate.models.conditioning import INSTRUCTION_PAD, Conditioning, encode_instruction
from sonate.models.config import SonateConfig
from sonate.models.decoders import Codecs
from sonate.models.sampler import chunk_phonemes, dropped_phonemes
from sonate.models.teacher_forcing import teacher_forward
from sonate.models.transformer import ChunkPhonemes, SonateModel
from sonate.models.world.dataset import ClipInfo, World

STATE_FILE = "train_state.pt"


@dataclass
class TrainConfig:
    """The optimisation recipe. Steps count optimizer updates; `batch` is per process."""

    steps: int = 2000
    batch: int = 8
    chunks: int = 9  # chunks per training window: W + 1 exercises the full window
    lr: float = 5e-4
    warmup: int = 100  # steps of linear warm-up, then cosine decay to `min_lr_ratio` · lr
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    voice_dropout: float = 0.1  # reference voice → white noise: the CFG negative
    instruction_dropout: float = 0.1
    phoneme_dropout: float = 0.05
    mouth_weight: float = 0.0  # extra video-loss weight on the latent cells of the mouth box (what lip sync reads)
    first_window: float = 0.5  # share of windows that start at the clip's first chunk
    reference_seconds: tuple[float, float] = (2.0, 4.0)  # reference-voice crop length, drawn per batch
    val_every: int = 250
    val_batches: int = 4
    seed: int = 0


@dataclass
class EncodedClip:
    """One world clip as training data: latents and conditioning of its whole chunks.

    audio: [chunks·chunk_audio_latents, audio_latent_dim]; video: [chunks·chunk_video_latents, C, h, w]
    (float16 to halve memory); phonemes: batch-1 ids of all its chunks; instruction: [instruction_tokens].
    """

    audio: Tensor
    video: Tensor
    phonemes: ChunkPhonemes
    instruction: Tensor
    timbre: str
    avatar: str


@dataclass
class EncodedSplit:
    """A split of the world encoded for training, with the reference voices and images its clips use.

    voices: timbre → waveform [samples] at the model's rate; avatars: avatar → image [3, S, S] in [0, 1];
    avatar_latents: avatar → its reference latent [C, h, w]; mouths: avatar → its mouth box in latent cells
    (top, bottom, left, right).
    """

    clips: list[EncodedClip]
    voices: dict[str, Tensor]
    avatars: dict[str, Tensor]
    avatar_latents: dict[str, Tensor]
    mouths: dict[str, tuple[int, int, int, int]]


@torch.no_grad()
def encode_split(
    cfg: SonateConfig,
    world: World,
    split: str,
    codecs: Codecs,
    max_clips: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EncodedSplit:
    """Encode the whole chunks of every clip of `split` (clips shorter than one chunk are skipped)."""
    infos: list[ClipInfo] = world.clips(split)[:max_clips]
    infos = sorted(infos, key=lambda info: (info.shard, info.index))  # one shard decoded at a time
    clips = []
    for n, info in enumerate(infos):
        clip = world.load(info)
        chunks = len(clip.frames) // cfg.chunk_video_frames
        if chunks == 0:
            continue
        frames = torch.from_numpy(clip.frames[: chunks * cfg.chunk_video_frames])
        audio = torch.from_numpy(clip.audio[: chunks * cfg.chunk_audio_samples])
        timeline = clip.timeline()
        clips.append(
            EncodedClip(
                audio=codecs.encode_audio(audio[None])[0].float(),
                video=codecs.encode_video(frames[None])[0].half(),
                phonemes=chunk_phonemes(cfg, [timeline], 0, chunks),
                instruction=encode_instruction(cfg, info.instruction),
                timbre=info.timbre,
                avatar=info.avatar,
            )
        )
        if progress is not None:
            progress(n + 1, len(infos))
    voices = {
        t: torch.from_numpy(world.reference_voice(t, "a", cfg.sample_rate)) for t in sorted({c.timbre for c in clips})
    }
    images = {a: torch.from_numpy(world.reference_image(a, cfg.avatar_image_size)) for a in {c.avatar for c in clips}}
    avatars = {a: image.permute(2, 0, 1).float() / 255.0 for a, image in sorted(images.items())}
    latents = {a: codecs.encode_still(image[None])[0] for a, image in sorted(images.items())}
    mouths = {a: world.mouth_box(a, cfg.video_latent_height, cfg.video_latent_width) for a in sorted(images)}
    return EncodedSplit(clips, voices, avatars, latents, mouths)


def clip_chunks(cfg: SonateConfig, clip: EncodedClip) -> int:
    """Whole chunks in `clip`."""
    return clip.audio.shape[0] // cfg.chunk_audio_latents


@dataclass
class Batch:
    """A batch of training windows: clean latents, their phonemes, the raw conditioning, and the video loss's
    weight per latent cell (mean 1 per window)."""

    audio: Tensor  # [B, K·Fa, Ca]
    video: Tensor  # [B, K·Fv, C, h, w]
    phonemes: ChunkPhonemes
    cond: Conditioning
    video_weight: Tensor  # [B, 1, 1, h, w]


def sample_batch(cfg: SonateConfig, train: TrainConfig, data: EncodedSplit, rng: random.Random) -> Batch:
    """Draw `train.batch` windows of `train.chunks` chunks, with the guidance dropouts applied."""
    k = train.chunks
    eligible = [c for c in data.clips if clip_chunks(cfg, c) >= k]
    if not eligible:
        raise ValueError(f"no clip has {k} whole chunks; use fewer --chunks")
    reference = int(rng.uniform(*train.reference_seconds) * cfg.sample_rate)
    audio, video, phonemes, instructions, voices, avatars, latents, weights = [], [], [], [], [], [], [], []
    for _ in range(train.batch):
        clip = rng.choice(eligible)
        first = 0 if rng.random() < train.first_window else rng.randrange(clip_chunks(cfg, clip) - k + 1)
        fa, fv = cfg.chunk_audio_latents, cfg.chunk_video_latents
        audio.append(clip.audio[first * fa : (first + k) * fa])
        video.append(clip.video[first * fv : (first + k) * fv].float())
        ids = clip.phonemes.select(first, k, cfg)
        if rng.random() < train.phoneme_dropout:
            ids = dropped_phonemes(cfg, ids)
        phonemes.append(ids)
        instruction = clip.instruction
        if rng.random() < train.instruction_dropout:
            instruction = torch.full_like(instruction, INSTRUCTION_PAD)
        instructions.append(instruction)
        if rng.random() < train.voice_dropout:
            voices.append(white_noise(reference, cfg.negative_noise_std, rng.randrange(2**31)))
        else:
            voice = data.voices[clip.timbre]
            if len(voice) < reference:
                voice = voice.repeat(math.ceil(reference / len(voice)))
            start = rng.randrange(len(voice) - reference + 1)
            voices.append(voice[start : start + reference])
        avatars.append(data.avatars[clip.avatar])
        latents.append(data.avatar_latents[clip.avatar])
        weights.append(mouth_weights(cfg, data.mouths[clip.avatar], train.mouth_weight))
    cond = Conditioning(torch.stack(instructions), torch.stack(voices), torch.stack(avatars), torch.stack(latents))
    return Batch(torch.stack(audio), torch.stack(video), ChunkPhonemes.cat(phonemes), cond, torch.stack(weights))


def mouth_weights(cfg: SonateConfig, mouth: tuple[int, int, int, int], extra: float) -> Tensor:
    """Video-loss weights [1, 1, h, w] over the latent cells: 1, plus `extra` inside the `mouth` box (top,
    bottom, left, right in cells), scaled to mean 1 so the loss keeps its scale."""
    top, bottom, left, right = mouth
    weights = torch.ones(1, 1, cfg.video_latent_height, cfg.video_latent_width)
    weights[..., top:bottom, left:right] += extra
    return weights / weights.mean()


class FlowMatchingLoss(nn.Module):
    """The training objective as a module, so `DistributedDataParallel` can wrap it: batch → (loss, parts)."""

    def __init__(self, model: SonateModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        model, cfg = self.model, self.model.cfg
        b, k = batch.audio.shape[0], batch.audio.shape[1] // cfg.chunk_audio_latents
        t = torch.sigmoid(torch.randn(b, k, generator=generator))  # logit-normal flow times, one per chunk
        noise_a = torch.randn(batch.audio.shape, generator=generator)
        noise_v = torch.randn(batch.video.shape, generator=generator)
        t_a = t.repeat_interleave(cfg.chunk_audio_latents, dim=1)[:, :, None]
        t_v = t.repeat_interleave(cfg.chunk_video_latents, dim=1)[:, :, None, None, None]
        noisy = ((1 - t_a) * batch.audio + t_a * noise_a, (1 - t_v) * batch.video + t_v * noise_v)
        prefix = model.conditioning(batch.cond)
        v_a, v_v = teacher_forward(model, prefix, (batch.audio, batch.video), batch.phonemes, noisy, batch.phonemes, t)
        loss_a = (v_a - (noise_a - batch.audio)).square().mean()
        loss_v = ((v_v - (noise_v - batch.video)).square() * batch.video_weight).mean()
        return loss_a + loss_v, {"audio": loss_a.item(), "video": loss_v.item()}


def init_for_training(model: SonateModel) -> None:
    """Zero the AdaLN gates and the output projections (adaLN-Zero): every block starts as the identity and
    the first prediction is 0, which trains faster than the unit-variance init the exactness tests use."""
    with torch.no_grad():
        for block in model.blocks:
            for layer in (block.audio, block.video):
                layer.modulation[2].zero_()
                layer.modulation[5].zero_()
                layer.out.weight.mul_(0.1)
        for adaln in (model.audio_adaln, model.video_adaln):
            adaln[1].weight.mul_(0.1)
        for head in (model.audio_out, model.video_out):
            head.proj.weight.zero_()
            head.proj.bias.zero_()


def learning_rate(train: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_lr_ratio` · lr at `steps`."""
    if step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    progress = min(1.0, (step - train.warmup) / max(1, train.steps - train.warmup))
    floor = train.min_lr_ratio
    return train.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainReport:
    """What `train` calls back with after every step (rank 0): units are steps, seconds and windows/s."""

    step: int
    loss: float
    audio_loss: float
    video_loss: float
    lr: float
    windows_per_s: float
    elapsed_s: float


@dataclass
class Distributed:
    """This process's place in a `torchrun` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Distributed:
        """Join the process group `torchrun` describes in the environment, if any."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), world_size)

    def gather(self, value: object) -> list[object]:
        """`value` from every rank, in rank order (on every rank)."""
        if self.world_size == 1:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait for every rank (rank 0 validates and saves while the others wait here)."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(
    model: SonateModel,
    data: EncodedSplit,
    val: EncodedSplit,
    train_cfg: TrainConfig,
    out: Path,
    *,
    ranks: Distributed | None = None,
    on_step: Callable[[TrainReport], None] | None = None,
    on_validate: Callable[[int, SonateModel, float], None] | None = None,
) -> SonateModel:
    """Train `model` in place for `train_cfg.steps` steps (resuming from `out/train_state.pt` if it exists)
    and return the EMA model. `on_validate(step, ema_model, val_loss)` runs on rank 0 every `val_every` steps
    and at the end."""
    ranks = ranks or Distributed()
    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)
    objective: nn.Module = FlowMatchingLoss(model)
    if ranks.world_size > 1:
        objective = DistributedDataParallel(objective)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embed" in name or "pos" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_cfg.lr,
        betas=(0.9, 0.99),
    )
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    step = 0
    rng = random.Random(f"{train_cfg.seed}-{ranks.rank}")  # which windows, and the dropouts
    generator = torch.Generator().manual_seed(train_cfg.seed * 1009 + ranks.rank)  # flow times and noise
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.setstate(state["rng"][ranks.rank])
        generator.set_state(state["generator"][ranks.rank])
    model.train()
    start = time.perf_counter()
    while step < train_cfg.steps:
        lr = learning_rate(train_cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(cfg, train_cfg, data, rng)
        loss, parts = objective(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        step += 1
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1 - train_cfg.ema)
        elapsed = time.perf_counter() - start
        if on_step is not None and ranks.rank == 0:
            windows_per_s = train_cfg.batch * ranks.world_size / max(elapsed, 1e-9)
            on_step(TrainReport(step, loss.item(), parts["audio"], parts["video"], lr, windows_per_s, elapsed))
        start = time.perf_counter()
        if step % train_cfg.val_every == 0 or step == train_cfg.steps:
            rng_states = ranks.gather((rng.getstate(), generator.get_state()))
            if ranks.rank == 0:
                state = {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "rng": [r for r, _ in rng_states],
                    "generator": [g for _, g in rng_states],
                    "train_config": asdict(train_cfg),
                }
                torch.save(state, state_path.with_suffix(".tmp"))
                state_path.with_suffix(".tmp").replace(state_path)
                if on_validate is not None:
                    on_validate(step, ema, validation_loss(ema, val, train_cfg))
            ranks.barrier()
    model.eval()
    return ema


@torch.no_grad()
def validation_loss(model: SonateModel, val: EncodedSplit, train_cfg: TrainConfig) -> float:
    """Mean loss over `val_batches` fixed batches of the validation split, without dropouts or mouth weight
    (so that runs with different recipes compare)."""
    cfg = model.cfg
    plain = {"voice_dropout": 0.0, "instruction_dropout": 0.0, "phoneme_dropout": 0.0, "mouth_weight": 0.0}
    fixed = TrainConfig(**{**asdict(train_cfg), **plain})
    fixed.chunks = min(fixed.chunks, max(clip_chunks(cfg, c) for c in val.clips))
    rng, generator = random.Random(1234), torch.Generator().manual_seed(1234)
    objective = FlowMatchingLoss(model)
    losses = [objective(sample_batch(cfg, fixed, val, rng), generator)[0].item() for _ in range(fixed.val_batches)]
    return float(np.mean(losses))
