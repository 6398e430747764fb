"""Building the world: a plan from the seed, the reference clips and images, then the shards (resumable).

Everything is a function of the seed. Every clip draws its randomness from its own seed sequence
``(seed, split, index)``, so a clip does not depend on the order shards are made in, on how many workers make
them, or on ``--hours`` (a larger world's train split starts with a smaller one's). Shards are written
atomically; a rerun on the same folder skips every shard file that is already there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from sonate.models.errors import SonateInputError
from sonate.models.espeak import TimedPhoneme
from sonate.models.world.faces import Avatar, describe_face, sample_avatars
from sonate.models.world.media import write_png, write_wav
from sonate.models.world.motion import blink_track, head_track, mouth_track
from sonate.models.world.render import FaceRenderer
from sonate.models.world.sentences import TEST_SENTENCES, SentenceGenerator, spoken_words
from sonate.models.world.shards import WorldClip, write_shard
from sonate.models.world.voices import Timbre, describe_voice, sample_timbres, speak

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "REFERENCE_TEXTS", "SPLITS", "ClipSpec", "WorldConfig", "make_clip", "make_world", "plan_world"]

FORMAT = "sonate-world/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
MEAN_CLIP_SECONDS = 4.46  # measured mean clip length (seed 0, 0.25 h): turns --hours into a number of clips
LEAD_SILENCE_S = (0.15, 0.5)  # silence before the speech, seconds (uniform)
TAIL_SILENCE_S = (0.0, 0.3)  # silence added after the frontend's closing pause (0.45 s), seconds
# Two clips of every timbre: "a" conditions generation (the voice to clone), "b" is the different clip that
# timbre similarity compares with. Neither sentence is used in any split.
REFERENCE_TEXTS = {
    "a": "Every voice has its own colour, and this is how mine sounds when I read a few lines aloud.",
    "b": "Please remember to water the plants on the balcony while I am away for the next two weeks.",
}
_STREAMS = {"timbres": 1, "avatars": 2, "clips": 3}  # seed-sequence spawn keys
_SPLIT_CODES = {split: i for i, split in enumerate(SPLITS)}


@dataclass(frozen=True)
class WorldConfig:
    """What ``sonate data make`` builds; each field is one flag."""

    hours: float = 1.0  # target hours of audio-video, all splits together
    seed: int = 0
    timbres: int = 240  # distinct voices, split by timbre
    avatars: int = 240  # distinct faces, split by avatar
    heldout_fraction: float = 0.1  # of the timbres and of the avatars, for val and for test each
    eval_fraction: float = 0.05  # of the clips, for val and for test each
    clips_per_shard: int = 64
    sample_rate: int = 16000  # Hz
    fps: int = 25  # frames per second
    image_size: int = 128  # pixels, square frames

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise SonateInputError(f"--hours must be positive, got {self.hours}")
        if self.timbres < 6 or self.avatars < 6:
            raise SonateInputError("--timbres and --avatars must be at least 6 (two per split)")
        if not 0 < self.heldout_fraction < 0.5 or not 0 < self.eval_fraction < 0.5:
            raise SonateInputError("the held-out and eval fractions must be in (0, 0.5)")
        if self.clips_per_shard < 1:
            raise SonateInputError("--clips-per-shard must be at least 1")
        if self.sample_rate % self.fps or self.image_size < 64 or self.image_size % 2:
            raise SonateInputError("the sample rate must be a multiple of fps, the image an even size >= 64")

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps


@dataclass(frozen=True)
class ClipSpec:
    """What a clip will be, decided by the plan; ``index`` counts clips within the split."""

    id: str
    split: str
    index: int
    text: str
    timbre: str
    avatar: str


def _split_names(count: int, fraction: float) -> list[str]:
    held = max(2, round(count * fraction))
    return ["train"] * (count - 2 * held) + ["val"] * held + ["test"] * held


def _clip_seeds(config: WorldConfig, split: str, index: int) -> list[np.random.SeedSequence]:
    """The clip's five independent streams: text, pairing, layout, blinks, head motion."""
    root = np.random.SeedSequence(config.seed, spawn_key=(_STREAMS["clips"], _SPLIT_CODES[split], index))
    return root.spawn(5)


