"""Timbres: espeak-ng voice variants × pitch × pitch range × rate × vocal-tract length, and speech in them.

Speech goes through the inference frontend (:class:`IncrementalFrontend`), so training and serving share one
phoneme inventory and one timing source. The vocal-tract length change plays espeak's samples (22050 Hz) as if
they had been recorded at ``round(22050 · tract)`` Hz and resamples that to the world's rate: formants and
pitch scale by ``tract``, durations by ``1 / tract``, and every phoneme time scales by exactly the same factor,
so the timings stay exact. espeak's own pitch and rate parameters are drawn independently, so pitch, formants
and tempo vary independently across timbres.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sonate.models.espeak import TimedPhoneme
from sonate.models.frontend import IncrementalFrontend
from sonate.models.media_io import resample

__all__ = ["VARIANTS", "Speech", "Timbre", "describe_voice", "measure_f0", "sample_timbres", "speak"]

BASE_VOICE = "en-us"  # one language: one phoneme inventory (the frontend's)
# espeak-ng variants that speak clearly in en-us, with the gender their pitch line gives; robotic, whispering,
# croaking and child-like variants are left out, and so is every variant that uses the Klatt synthesizer
# (klatt*, edward, benjamin, adam, announcer, david): its state survives models/espeak.py's reset, so the same
# text would not always give the same samples.
_FEMALE_VARIANTS = (
    "f1 f2 f3 f4 f5 Alicia Andrea Annie anika aunty belinda grandma linda shelby steph steph2 steph3 Nguyen"
)
_MALE_VARIANTS = (
    "m1 m2 m3 m4 m5 m6 m7 m8 Alex Andy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario Michael Mike Storm "
    "antonio boris ed gustave ian iven iven2 iven3 john kaukovalta marcelo max michel miguel norbert "
    "pablo paul pedro quincy rob robert sandro travis victor grandpa"
)
VARIANTS: dict[str, str] = dict.fromkeys(_FEMALE_VARIANTS.split(), "female")
VARIANTS |= dict.fromkeys(_MALE_VARIANTS.split(), "male")
PITCH_RANGE = (25, 75)  # espeak pitch, 0..100 (50 = the variant's own)
PITCH_SPREAD_RANGE = (15, 95)  # espeak pitch range, 0..100 (0 monotone)
RATE_RANGE_WPM = (135, 215)  # words per minute
TRACT_RANGE = (0.88, 1.14)  # vocal-tract length factor: formants × tract (< 1: a longer tract, a deeper voice)
TARGET_RMS_DBFS = -20.0  # loudness of the voiced part of every utterance
PEAK_LIMIT = 0.98  # full scale 1.0
F0_TEXT = "We were away a year ago, and we are all here now."  # all voiced: a steady f0 estimate


@dataclass(frozen=True)
class Timbre:
    """One synthetic speaker. ``tract`` is the vocal-tract length factor; ``f0_hz`` the measured median pitch."""

    id: str
    variant: str
    gender: str
    pitch: int
    pitch_range: int
    rate_wpm: int
    tract: float
    f0_hz: float
    split: str

    @property
    def voice(self) -> str:
        """The espeak voice name, variant included."""
        return f"{BASE_VOICE}+{self.variant}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Timbre:
        return cls(**values)


@dataclass
class Speech:
    """An utterance: mono float32 ``audio`` [samples] at ``sample_rate`` Hz and its phonemes, times in seconds."""

    audio: np.ndarray
    sample_rate: int
    phonemes: list[TimedPhoneme]

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate


def speak(text: str, timbre: Timbre, sample_rate: int) -> Speech:
    """Say ``text`` in ``timbre`` through the inference frontend; audio at ``sample_rate`` Hz, loudness-normalised.

    The audio starts at the first phoneme and ends after the frontend's closing pause (its phonemes cover it).
    """
    frontend = IncrementalFrontend(
        voice=timbre.voice,
        rate_wpm=timbre.rate_wpm,
        pitch=timbre.pitch,
        pitch_range=timbre.pitch_range,
        keep_audio=True,
    )
    frontend.push(text)
    frontend.flush()
    espeak_rate = frontend.sample_rate  # Hz
    declared_rate = round(espeak_rate * timbre.tract)  # play espeak's samples at this rate: formants × tract
    audio = resample(frontend.render_audio(), declared_rate, sample_rate)
    scale = espeak_rate / declared_rate  # seconds on espeak's clock -> seconds in the output
    phonemes = [
        TimedPhoneme(p.symbol, p.start_s * scale, p.end_s * scale, p.speaker, p.text_start, p.text_end)
        for p in frontend.timeline.phonemes
    ]
    return Speech(_normalise(audio, sample_rate), sample_rate, phonemes)


def _normalise(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Scale so the voiced 20 ms frames have TARGET_RMS_DBFS, then lower the gain if a peak would pass PEAK_LIMIT."""
    hop = sample_rate // 50  # 20 ms
    n = audio.shape[0] // hop * hop
    if n == 0:
        return audio
    energy = np.mean(audio[:n].reshape(-1, hop) ** 2, axis=1)
    voiced = energy > energy.max() * 1e-3  # within 30 dB of the loudest frame
    rms = float(np.sqrt(np.mean(energy[voiced])))
    if rms <= 0:
        return audio
    gain = 10 ** (TARGET_RMS_DBFS / 20) / rms
    peak = float(np.abs(audio).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return (audio * gain).astype(np.float32)


def measure_f0(audio: np.ndarray, sample_rate: int, low_hz: float = 60.0, high_hz: float = 450.0) -> float:
    """Median pitch in Hz of the voiced 50 ms frames (normalised autocorrelation peak above 0.5), or 0.0."""
    frame, hop = int(0.05 * sample_rate), int(0.01 * sample_rate)
    if audio.shape[0] < frame:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]  # [F, frame]
    frames = frames[np.sqrt(np.mean(frames**2, axis=1)) > 0.5 * np.sqrt(np.mean(audio**2))]
    if frames.shape[0] == 0:
        return 0.0
    spectrum = np.fft.rfft(frames - frames.mean(axis=1, keepdims=True), n=2 * frame)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2)[:, :frame]  # [F, lag]
    autocorr /= autocorr[:, :1] + 1e-12
    autocorr *= frame / (frame - np.arange(frame))  # undo the fewer overlapping samples at long lags
    lo, hi = int(sample_rate / high_hz), int(sample_rate / low_hz)
    best = lo + np.argmax(autocorr[:, lo : hi + 1], axis=1)
    voiced = autocorr[np.arange(best.shape[0]), best] > 0.5
    return float(np.median(sample_rate / best[voiced])) if voiced.any() else 0.0


