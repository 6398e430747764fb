"""Timbre similarity: cosine similarity of Resemblyzer speaker embeddings (GE2E; the weights ship in its wheel).

Resemblyzer's own preprocessing runs first: volume normalisation to -30 dBFS and removal of long silences
(webrtcvad), at 16 kHz. Embeddings are L2-normalised, so the cosine is their dot product.
"""

from __future__ import annotations

import functools
import threading
import warnings

import numpy as np

from sonate.models.media_io import resample

__all__ = ["SPEAKER_SAMPLE_RATE", "cosine", "speaker_embedding"]

SPEAKER_SAMPLE_RATE = 16000  # Hz, Resemblyzer's
_LOCK = threading.Lock()


@functools.cache
def _encoder() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webrtcvad imports the deprecated pkg_resources
        from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False)


def speaker_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 256-d unit speaker embedding of mono float ``audio`` [samples] at ``sample_rate`` Hz."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import preprocess_wav

    wave = resample(np.asarray(audio, np.float32), sample_rate, SPEAKER_SAMPLE_RATE)
    with _LOCK:
        encoder = _encoder()
        prepared = preprocess_wav(wave, source_sr=SPEAKER_SAMPLE_RATE)
        if prepared.shape[0] < SPEAKER_SAMPLE_RATE // 4:  # VAD found (almost) no speech: use the clip as is
            prepared = wave
        return np.asarray(encoder.embed_utterance(prepared), np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else 0.0
