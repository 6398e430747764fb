"""Run by `torchrun` from tests/test_train.py: a few data-parallel training steps on synthetic data; every rank
writes its final weights to `OUT/rank-R.safetensors` so the test can compare them."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sonate.models.checkpoint import random_model
from sonate.models.train import Distributed, TrainConfig, init_for_training, train
from tests.conftest import small_config, synthetic_split


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ranks = Distributed.from_environment()
    cfg = small_config()
    model = random_model(cfg).train()
    init_for_training(model)
    data, val = synthetic_split(cfg, clips=4, chunks=3, seed=0), synthetic_split(cfg, clips=2, chunks=3, seed=1)
    train(model, data, val, TrainConfig(steps=3, batch=2, chunks=2, warmup=1, val_every=2, val_batches=1), out,
          ranks=ranks)  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank-{ranks.rank}.safetensors"))
    ranks.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
