"""``sonate eval``: score a checkpoint (or the data itself) on a split of the world, the paper's way.

For every clip of the split, the system under test speaks the clip's sentence with the clip's timbre (reference
clip "a") and avatar (reference image) and instruction, on the clip's own phoneme timeline: espeak's timing of the
sentence in that timbre, after the clip's lead-in of silence, for the clip's length. So the two clips have the same
layout of speech and silence, which the lip-sync confidence depends on (a long run of silence scores as sync at
every lag and raises the median). Its clip is scored for lip sync, intelligibility, timbre and identity, and so is
the ground-truth clip beside it:

- ``sync_offset``: median over clips of the best lag (frames); ``sync_confidence``: mean peak-minus-median.
- ``wer``: corpus WER (pocketsphinx + jiwer) of the system's speech; ``wer_ground_truth``: of the data's.
- ``sim``: mean cosine (Resemblyzer) between the system's speech and reference clip "b" of the target timbre
  (a different clip); ``sim_ceiling``: the same for the ground-truth clip; ``sim_floor``: the ground-truth
  clip against clip "b" of another timbre of the split.
- ``identity_error``: mean colour error of the skin, hair and background regions against the reference image;
  ``identity_error_floor``: the ground-truth frames against another avatar's reference image.

``--checkpoint ground-truth`` makes the data the system under test: its measures then equal the ground truth's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonate.models.errors import SonateInputError
from sonate.models.frontend import PhonemeTimeline
from sonate.models.metrics.identity import identity_error
from sonate.models.metrics.intelligibility import transcribe, word_error_rate
from sonate.models.metrics.sync import lip_sync
from sonate.models.metrics.timbre import cosine, speaker_embedding
from sonate.models.world.dataset import ClipInfo, World

log = logging.getLogger(__name__)

__all__ = ["GROUND_TRUTH", "GeneratedMedia", "SystemUnderTest", "evaluate", "format_report"]

GROUND_TRUTH = "ground-truth"
MEASURES = ("sync_offset", "sync_confidence", "wer", "sim", "identity_error")


def _score(world: World, info: ClipInfo, audio: np.ndarray, frames: np.ndarray, rate: int, fps: int, refs: dict):
    """Lip sync, transcript, timbre similarity and identity error of one clip (audio at ``rate``)."""
    renderer = world.renderer(info.avatar)
    box = world.mouth_box(info.avatar, frames.shape[1], frames.shape[2])
    sync = lip_sync(frames, audio, rate, fps, box)
    embedding = speaker_embedding(audio, rate)
    return {
        "sync_offset": sync.offset,
        "sync_confidence": sync.confidence,
        "transcript": transcribe(audio, rate),
        "sim": cosine(embedding, refs["voice_b"]),
        "identity_error": identity_error(frames, refs["image"], renderer.regions)["mean"],
        "seconds": len(frames) / fps,
        "_embedding": embedding,
    }


def _summary(scores: list[dict], references: list[str]) -> dict:
    return {
        "sync_offset": float(np.median([s["sync_offset"] for s in scores])),
        "sync_offset_abs_mean": float(np.mean([abs(s["sync_offset"]) for s in scores])),
        "sync_confidence": float(np.mean([s["sync_confidence"] for s in scores])),
        "wer": word_error_rate(references, [s["transcript"] for s in scores]),
        "sim": float(np.mean([s["sim"] for s in scores])),
        "identity_error": float(np.nanmean([s["identity_error"] for s in scores])),
    }


@dataclass
class GeneratedMedia:
    """A system's clip: mono float32 audio at `sample_rate` Hz and uint8 RGB frames [N, H, W, 3] at `fps`."""

    audio: np.ndarray
    frames: np.ndarray
    sample_rate: int
    fps: int


# makes the clip for (world, clip info, the clip's phoneme timeline, clip index): the system under test
SystemUnderTest = Callable[[World, ClipInfo, PhonemeTimeline, int], GeneratedMedia]