def plan_world(
    config: WorldConfig, timbres: list[Timbre] | None = None, avatars: list[Avatar] | None = None
) -> tuple[list[Timbre], list[Avatar], list[list[ClipSpec]]]:
    """Timbres, avatars and the clips of every shard, from the config alone (timbres and avatars may be
    passed in from a manifest to skip sampling them again)."""
    if timbres is None:
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_STREAMS["timbres"],)))
        timbres = sample_timbres(
            config.timbres, rng, config.sample_rate, _split_names(config.timbres, config.heldout_fraction)
        )
    if avatars is None:
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_STREAMS["avatars"],)))
        avatars = sample_avatars(config.avatars, rng, _split_names(config.avatars, config.heldout_fraction))
    total = max(3, round(config.hours * 3600 / MEAN_CLIP_SECONDS))
    held = max(1, round(total * config.eval_fraction))
    counts = {"train": max(1, total - 2 * held), "val": held, "test": held}
    generator = SentenceGenerator()
    shards: list[list[ClipSpec]] = []
    for split in SPLITS:
        split_timbres = [t.id for t in timbres if t.split == split]
        split_avatars = [a.id for a in avatars if a.split == split]
        specs = []
        for index in range(counts[split]):
            text_seed, pair_seed, *_ = _clip_seeds(config, split, index)
            if split == "test":
                text = TEST_SENTENCES[index % len(TEST_SENTENCES)]
            else:
                text = generator.sentence(np.random.default_rng(text_seed))
            pair = np.random.default_rng(pair_seed)
            timbre = split_timbres[pair.integers(len(split_timbres))]
            avatar = split_avatars[pair.integers(len(split_avatars))]
            specs.append(ClipSpec(f"{split}-{index:06d}", split, index, text, timbre, avatar))
        shards += [specs[i : i + config.clips_per_shard] for i in range(0, len(specs), config.clips_per_shard)]
    return timbres, avatars, shards


def make_clip(spec: ClipSpec, timbre: Timbre, avatar: Avatar, config: WorldConfig, renderer: FaceRenderer) -> WorldClip:
    """Speak, animate and render one planned clip."""
    *_, layout_seed, blink_seed, head_seed = _clip_seeds(config, spec.split, spec.index)
    layout = np.random.default_rng(layout_seed)
    rate, per_frame = config.sample_rate, config.samples_per_frame
    speech = speak(spec.text, timbre, rate)
    lead = round(layout.uniform(*LEAD_SILENCE_S) * rate)  # samples
    tail = round(layout.uniform(*TAIL_SILENCE_S) * rate)
    n_frames = math.ceil((lead + speech.audio.shape[0] + tail) / per_frame)
    audio = np.zeros(n_frames * per_frame, np.float32)
    audio[lead : lead + speech.audio.shape[0]] = speech.audio
    audio = np.round(np.clip(audio, -1, 1) * 32767) / 32767  # on the int16 grid: the shard stores it exactly
    offset = lead / rate
    phonemes = [TimedPhoneme("_", 0.0, offset)] + [
        TimedPhoneme(p.symbol, p.start_s + offset, p.end_s + offset, p.speaker, p.text_start, p.text_end)
        for p in speech.phonemes
    ]
    speech_end = phonemes[-1].end_s
    if n_frames / config.fps > speech_end:
        phonemes.append(TimedPhoneme("_", speech_end, n_frames / config.fps))
    mouth = mouth_track(phonemes, n_frames, config.fps)
    blink = blink_track(np.random.default_rng(blink_seed), n_frames, config.fps)
    head = head_track(np.random.default_rng(head_seed), n_frames, config.fps)
    return WorldClip(
        id=spec.id,
        split=spec.split,
        timbre_id=timbre.id,
        avatar_id=avatar.id,
        text=spec.text,
        words=spoken_words(spec.text),
        instruction=f"{describe_voice(timbre)}; {describe_face(avatar)}",
        audio=audio.astype(np.float32),
        frames=renderer.render(mouth, blink, head),
        phonemes=phonemes,
        mouth=mouth,
        blink=blink,
        head=head,
        sample_rate=rate,
        fps=config.fps,
    )


def _make_shard(
    out: Path, name: str, specs: list[ClipSpec], timbres: dict[str, Timbre], avatars: dict[str, Avatar], config
) -> dict:
    """Make and write one shard; returns its manifest entry."""
    renderers: dict[str, FaceRenderer] = {}
    clips = []
    for spec in specs:
        if spec.avatar not in renderers:
            renderers[spec.avatar] = FaceRenderer(avatars[spec.avatar], config.image_size)
        clips.append(make_clip(spec, timbres[spec.timbre], avatars[spec.avatar], config, renderers[spec.avatar]))
    size = write_shard(out / name, clips)
    return _shard_entry(name, clips, size)


def _shard_entry(name: str, clips: list[WorldClip], size: int) -> dict:
    return {
        "path": name,
        "split": clips[0].split,
        "bytes": size,
        "seconds": round(sum(c.seconds for c in clips), 3),
        "clips": [
            {"id": c.id, "index": i, "seconds": c.seconds, "timbre": c.timbre_id, "avatar": c.avatar_id}
            | {"text": c.text, "words": c.words, "instruction": c.instruction}
            for i, c in enumerate(clips)
        ],
    }


