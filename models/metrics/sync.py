"""Lip sync, SyncNet-style: mouth openness from pixels against the audio energy envelope, over ±15 frames.

- Mouth openness of frame k: the mean "darkness" of the pixels in the mouth box (the renderer knows where the
  mouth is), where a pixel's darkness is ``clip((0.5·ref − Y) / (0.25·ref), 0, 1)``, Y its luma (BT.601) and
  ref the 95th percentile luma of the box over the whole clip (skin and lips): the open mouth's dark cavity.
- Audio energy of frame k: ``10·log10(mean(x²) + 1e-10)`` over the samples of frame k's interval
  [k/fps, (k+1)/fps), floored 50 dB under the loudest frame.
- ``correlations[L]`` for lag L in −15..15: Pearson correlation of openness[k] with energy[k + L] over every k
  where both exist. ``offset`` is the lag of the highest correlation (positive: the sound comes L frames after
  the mouth), ``confidence`` the highest correlation minus the median over all lags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_OFFSET", "SyncScore", "audio_envelope", "lip_sync", "mouth_openness"]

MAX_OFFSET = 15  # frames, each way (SyncNet's search range)
FLOOR_DB = 50.0  # the envelope is floored this far under its loudest frame


@dataclass
class SyncScore:
    """``offset`` in frames, ``confidence`` (peak minus median correlation) and the correlation per lag."""

    offset: int
    confidence: float
    correlations: dict[int, float]


def mouth_openness(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Openness per frame, ``[N]`` float: dark-cavity coverage of the box (top, bottom, left, right) in pixels."""
    top, bottom, left, right = box
    region = frames[:, top:bottom, left:right].astype(np.float32)
    luma = region @ np.array([0.299, 0.587, 0.114], np.float32)  # [N, h, w]
    ref = max(float(np.percentile(luma, 95)), 1.0)
    darkness = np.clip((0.5 * ref - luma) / (0.25 * ref), 0.0, 1.0)
    return darkness.mean(axis=(1, 2))


def audio_envelope(audio: np.ndarray, sample_rate: int, fps: int, n_frames: int) -> np.ndarray:
    """Log energy per video frame, ``[n_frames]`` float, in dB (frames past the audio's end are silent)."""
    per_frame = sample_rate / fps
    edges = np.round(np.arange(n_frames + 1) * per_frame).astype(np.int64)
    squared = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    ends = np.minimum(edges[1:], audio.shape[0])
    starts = np.minimum(edges[:-1], ends)
    energy = (squared[ends] - squared[starts]) / per_frame
    decibels = 10 * np.log10(energy + 1e-10)
    return np.maximum(decibels, decibels.max() - FLOOR_DB)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def lip_sync(
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    fps: int,
    mouth_box: tuple[int, int, int, int],
    max_offset: int = MAX_OFFSET,
) -> SyncScore:
    """Score a clip: ``frames`` [N, H, W, 3] uint8 at ``fps``, ``audio`` float [samples] at ``sample_rate``."""
    openness = mouth_openness(frames, mouth_box)
    energy = audio_envelope(audio, sample_rate, fps, len(frames))
    n = len(frames)
    correlations = {}
    for lag in range(-max_offset, max_offset + 1):
        first, last = max(0, -lag), min(n, n - lag)  # k such that k and k + lag are both frames
        correlations[lag] = (
            _pearson(openness[first:last], energy[first + lag : last + lag]) if last - first > 2 else 0.0
        )
    offset = max(correlations, key=lambda lag: (correlations[lag], -abs(lag)))
    confidence = correlations[offset] - float(np.median(list(correlations.values())))
    return SyncScore(offset, confidence, correlations)
