"""When a session's speech reached the client: its first phoneme located in the received WebRTC media.

The server says where speech starts on the session's media clock (`speech.started.media_time`), but the WebRTC
tracks carry their own timeline (seconds since the viewer's first frame, holds included), and the audio itself
cannot mark speech: an idle avatar is not silent in general (a model with random weights hums all the time). So
the client keeps a *reference*: the same session audio on the media clock, as the websocket media subscription
delivers it (`media.subscribe`). Matching a short window of the reference around the first phoneme against the
received audio (normalized cross-correlation) finds where that instant lies on the received timeline; the frames
that carry it tell when it arrived. The search starts near where the websocket delivered the same instant and
looks `SEARCH_S` either side of it, so periodic media (the clapper) cannot match a neighbouring period.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sonate.streamer.media.playout import TICK

REFERENCE_BEFORE_S = 0.2  # reference window: this long before the instant looked for ...
REFERENCE_AFTER_S = 0.6  # ... and this long after it (s)
MIN_AFTER_S = 0.1  # ... but at least this long after it, where the recording ends early (s)
SEARCH_S = 0.45  # the instant is looked for this far either side of the first guess (s)
MIN_CORRELATION = 0.3  # a weaker best match than this (normalized, 1 = identical) counts as not found
MIN_REFERENCE_RMS = 1e-3  # a reference window quieter than this (full scale 1) cannot be matched


class MediaReference:
    """The session's audio on its media clock, tick by tick, with when each tick arrived (monotonic s)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.tick_samples = round(sample_rate * TICK)
        self._ticks: dict[int, tuple[np.ndarray, float]] = {}  # media tick → (float32 [tick_samples], arrival)

    def __len__(self) -> int:
        return len(self._ticks)

    def add(self, pts: float, pcm: np.ndarray, arrival: float) -> None:
        """One tick of audio: `pts` (s of media time), float32 mono `pcm` at `sample_rate`, its arrival time."""
        self._ticks[round(pts / TICK)] = (np.asarray(pcm, dtype=np.float32), arrival)

    def window(self, start_s: float, end_s: float) -> np.ndarray:
        """Audio of media time [start_s, end_s): float32 [samples], zeros where nothing arrived."""
        first, last = round(start_s / TICK), round(end_s / TICK)
        out = np.zeros(max(0, last - first) * self.tick_samples, dtype=np.float32)
        for tick in range(first, last):
            entry = self._ticks.get(tick)
            if entry is not None:
                pcm = entry[0][: self.tick_samples]
                offset = (tick - first) * self.tick_samples
                out[offset : offset + len(pcm)] = pcm
        return out

    def arrival_at(self, media_s: float) -> float | None:
        """When the tick carrying media time `media_s` arrived (None if it did not)."""
        entry = self._ticks.get(int(media_s / TICK + 1e-9))
        return None if entry is None else entry[1]


class ReceivedMedia(Protocol):
    """What the recorder offers: the received audio and the arrival of the frame carrying a received instant."""

    sample_rate: int

    @property
    def audio(self) -> np.ndarray: ...

    def arrival_of(self, kind: str, received_s: float) -> float | None: ...

    def nearest_pts(self, kind: str, arrival: float) -> float | None: ...


