"""Reading a world made by ``sonate data make``: its manifest, clips by split, references, renderers."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonate.models.errors import SonateInputError
from sonate.models.media_io import load_audio, load_image
from sonate.models.world.faces import Avatar
from sonate.models.world.make import FORMAT, MANIFEST, SPLITS, WorldConfig
from sonate.models.world.render import FaceRenderer
from sonate.models.world.shards import Shard, WorldClip
from sonate.models.world.voices import Timbre

__all__ = ["ClipInfo", "World"]


@dataclass(frozen=True)
class ClipInfo:
    """A clip's manifest entry: where it is and what it says, without decoding it."""

    id: str
    split: str
    shard: str
    index: int
    seconds: float
    timbre: str
    avatar: str
    text: str
    words: str
    instruction: str


class World:
    """A world folder: ``manifest.json``, ``shards/``, ``references/voices`` and ``references/avatars``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise SonateInputError(f"{self.root} holds no world ({MANIFEST} missing); make one with `sonate data make`")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise SonateInputError(f"{path} is not a {FORMAT} manifest")
        self.manifest = manifest
        self.complete: bool = manifest["complete"]
        self.config = WorldConfig(**manifest["config"])
        self.timbres = {t["id"]: Timbre.from_dict(t) for t in manifest["timbres"]}
        self.avatars = {a["id"]: Avatar.from_dict(a) for a in manifest["avatars"]}
        self._clips = [
            ClipInfo(
                id=c["id"],
                split=shard["split"],
                shard=shard["path"],
                index=c["index"],
                seconds=c["seconds"],
                timbre=c["timbre"],
                avatar=c["avatar"],
                text=c["text"],
                words=c["words"],
                instruction=c["instruction"],
            )
            for shard in manifest["shards"]
            for c in shard["clips"]
        ]
        self._by_id = {c.id: c for c in self._clips}

    def clips(self, split: str | None = None) -> list[ClipInfo]:
        """The clips of ``split`` (all clips when None), in manifest order."""
        if split is not None and split not in SPLITS:
            raise SonateInputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [c for c in self._clips if split is None or c.split == split]

    def load(self, clip: str | ClipInfo) -> WorldClip:
        """Decode one clip (by id or entry)."""
        info = self._by_id[clip] if isinstance(clip, str) else clip
        return self._shard(info.shard)[info.index]

    def shard(self, path: str) -> Shard:
        """One shard, by its manifest path (``shards/train-00000.npz``)."""
        return self._shard(path)

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a World lives as long as its reader
    def _shard(self, path: str) -> Shard:
        return Shard(self.root / path)

    def reference_voice_path(self, timbre: str, key: str = "a") -> Path:
        """Reference clip ``key`` ("a": the voice to clone, "b": the different clip similarity compares with)."""
        return self.root / "references" / "voices" / f"{timbre}_{key}.wav"

    def reference_voice(self, timbre: str, key: str = "a", sample_rate: int | None = None) -> np.ndarray:
        """A reference clip of ``timbre`` as float32 [samples] at ``sample_rate`` (default: the world's)."""
        return load_audio(self.reference_voice_path(timbre, key), sample_rate or self.config.sample_rate)

    def reference_image_path(self, avatar: str) -> Path:
        return self.root / "references" / "avatars" / f"{avatar}.png"

    def reference_image(self, avatar: str, size: int | None = None) -> np.ndarray:
        """The reference image of ``avatar``, [size, size, 3] uint8 (default: the world's image size)."""
        return load_image(self.reference_image_path(avatar), size or self.config.image_size)

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def renderer(self, avatar: str) -> FaceRenderer:
        """The avatar's renderer at the world's size: it knows the mouth box and the identity regions."""
        return FaceRenderer(self.avatars[avatar], self.config.image_size)

    def mouth_box(self, avatar: str, height: int, width: int) -> tuple[int, int, int, int]:
        """The avatar's mouth box (top, bottom, left, right) on a ``height`` × ``width`` grid (pixels of a
        resized frame, or latent cells), rounded outward so that it still holds the whole mouth."""
        top, bottom, left, right = self.renderer(avatar).mouth_box
        sy, sx = height / self.config.image_size, width / self.config.image_size
        return math.floor(top * sy), math.ceil(bottom * sy), math.floor(left * sx), math.ceil(right * sx)
