"""Intelligibility: speech → words with pocketsphinx (its wheel ships the en-us acoustic model, language model
and dictionary), scored against the spoken words with jiwer.

Each clip is decoded as one whole utterance from the same starting cepstral mean, so a transcript does not
depend on which clips were decoded before it. WER is the corpus WER: total word edits over total reference
words, over all the sentences together.
"""

from __future__ import annotations

import functools
import re
import threading

import numpy as np

from sonate.models.media_io import resample

__all__ = ["ASR_SAMPLE_RATE", "normalise", "transcribe", "word_error_rate"]

ASR_SAMPLE_RATE = 16000  # Hz, pocketsphinx's en-us model
_LOCK = threading.Lock()  # one decoder per process


@functools.cache
def _decoder() -> tuple[object, object]:
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL")
    return decoder, decoder.get_cmn()


def transcribe(audio: np.ndarray, sample_rate: int) -> str:
    """The words pocketsphinx hears in mono float ``audio`` [samples] at ``sample_rate`` Hz, normalised."""
    audio = resample(np.asarray(audio, np.float32), sample_rate, ASR_SAMPLE_RATE)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    with _LOCK:
        decoder, initial_cmn = _decoder()
        decoder.set_cmn(initial_cmn)
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
    return normalise(hypothesis.hypstr if hypothesis is not None else "")


def normalise(text: str) -> str:
    """Lowercase words only: drops pocketsphinx's alternate-pronunciation marks ``(2)`` and fillers ``<sil>``."""
    text = re.sub(r"\(\d+\)|<[^>]*>|\[[^\]]*\]", " ", text.lower())
    return " ".join(re.sub(r"[^a-z' ]+", " ", text).replace("'", "").split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER of normalised hypotheses against references (both lists of sentences)."""
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise ValueError("give one hypothesis per reference, and at least one")
    return float(jiwer.wer(list(references), [h if h else "<empty>" for h in hypotheses]))