def locate(
    reference: MediaReference, media_s: float, received: np.ndarray, guess_s: float, search_s: float = SEARCH_S
) -> float | None:
    """The received time (s) at which media time `media_s` plays, or None when no clear match is found.

    `received` is the received audio at the reference's sample rate (sample 0 at received time 0) and `guess_s`
    a received time near the answer: it is looked for within `search_s` seconds of the guess.
    """
    rate = reference.sample_rate
    # near the end of the recording, match a shorter window rather than none
    after_s = min(REFERENCE_AFTER_S, len(received) / rate - guess_s - search_s)
    if after_s < MIN_AFTER_S:
        return None
    ref = reference.window(media_s - REFERENCE_BEFORE_S, media_s + after_s).astype(np.float64)
    if len(ref) == 0 or np.sqrt(np.mean(ref**2)) < MIN_REFERENCE_RMS:
        return None
    start = max(0, round((guess_s - REFERENCE_BEFORE_S - search_s) * rate))
    end = min(len(received), round((guess_s + after_s + search_s) * rate))
    segment = np.asarray(received[start:end], dtype=np.float64)
    if len(segment) < len(ref):
        return None
    # corr[j] = segment[j : j + L] · ref, for every lag j where the window fits
    n = 1 << (len(segment) + len(ref) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(segment, n) * np.conj(np.fft.rfft(ref, n)), n)[: len(segment) - len(ref) + 1]
    energy = np.concatenate([[0.0], np.cumsum(segment**2)])
    local = np.sqrt(np.maximum(energy[len(ref) :] - energy[: -len(ref)], 1e-12))
    ncc = corr / (local * np.sqrt(np.sum(ref**2)))
    best = int(np.argmax(ncc))
    if ncc[best] < MIN_CORRELATION:
        return None
    return (start + best) / rate + REFERENCE_BEFORE_S


@dataclass(frozen=True)
class SpeechLatency:
    """How long an utterance took to reach the client, all times monotonic seconds on the client's clock.

    text_start: the utterance's first text offset; media_time: its first phoneme on the session media clock
    (s); text_sent_at: its first text piece was sent; started_at: `speech.started` arrived; server_ttfa_ms: the
    server's own figure (first text pushed → speech playing); websocket_at: the websocket media tick carrying
    the first phoneme arrived; received_s: where that phoneme lies on the received WebRTC timeline (s);
    audio_at / video_at: the WebRTC audio / video frame carrying it arrived. None where it could not be found.
    """

    text_start: int
    media_time: float
    text_sent_at: float
    started_at: float
    server_ttfa_ms: float
    websocket_at: float | None = None
    received_s: float | None = None
    audio_at: float | None = None
    video_at: float | None = None

    @property
    def ttfa_ms(self) -> float | None:
        """Text sent → the first phoneme's audio received over WebRTC (ms)."""
        return None if self.audio_at is None else (self.audio_at - self.text_sent_at) * 1e3

    @property
    def ttfv_ms(self) -> float | None:
        """Text sent → the video frame showing the first phoneme received over WebRTC (ms)."""
        return None if self.video_at is None else (self.video_at - self.text_sent_at) * 1e3

    @property
    def ttfa_websocket_ms(self) -> float | None:
        """Text sent → the first phoneme's audio received over the websocket (ms)."""
        return None if self.websocket_at is None else (self.websocket_at - self.text_sent_at) * 1e3


def measure_speech(
    started: list[tuple[dict, float]],
    sent: list[tuple[int, float]],
    received: ReceivedMedia | None,
    reference: MediaReference | None,
) -> list[SpeechLatency]:
    """One SpeechLatency per `speech.started` event.

    started: (event, arrival) pairs; sent: (text offset where a piece starts, monotonic send time) for every
    text piece, in order. An utterance's text counts as sent when the piece holding its first offset was.
    """
    audio = received.audio if received is not None else np.zeros(0, dtype=np.float32)
    starts = [offset for offset, _ in sent]
    out = []
    for event, arrival in started:
        text_start, media_time = int(event["text_start"]), float(event["media_time"])
        piece = bisect.bisect_right(starts, text_start) - 1
        sent_at = sent[max(piece, 0)][1] if sent else arrival
        websocket_at = reference.arrival_at(media_time) if reference is not None else None
        received_s = audio_at = video_at = None
        if received is not None and reference is not None:
            guess = received.nearest_pts("audio", websocket_at if websocket_at is not None else arrival)
            if guess is not None:
                received_s = locate(reference, media_time, audio, guess)
        if received is not None and received_s is not None:
            audio_at = received.arrival_of("audio", received_s)
            video_at = received.arrival_of("video", received_s)
        server_ttfa_ms = float(event.get("ttfa_ms", float("nan")))
        out.append(
            SpeechLatency(
                text_start, media_time, sent_at, arrival, server_ttfa_ms, websocket_at, received_s, audio_at, video_at
            )
        )
    return out