def sample_timbres(count: int, rng: np.random.Generator, sample_rate: int, splits: list[str]) -> list[Timbre]:
    """``count`` distinct timbres (no two share all parameters), half female, with ids t000.. and given splits.

    ``splits`` holds one split name per timbre. Each timbre's f0 is measured on a fixed all-voiced sentence.
    """
    by_gender = {g: sorted(v for v, vg in VARIANTS.items() if vg == g) for g in ("female", "male")}
    seen: set[tuple] = set()
    timbres: list[Timbre] = []
    while len(timbres) < count:
        gender = ("female", "male")[len(timbres) % 2]
        variants = by_gender[gender]
        params = (
            variants[rng.integers(len(variants))],
            int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            int(rng.integers(PITCH_SPREAD_RANGE[0], PITCH_SPREAD_RANGE[1] + 1)),
            int(rng.integers(RATE_RANGE_WPM[0], RATE_RANGE_WPM[1] + 1)),
            round(float(rng.uniform(*TRACT_RANGE)), 3),
        )
        if params in seen:
            continue
        seen.add(params)
        index = len(timbres)
        timbre = Timbre(f"t{index:03d}", params[0], gender, *params[1:], f0_hz=0.0, split=splits[index])
        speech = speak(F0_TEXT, timbre, sample_rate)
        timbres.append(dataclasses.replace(timbre, f0_hz=round(measure_f0(speech.audio, sample_rate), 1)))
    return timbres


def describe_voice(timbre: Timbre) -> str:
    """A short description from the parameters: "a slow, calm, low female voice"."""
    low, high = (165.0, 235.0) if timbre.gender == "female" else (105.0, 150.0)  # f0 bounds of "medium", Hz
    height = "low" if timbre.f0_hz < low else "high" if timbre.f0_hz > high else "medium-pitched"
    if timbre.pitch_range < 35:
        manner = "flat"
    elif timbre.pitch_range > 70:
        manner = "lively"
    else:
        manner = "calm"
    words = ["slow"] if timbre.rate_wpm < 155 else ["fast"] if timbre.rate_wpm > 195 else []
    words += [manner, height]
    words += ["resonant"] if timbre.tract < 0.94 else ["bright"] if timbre.tract > 1.08 else []
    return f"a {', '.join(words)} {timbre.gender} voice"
