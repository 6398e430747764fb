"""Checkpoints: a directory with `config.json`, `model.safetensors` (the transformer) and the codec files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sonate.models.config import SonateConfig
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.transformer import SonateModel

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"
RANDOM_SEED = 0  # weights of the stand-in model used while no default checkpoint is shipped


def save_pretrained(model: SonateModel, directory: str | Path, codecs: Codecs | None = None) -> None:
    """Write `config.json`, `model.safetensors` and the codecs (default: seeded random ones) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.cfg.save(directory / "config.json")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, directory / "model.safetensors")
    (codecs or Codecs.random(model.cfg)).save(directory)


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


@dataclass
class Checkpoint:
    """A loaded checkpoint: the transformer, its codecs, and whether the weights are the random stand-in."""

    model: SonateModel
    codecs: Codecs
    random_weights: bool = False


def load_checkpoint(checkpoint: str | Path | None, device: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint in folder `checkpoint`, or the embedded default when None.

    Without a shipped default (a source tree where it was removed), the default is a seeded random `tiny`
    model with random codecs, and a warning says so.
    """
    directory = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not (directory / "config.json").is_file():
        log.warning("no default checkpoint is shipped: using a seeded random tiny model")
        cfg = SonateConfig.preset("tiny")
        return Checkpoint(random_model(cfg).to(device), Codecs.random(cfg), random_weights=True)
    model = from_pretrained(directory, device)
    return Checkpoint(model, Codecs.load(directory, model.cfg))