def evaluate(
    data: str | Path,
    system: SystemUnderTest | None = None,
    split: str = "test",
    max_clips: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Score `system` (None: the data itself, ground truth) on ``split`` of the world in ``data``; returns the
    figures (see the module docstring) with per-clip details under ``per_clip``."""
    world = World(data)
    infos = world.clips(split)[:max_clips]
    if not infos:
        raise SonateInputError(f"the {split} split of {world.root} has no clips; make a larger world")
    split_timbres = sorted({t.id for t in world.timbres.values() if t.split == split})
    split_avatars = sorted({a.id for a in world.avatars.values() if a.split == split})
    other = {ids[i]: ids[(i + 1) % len(ids)] for ids in (split_timbres, split_avatars) for i in range(len(ids))}
    voice_b = {t: speaker_embedding(world.reference_voice(t, "b"), world.config.sample_rate) for t in split_timbres}
    truth_scores, system_scores, details = [], [], []
    for n, info in enumerate(infos):
        clip = world.load(info)
        refs = {"voice_b": voice_b[info.timbre], "image": world.reference_image(info.avatar)}
        truth = _score(world, info, clip.audio, clip.frames, clip.sample_rate, clip.fps, refs)
        truth["sim_floor"] = cosine(truth["_embedding"], voice_b[other[info.timbre]])
        other_renderer = world.renderer(other[info.avatar])
        truth["identity_error_floor"] = identity_error(
            clip.frames, world.reference_image(other[info.avatar]), other_renderer.regions
        )["mean"]
        if system is None:
            scores = truth
        else:
            media = system(world, info, clip.timeline(), n)
            scores = _score(world, info, media.audio, media.frames, media.sample_rate, media.fps, refs)
        truth_scores.append(truth)
        system_scores.append(scores)
        details.append(
            {"id": info.id, "timbre": info.timbre, "avatar": info.avatar, "words": info.words}
            | {f"truth_{k}": v for k, v in truth.items() if not k.startswith("_")}
            | {k: v for k, v in scores.items() if not k.startswith("_")}
        )
        if progress:
            progress(n + 1, len(infos))
    references = [info.words for info in infos]
    truth_summary, system_summary = _summary(truth_scores, references), _summary(system_scores, references)
    return {
        "data": str(world.root),
        "split": split,
        "clips": len(infos),
        "seconds": round(sum(info.seconds for info in infos), 2),
        **system_summary,
        "wer_ground_truth": truth_summary["wer"],
        "sim_ceiling": truth_summary["sim"],
        "sim_floor": float(np.mean([s["sim_floor"] for s in truth_scores])),
        "identity_error_floor": float(np.nanmean([s["identity_error_floor"] for s in truth_scores])),
        "ground_truth": truth_summary,
        "per_clip": details,
    }


def format_report(result: dict) -> str:
    """The figures as a small table: the system beside the ground truth."""
    truth = result["ground_truth"]
    rows = [
        ("lip sync offset (frames, median)", result["sync_offset"], truth["sync_offset"], "0"),
        ("lip sync confidence", result["sync_confidence"], truth["sync_confidence"], "higher"),
        ("WER (pocketsphinx)", result["wer"], result["wer_ground_truth"], "lower"),
        ("timbre similarity", result["sim"], result["sim_ceiling"], f"floor {result['sim_floor']:.3f}"),
        ("identity error", result["identity_error"], truth["identity_error"],
         f"floor {result['identity_error_floor']:.3f}"),
    ]  # fmt: skip
    name = result["checkpoint"] + (" (random weights)" if result["random_weights"] else "")
    lines = [
        f"{result['split']} split of {result['data']}: {result['clips']} clips, {result['seconds']:.1f} s",
        f"system: {name}",
        f"{'measure':<34}{'system':>10}{'truth':>10}   note",
    ]
    lines += [f"{label:<34}{system:>10.3f}{truth_value:>10.3f}   {note}" for label, system, truth_value, note in rows]
    return "\n".join(lines)
