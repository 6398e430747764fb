"""The A/V sync test source ("clapper board") and the detectors that measure its offset after a transport.

Once a second a white frame and a 1 kHz beep of one video frame's length start at the same presentation time;
the rest is black frames and silence. Each clap starts on the first video frame boundary at or after
n + 0.5 s (0.52 s, 1.52 s, … at 25 fps), so the flash and the beep can start at exactly the same instant.
The detectors find flashes in decoded frames and beep onsets in decoded audio; `av_offsets` pairs them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

CLAP_PERIOD = 1.0  # seconds between claps
CLAP_PHASE = 0.5  # seconds into each period where a clap starts (rounded up to a video frame)
BEEP_HZ = 1000.0  # beep tone frequency, Hz
BEEP_AMPLITUDE = 0.5  # beep peak, full scale = 1
BEEP_FADE = 0.001  # seconds of raised-cosine fade in and out, so the beep does not click
DETECT_WINDOW = 0.005  # seconds: the tone detector's window (5 periods of 1 kHz)
DETECT_FLOOR = 0.05  # tone amplitude (full scale = 1) below which nothing counts as a beep
DETECT_REFRACTORY = 0.2  # seconds after an onset during which no new onset is reported


def clap_frames(first_frame: int, n_frames: int, fps: int) -> np.ndarray:
    """Which of the video frames [first_frame, first_frame + n_frames) are claps: bool [n_frames]."""
    index = np.arange(first_frame, first_frame + n_frames)
    clap_of_period = math.ceil(CLAP_PHASE * fps - 1e-9)  # first frame at or after the phase
    period_frames = round(CLAP_PERIOD * fps)
    return index % period_frames == clap_of_period


def clapper_media(
    first_sample: int, samples: int, sample_rate: int, fps: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """The clapper's media for the span of `samples` audio samples starting at sample `first_sample`.

    Returns audio float32 [samples] at `sample_rate` Hz and frames uint8 RGB [samples·fps/sample_rate, H, W, 3].
    The span must start and end on video frame boundaries (`sample_rate` must be a multiple of `fps`).
    """
    frame_samples, rest = divmod(sample_rate, fps)
    if rest or first_sample % frame_samples or samples % frame_samples:
        raise ValueError(
            f"a clapper span must cover whole video frames: {sample_rate} Hz / {fps} fps, "
            f"samples [{first_sample}, {first_sample + samples})"
        )
    first_frame, n_frames = first_sample // frame_samples, samples // frame_samples
    claps = clap_frames(first_frame, n_frames, fps)

    frames = np.zeros((n_frames, height, width, 3), dtype=np.uint8)
    frames[claps] = 255

    # A beep lasts exactly one video frame: its frame's samples carry the tone, phase 0 at the onset.
    t = np.arange(frame_samples) / sample_rate  # seconds since the onset
    beep = BEEP_AMPLITUDE * np.sin(2 * np.pi * BEEP_HZ * t)
    fade = min(round(BEEP_FADE * sample_rate), frame_samples // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        beep[:fade] *= ramp
        beep[-fade:] *= ramp[::-1]
    audio = np.zeros((n_frames, frame_samples), dtype=np.float32)
    audio[claps] = beep
    return audio.reshape(-1), frames


def flash_times(frames_with_times: Iterable[tuple[float, np.ndarray]]) -> list[float]:
    """Times (s) of the frames whose mean brightness rises above half after a frame at or below half.

    `frames_with_times` yields (presentation time in seconds, frame) in time order; a frame is any uint8 array
    (RGB [H, W, 3] or a luma plane [H, W]), its brightness the mean value over 255.
    """
    times: list[float] = []
    was_bright = True  # a stream that starts bright has no onset at its first frame
    for time, frame in frames_with_times:
        bright = float(np.mean(frame)) / 255 > 0.5
        if bright and not was_bright:
            times.append(time)
        was_bright = bright
    return times


def beep_times(audio: np.ndarray, sample_rate: int, start_time: float) -> list[float]:
    """Onset times (s) of the 1 kHz beeps in mono `audio` (float, full scale 1) whose first sample is at `start_time`.

    The tone's amplitude is measured in a sliding `DETECT_WINDOW` (quadrature correlation at `BEEP_HZ`); an
    onset is where it rises through half of the loudest beep, dated at the window's middle (where a sharp
    onset reaches half amplitude), and onsets closer than `DETECT_REFRACTORY` to the previous one are ignored.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    window = round(DETECT_WINDOW * sample_rate)
    if len(x) < window:
        return []
    phase = 2 * np.pi * BEEP_HZ * np.arange(len(x)) / sample_rate
    i_sum = np.concatenate([[0.0], np.cumsum(x * np.cos(phase))])
    q_sum = np.concatenate([[0.0], np.cumsum(x * np.sin(phase))])
    # amplitude[n]: the tone's amplitude over samples [n, n + window)
    amplitude = 2 / window * np.hypot(i_sum[window:] - i_sum[:-window], q_sum[window:] - q_sum[:-window])
    peak = float(amplitude.max())
    if peak < DETECT_FLOOR:
        return []
    above = amplitude >= peak / 2
    rises = np.flatnonzero(above[1:] & ~above[:-1]) + 1  # a tone already on at the start has no onset
    times: list[float] = []
    for n in rises:
        time = start_time + (int(n) + window / 2) / sample_rate
        if not times or time - times[-1] >= DETECT_REFRACTORY:
            times.append(time)
    return times


def av_offsets(flashes: list[float], beeps: list[float]) -> list[float]:
    """For each flash, the nearest beep's time minus the flash's (s): positive when the sound comes late."""
    if not beeps:
        return []
    beep_array = np.asarray(beeps)
    return [float(beep_array[np.argmin(np.abs(beep_array - flash))] - flash) for flash in flashes]
