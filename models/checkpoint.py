"""Checkpoints: a directory with `config.json` and `model.safetensors`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sonate.models.config import SonateConfig
from sonate.models.errors import SonateInputError
from sonate.models.transformer import SonateModel

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"
RANDOM_SEED = 0  # weights of the stand-in model used while no default checkpoint is shipped


def save_pretrained(model: SonateModel, directory: str | Path) -> None:
    """Write `config.json` and `model.safetensors` into `directory` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.cfg.save(directory / "config.json")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, directory / "model.safetensors")


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> SonateModel:
    """Load a checkpoint written by `save_pretrained`; any missing, unexpected or misshapen tensor is an error."""
    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise SonateInputError(f"{directory} is not a checkpoint: it needs config.json and model.safetensors")
    cfg = SonateConfig.load(directory / "config.json")
    model = SonateModel(cfg)
    state = load_file(directory / "model.safetensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SonateInputError(
            f"checkpoint {directory} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise SonateInputError(
                f"checkpoint {directory}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.to(device=device, dtype=getattr(torch, cfg.dtype)).eval()


def random_model(cfg: SonateConfig, seed: int = RANDOM_SEED) -> SonateModel:
    """A model with seeded random weights in `cfg.dtype` (for speed work, and until a default is shipped).

    The global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SonateModel(cfg)
    return model.to(dtype=getattr(torch, cfg.dtype)).eval()


def load_model(checkpoint: str | Path | None, device: str | torch.device = "cpu") -> tuple[SonateModel, bool]:
    """The model of `checkpoint`, or the embedded default when None; also says whether its weights are random.

    While no default checkpoint is shipped, the default is a seeded random `tiny` model.
    """
    if checkpoint is not None:
        return from_pretrained(checkpoint, device), False
    if (DEFAULT_CHECKPOINT / "config.json").is_file():
        return from_pretrained(DEFAULT_CHECKPOINT, device), False
    log.warning("no default checkpoint is shipped yet: using a seeded random tiny model")
    return random_model(SonateConfig.preset("tiny")).to(device), True