def _write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def _write_references(out: Path, timbres: list[Timbre], avatars: list[Avatar], config: WorldConfig) -> None:
    """A reference clip pair of every timbre (16-bit WAV) and a reference image of every avatar (PNG)."""
    voices, faces = out / "references" / "voices", out / "references" / "avatars"
    voices.mkdir(parents=True, exist_ok=True)
    faces.mkdir(parents=True, exist_ok=True)
    for timbre in timbres:
        for key, text in REFERENCE_TEXTS.items():
            path = voices / f"{timbre.id}_{key}.wav"
            if not path.exists():
                write_wav(path, speak(text, timbre, config.sample_rate).audio, config.sample_rate)
    for avatar in avatars:
        path = faces / f"{avatar.id}.png"
        if not path.exists():
            write_png(path, FaceRenderer(avatar, config.image_size).reference_image())


def make_world(
    out: str | Path,
    config: WorldConfig,
    workers: int = 1,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Build (or finish building) the world in ``out``; returns the manifest, also written to ``out/manifest.json``.

    ``progress(clips_done, clips_total, seconds_done)`` is called after the references and after each shard.
    A folder that holds a world made with another config is refused.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    timbres = avatars = None
    previous: dict = {}
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("config") != dataclasses.asdict(config):
            raise SonateInputError(
                f"{out} holds a world made with {previous.get('config')}; pass the same options to resume, "
                "or choose an empty --out folder"
            )
        timbres = [Timbre.from_dict(t) for t in previous["timbres"]]
        avatars = [Avatar.from_dict(a) for a in previous["avatars"]]
    timbres, avatars, plan = plan_world(config, timbres, avatars)
    names = [f"shards/{specs[0].split}-{i:05d}.npz" for i, specs in enumerate(plan)]
    done = {entry["path"]: entry for entry in previous.get("shards", []) if (out / entry["path"]).exists()}
    (out / "shards").mkdir(exist_ok=True)
    manifest = {
        "format": FORMAT,
        "config": dataclasses.asdict(config),
        "complete": False,
        "timbres": [t.to_dict() for t in timbres],
        "avatars": [a.to_dict() for a in avatars],
        "reference_texts": REFERENCE_TEXTS,
        "shards": [],
    }
    _write_json(manifest_path, manifest | {"shards": list(done.values())})
    _write_references(out, timbres, avatars, config)
    total = sum(len(specs) for specs in plan)
    clips_done = sum(len(entry["clips"]) for entry in done.values())
    seconds_done = sum(entry["seconds"] for entry in done.values())
    if progress:
        progress(clips_done, total, seconds_done)
    by_id_t, by_id_a = {t.id: t for t in timbres}, {a.id: a for a in avatars}
    todo = [(name, specs) for name, specs in zip(names, plan, strict=True) if name not in done]
    made_seconds = 0.0

    def finish(entry: dict) -> None:
        nonlocal clips_done, seconds_done, made_seconds
        done[entry["path"]] = entry
        clips_done += len(entry["clips"])
        seconds_done += entry["seconds"]
        made_seconds += entry["seconds"]
        _write_json(manifest_path, manifest | {"shards": [done[n] for n in names if n in done]})
        if progress:
            progress(clips_done, total, seconds_done)

    if workers <= 1:
        for name, specs in todo:
            finish(_make_shard(out, name, specs, by_id_t, by_id_a, config))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_make_shard, out, n, s, by_id_t, by_id_a, config) for n, s in todo]
            for future in as_completed(futures):
                finish(future.result())
    elapsed = time.perf_counter() - started
    shards = [done[n] for n in names]
    seconds = sum(s["seconds"] for s in shards)
    size = sum(s["bytes"] for s in shards)
    manifest |= {
        "complete": True,
        "shards": shards,
        "stats": {
            "clips": total,
            "hours": round(seconds / 3600, 4),
            "hours_by_split": {
                sp: round(sum(s["seconds"] for s in shards if s["split"] == sp) / 3600, 4) for sp in SPLITS
            },
            "bytes": size,
            "bytes_per_hour": round(size / max(seconds / 3600, 1e-9)),
            "last_run_seconds": round(elapsed, 2),
            "last_run_x_realtime": round(made_seconds / elapsed, 1) if made_seconds else None,
        },
    }
    _write_json(manifest_path, manifest)
    log.info("world in %s: %d clips, %.3f h, %d bytes", out, total, seconds / 3600, size)
    return manifest
