"""Training: the loss goes down, a resumed run equals an uninterrupted one, two DDP ranks agree, and the CLI
takes a world to a checkpoint that loads."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sonate.models.checkpoint import load_checkpoint, random_model
from sonate.models.train import (
    TrainConfig,
    init_for_training,
    learning_rate,
    sample_batch,
    train,
    validation_loss,
)
from sonate.models.world import WorldConfig, make_world
from tests.conftest import small_config, synthetic_split

ROOT = Path(__file__).resolve().parents[1]


def fresh_model():
    model = random_model(small_config()).train()
    init_for_training(model)
    return model


def test_training_reduces_the_loss(tmp_path: Path) -> None:
    cfg = small_config()
    data = synthetic_split(cfg, clips=2, chunks=3, seed=0)
    settings = TrainConfig(steps=40, batch=4, chunks=3, lr=3e-3, warmup=5, val_every=40, val_batches=2, ema=0.0)
    model = fresh_model()
    before = validation_loss(model, data, settings)
    ema = train(model, data, data, settings, tmp_path)
    after = validation_loss(ema, data, settings)
    assert after < 0.8 * before, (before, after)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    cfg = small_config()
    data = synthetic_split(cfg, clips=3, chunks=3, seed=0)
    settings = TrainConfig(steps=4, batch=2, chunks=2, warmup=2, val_every=2, val_batches=1)
    straight = train(fresh_model(), data, data, settings, tmp_path / "straight")
    halfway = TrainConfig(**{**settings.__dict__, "steps": 2})
    train(fresh_model(), data, data, halfway, tmp_path / "resumed")
    resumed = train(fresh_model(), data, data, settings, tmp_path / "resumed")  # picks up train_state.pt
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_mouth_weight_lifts_the_video_loss_on_the_mouth_cells_only() -> None:
    cfg = small_config()
    data = synthetic_split(cfg, clips=2, chunks=3, seed=0)
    plain = sample_batch(cfg, TrainConfig(batch=4, chunks=2), data, random.Random(0))
    assert torch.equal(plain.video_weight, torch.ones_like(plain.video_weight))
    batch = sample_batch(cfg, TrainConfig(batch=4, chunks=2, mouth_weight=8.0), data, random.Random(0))
    assert batch.video_weight.shape == (4, 1, 1, cfg.video_latent_height, cfg.video_latent_width)
    for weights in batch.video_weight[:, 0, 0]:
        assert weights.mean().item() == pytest.approx(1.0)
        values = sorted(set(weights.flatten().tolist()))
        assert len(values) == 2 and values[1] == pytest.approx(9 * values[0])
    avatars = {i: batch.cond.avatar[i] for i in range(4)}
    for i, image in avatars.items():
        avatar = next(a for a, pixels in data.avatars.items() if torch.equal(pixels, image))
        top, bottom, left, right = data.mouths[avatar]
        mouth = torch.zeros(cfg.video_latent_height, cfg.video_latent_width, dtype=torch.bool)
        mouth[top:bottom, left:right] = True
        assert torch.equal(batch.video_weight[i, 0, 0] > 1, mouth)


def test_learning_rate_warms_up_then_decays() -> None:
    settings = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    rates = [learning_rate(settings, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:])) and rates[-1] > 0.1


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               str(ROOT / "tests" / "train_worker.py"), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (load_file(tmp_path / f"rank-{r}.safetensors") for r in (0, 1))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    untrained = fresh_model().state_dict()
    assert not torch.equal(first["audio_out.proj.weight"], untrained["audio_out.proj.weight"])


@pytest.mark.slow
def test_train_cli_takes_a_world_to_a_loadable_checkpoint(tmp_path: Path) -> None:
    world = tmp_path / "world"
    make_world(world, WorldConfig(hours=0.01, seed=5, timbres=8, avatars=8, eval_fraction=0.25, clips_per_shard=8))
    sonate = [sys.executable, "-m", "sonate.streamer.cli.main"]
    codecs, run = tmp_path / "codecs", tmp_path / "run"
    steps = ["--vocoder-steps", "2", "--video-steps", "2"]
    subprocess.run([*sonate, "train", "codecs", "--data", str(world), "--out", str(codecs), *steps], check=True)
    train_args = ["--steps", "2", "--batch", "2", "--chunks", "2", "--val-every", "2", "--warmup", "1"]
    subprocess.run(
        [*sonate, "train", "model", "--data", str(world), "--codecs", str(codecs), "--out", str(run), *train_args],
        check=True,
    )
    loaded = load_checkpoint(run / "checkpoint")
    assert not loaded.random_weights and loaded.model.cfg.dim == 256
    assert (run / "samples" / "step-000002.mp4").stat().st_size > 1000
    tuned = tmp_path / "tuned"
    subprocess.run(
        [*sonate, "train", "model", "--data", str(world), "--codecs", str(codecs), "--out", str(tuned), *train_args,
         "--init", str(run / "checkpoint"), "--mouth-weight", "8", "--seed", "1"],
        check=True,
    )  # fmt: skip
    start, tuned_weights = (load_file(d / "checkpoint" / "model.safetensors") for d in (run, tuned))
    fresh = random_model(load_checkpoint(run / "checkpoint").model.cfg, seed=1).state_dict()
    name = "conditioning.voice_proj.weight"  # a seed-1 fresh model would differ here by the init's scale
    assert (tuned_weights[name] - start[name]).abs().max() < 0.1 * (fresh[name] - start[name]).abs().max()
    bad = subprocess.run([*sonate, "train", "model", "--data", str(world), "--codecs", str(tmp_path / "none"),
                          "--out", str(run)], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "vocoder.safetensors" in bad.stderr and "Traceback" not in bad.stderr
