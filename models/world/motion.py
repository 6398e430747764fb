"""What moves: the mouth from the phonemes (phoneme → viseme table, co-articulation blending), and blinks and
head motion from their own random streams, independent of the speech.

Tracks are computed on a fine time grid (``GRID_HZ``) and each video frame takes the mean over its own
interval [k/fps, (k+1)/fps), the same interval whose audio the lip-sync measure reads, so a perfect clip has
its mouth and its sound aligned at lag 0.
"""

from __future__ import annotations

import numpy as np

from sonate.models.espeak import TimedPhoneme
from sonate.models.world.render import MAX_HEAD_SHIFT

__all__ = ["PHONEME_VISEMES", "VISEMES", "blink_track", "head_track", "mouth_track", "viseme_of"]

GRID_HZ = 400  # samples per second of the fine grid (a multiple of the frame rate)
BLEND_S = 0.02  # co-articulation: Gaussian blending with this standard deviation, seconds

# mouth targets: (openness 0..1, width factor, rounding 0..1)
VISEMES: dict[str, tuple[float, float, float]] = {
    "rest": (0.0, 1.0, 0.0),  # silence: lips closed, relaxed
    "PP": (0.0, 0.95, 0.0),  # p b m: lips pressed
    "FF": (0.12, 1.0, 0.0),  # f v: lower lip to the teeth
    "TH": (0.22, 1.0, 0.0),  # T D
    "DD": (0.25, 1.0, 0.0),  # t d l
    "nn": (0.2, 1.0, 0.0),  # n
    "kk": (0.32, 1.0, 0.0),  # k g N h x
    "CH": (0.25, 0.85, 0.6),  # tS dZ S Z
    "SS": (0.12, 1.08, 0.0),  # s z
    "RR": (0.22, 0.88, 0.5),  # r
    "aa": (1.0, 1.05, 0.0),  # open vowels
    "E": (0.62, 1.1, 0.0),  # mid vowels, schwa
    "I": (0.38, 1.18, 0.0),  # close front vowels, j
    "O": (0.8, 0.85, 0.65),  # rounded open vowels
    "U": (0.35, 0.72, 1.0),  # rounded close vowels, w
}
_GROUPS = {
    "PP": "p b m",
    "FF": "f v",
    "TH": "T D",
    "DD": "t d t# t2 l",
    "nn": "n n-",
    "kk": "k g N h x",
    "CH": "tS dZ S Z",
    "SS": "s z",
    "RR": "r r-",
    "aa": "a a# aa A: A@ V",
    "E": "E e@ @ @2 @- @L 3 3: ; ?",
    "I": "I I2 I# i i: i@ i@3 j",
    "O": "0 O: O@ O2 o@",
    "U": "u u: U U@ w",
}
# espeak-ng en-us symbols (stress marks stripped) → one viseme, or two for a diphthong (first half, second half)
PHONEME_VISEMES: dict[str, tuple[str, ...]] = {
    **{symbol: (viseme,) for viseme, symbols in _GROUPS.items() for symbol in symbols.split()},
    "aI": ("aa", "I"),
    "aI3": ("aa", "I"),
    "aI@": ("aa", "E"),
    "aU": ("aa", "U"),
    "eI": ("E", "I"),
    "oU": ("O", "U"),
    "OI": ("O", "I"),
}
_NAMES = list(VISEMES)
_TARGETS = np.array([VISEMES[name] for name in _NAMES], np.float32)  # [V, 3]


def viseme_of(symbol: str) -> tuple[str, ...]:
    """The viseme(s) of a phoneme symbol; pauses are "rest", an unknown phoneme "DD" (slightly open)."""
    if symbol.startswith("_"):
        return ("rest",)
    return PHONEME_VISEMES.get(symbol.lstrip("',"), ("DD",))


