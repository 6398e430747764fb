"""Audio to the WebRTC edge's 48 kHz: a streaming resampler that cuts no seams between blocks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from sonate.streamer.media.playout import TICK

AUDIO_RATE = 48000  # Hz: the WebRTC audio clock (Opus)
AUDIO_PTIME = TICK  # seconds per audio frame: one playout tick, 20 ms
AUDIO_FRAME_SAMPLES = round(AUDIO_RATE * AUDIO_PTIME)  # 960 samples at 48 kHz
RESAMPLE_ZERO_CROSSINGS = 16  # each side of the resampler's windowed-sinc filter
RESAMPLE_ROLLOFF = 0.94  # filter cutoff as a fraction of the lower rate's Nyquist frequency
RESAMPLE_KAISER_BETA = 8.6  # Kaiser window shape: about 80 dB of stopband


class StreamingResampler:
    """Resamples mono audio from `rate_in` to `rate_out` Hz in fixed blocks, continuously across blocks.

    Every call takes `block_in` samples and returns exactly `block_in · rate_out / rate_in` samples (which
    must be whole). The filter is a Kaiser-windowed sinc; its history carries over from block to block, so a
    stream cut into blocks resamples exactly as the whole would, delayed by `delay_seconds` (about 1 ms).
    """

    def __init__(self, rate_in: int, rate_out: int, block_in: int) -> None:
        block_out = Fraction(block_in * rate_out, rate_in)
        if block_out.denominator != 1:
            raise ValueError(f"{block_in} samples at {rate_in} Hz are not a whole number of samples at {rate_out} Hz")
        self.rate_in, self.block_in, self.block_out = rate_in, block_in, int(block_out)
        self.delay_samples = 0  # input samples the output lags behind the input
        self.weights: np.ndarray | None = None  # None: equal rates, a pass-through
        self._history = np.zeros(0, dtype=np.float32)  # the last 2·delay input samples
        if rate_in == rate_out:
            return
        step = rate_in / rate_out  # input samples per output sample
        cutoff = 0.5 * min(1.0, 1 / step) * RESAMPLE_ROLLOFF  # cycles per input sample
        half_width = RESAMPLE_ZERO_CROSSINGS / (2 * cutoff)  # input samples each side of an output sample
        self.delay_samples = math.ceil(half_width)
        # weights [block_out, 2·delay + block_in]: output j sits at input position delay + j·step of the buffer
        # [history (2·delay samples) | new block], i.e. `delay` samples behind the block's own timeline.
        positions = self.delay_samples + np.arange(self.block_out)[:, None] * step
        offsets = positions - np.arange(2 * self.delay_samples + block_in)  # [block_out, buffer]
        window = np.i0(RESAMPLE_KAISER_BETA * np.sqrt(np.clip(1 - (offsets / half_width) ** 2, 0, 1)))
        taps = np.where(np.abs(offsets) < half_width, 2 * cutoff * np.sinc(2 * cutoff * offsets) * window, 0.0)
        self.weights = (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)  # unit gain at DC
        self._history = np.zeros(2 * self.delay_samples, dtype=np.float32)

    @property
    def delay_seconds(self) -> float:
        """How far the output lags the input, in seconds of input."""
        return self.delay_samples / self.rate_in

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample one block: float32 [block_in] → float32 [block_out]."""
        if len(block) != self.block_in:
            raise ValueError(f"expected {self.block_in} samples, got {len(block)}")
        if self.weights is None:
            return np.asarray(block, dtype=np.float32)
        buffer = np.concatenate([self._history, np.asarray(block, dtype=np.float32)])
        self._history = buffer[len(buffer) - len(self._history) :]
        return self.weights @ buffer