def _grid(n_frames: int, fps: int) -> np.ndarray:
    per_frame = GRID_HZ // fps
    assert per_frame * fps == GRID_HZ, "GRID_HZ must be a multiple of the frame rate"
    return (np.arange(n_frames * per_frame) + 0.5) / GRID_HZ  # seconds


def _per_frame(values: np.ndarray, n_frames: int) -> np.ndarray:
    """Mean of grid values [G, ...] over each frame's interval: [n_frames, ...]."""
    return values.reshape(n_frames, -1, *values.shape[1:]).mean(axis=1)


def mouth_track(phonemes: list[TimedPhoneme], n_frames: int, fps: int) -> np.ndarray:
    """Mouth (openness, width, rounding) per frame, ``[n_frames, 3]`` float32, from timed phonemes (seconds).

    Each grid instant takes its phoneme's viseme target (a diphthong's second viseme in its second half; rest
    outside every phoneme), then the targets are blended with a Gaussian of ``BLEND_S`` (co-articulation).
    """
    times = _grid(n_frames, fps)
    targets = np.repeat(_TARGETS[_NAMES.index("rest")][None], times.shape[0], axis=0)  # [G, 3]
    for p in phonemes:
        visemes = viseme_of(p.symbol)
        first, last = np.searchsorted(times, [p.start_s, p.end_s])
        if last <= first:
            continue
        middle = np.searchsorted(times, 0.5 * (p.start_s + p.end_s)) if len(visemes) == 2 else last
        targets[first:middle] = _TARGETS[_NAMES.index(visemes[0])]
        targets[middle:last] = _TARGETS[_NAMES.index(visemes[-1])]
    radius = int(np.ceil(3 * BLEND_S * GRID_HZ))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / (BLEND_S * GRID_HZ)) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(targets, ((radius, radius), (0, 0)), mode="edge")
    blended = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(3)], axis=1)
    return _per_frame(blended, n_frames).astype(np.float32)


def blink_track(rng: np.random.Generator, n_frames: int, fps: int) -> np.ndarray:
    """Eyelid closure 0..1 per frame, ``[n_frames]`` float32: blinks at random, about one every 3.5 s.

    A blink closes in 60-90 ms, stays shut 20-50 ms and opens in 100-140 ms; intervals are 0.8 s plus an
    exponential of mean 2.7 s.
    """
    times = _grid(n_frames, fps)
    closure = np.zeros_like(times)
    start = rng.uniform(0.2, 2.5)
    while start < times[-1]:
        close, hold, reopen = rng.uniform(0.06, 0.09), rng.uniform(0.02, 0.05), rng.uniform(0.1, 0.14)
        t = times - start
        shape = np.clip(np.minimum(t / close, 1 - (t - close - hold) / reopen), 0, 1)
        closure = np.maximum(closure, np.where(t >= 0, shape, 0))
        start += close + hold + reopen + 0.8 + rng.exponential(2.7)
    return _per_frame(closure, n_frames).astype(np.float32)


def head_track(rng: np.random.Generator, n_frames: int, fps: int) -> np.ndarray:
    """Head offset (x, y) in pixels per frame, ``[n_frames, 2]`` float32: a slow sway of three sinusoids per
    axis (0.07-0.5 Hz), up to ±MAX_HEAD_SHIFT."""
    times = (np.arange(n_frames) + 0.5) / fps
    offsets = np.zeros((n_frames, 2))
    for axis, (low, high) in enumerate(((1.0, MAX_HEAD_SHIFT), (0.5, 0.6 * MAX_HEAD_SHIFT))):
        amplitude = rng.uniform(low, high) * rng.dirichlet(np.ones(3))  # [3], sums to the total amplitude
        frequency, phase = rng.uniform(0.07, 0.5, 3), rng.uniform(0, 2 * np.pi, 3)
        offsets[:, axis] = np.sin(2 * np.pi * frequency * times[:, None] + phase) @ amplitude
    return np.clip(offsets, -MAX_HEAD_SHIFT, MAX_HEAD_SHIFT).astype(np.float32)
