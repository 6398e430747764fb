"""Where the time goes: each chunk's trip through the engine, and each utterance's time to first audio as spans.

Every stamp is `time.monotonic()` seconds. CLOCK_MONOTONIC is one clock for every process of a host, so the
compute process's stamps, the engine's and a local client's line up. The engine records these always: a few
clock reads per batch.

An utterance's time to first audio on the server runs from its first text piece to the start of the tick that
plays its first phoneme (every transport sends a tick's audio whole when it begins), as consecutive spans
(`FIRST_AUDIO_SPANS`):

- `text`: waiting for the text its first chunk needs: the first piece → the piece (or flush, or lookahead
  timeout) that completed the words of that chunk;
- `scheduler`: that text waiting for the scheduler (a batch in flight, the next pass, the lead) until its chunk
  is sent to the compute process, less the `g2p` of the pass that turned it into phonemes;
- `to_compute`, `from_compute`: the request's and the reply's trip through the pipe (pickling included);
- `euler`, `clean`, `video_decoder`, `vocoder`: the batch's work in the compute process;
- `other`: what no instrument covers (in the compute process, between its timed parts);
- `deliver`: the reply handed to every session of the batch;
- `buffered`: the chunk waiting in the playout buffer until its first phoneme's tick begins.

A client adds `upstream` (its text to the server), `to_client` (the tick through the server's sending task and the
network, as the websocket media shows it) and `webrtc` (what WebRTC adds: Opus and RTP, the receiver's jitter
buffer).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

COMPUTE_SPANS = ("euler", "clean", "video_decoder", "vocoder")
BATCH_SPANS = ("to_compute", *COMPUTE_SPANS, "other", "from_compute", "deliver")  # in the order they happen
FIRST_AUDIO_SPANS = ("text", "scheduler", "g2p", *BATCH_SPANS, "buffered")
KEPT_BREAKDOWNS = 1000  # first-audio breakdowns the engine keeps, newest last
KEPT_BATCHES = 1000  # batch timings the engine keeps, newest last
KEPT_CHUNKS = 4096  # chunk timings the engine keeps, newest last

T = TypeVar("T")


@dataclass
class ComputeTiming:
    """One batch in the compute process: when it started and ended there (monotonic s) and its parts (s)."""

    started_at: float
    ended_at: float
    euler: float = 0.0
    clean: float = 0.0
    video_decoder: float = 0.0
    vocoder: float = 0.0

    @property
    def untimed(self) -> float:
        """Seconds between `started_at` and `ended_at` that no part covers (rollbacks, packing the chunks)."""
        parts = self.euler + self.clean + self.video_decoder + self.vocoder
        return self.ended_at - self.started_at - parts


@dataclass
class ChunkTiming:
    """One chunk's trip (monotonic s): sent to the compute process with `batch_size` chunks, computed there,
    its reply received, and delivered to the session."""

    chunk: int
    batch_size: int
    sent_at: float
    compute: ComputeTiming
    received_at: float
    delivered_at: float

    @property
    def round_trip(self) -> float:
        """Seconds from sending the batch to the compute process to receiving its reply."""
        return self.received_at - self.sent_at

    def spans(self) -> dict[str, float]:
        """The `BATCH_SPANS` of this chunk's batch, in seconds."""
        compute = self.compute
        return {
            "to_compute": compute.started_at - self.sent_at,
            **{name: getattr(compute, name) for name in COMPUTE_SPANS},
            "other": compute.untimed,
            "from_compute": self.received_at - compute.ended_at,
            "deliver": self.delivered_at - self.received_at,
        }


@dataclass
class FirstAudio:
    """How an utterance's first audio came about on the server: its first text piece arrived at
    `text_received_at`, its first phoneme (at `media_time` s on the session clock) played at `plays_at`
    (monotonic s), and the spans between (s)."""

    session_id: str
    text_start: int
    media_time: float
    text_received_at: float
    plays_at: float
    spans: dict[str, float]

    @property
    def total(self) -> float:
        """Seconds from the first text piece to the first phoneme playing."""
        return self.plays_at - self.text_received_at


def first_audio(
    session_id: str,
    text_start: int,
    media_time: float,
    text_received_at: float,
    text_ready_at: float,
    g2p: float,
    chunk: ChunkTiming,
    plays_at: float,
) -> FirstAudio:
    """The breakdown of an utterance whose first chunk needed the text that arrived by `text_ready_at`, whose
    G2P took `g2p` seconds in the pass that made that chunk's phonemes final, and which `chunk` carried."""
    spans = {
        "text": text_ready_at - text_received_at,
        "scheduler": chunk.sent_at - text_ready_at - g2p,
        "g2p": g2p,
        **chunk.spans(),
        "buffered": plays_at - chunk.delivered_at,
    }
    return FirstAudio(session_id, text_start, media_time, text_received_at, plays_at, spans)


class Recent(Generic[T]):
    """The newest `keep` records of a stream, oldest first, and `total`: how many were ever recorded.

    A reader that remembers `total` gets exactly the records added since from `since`, as long as fewer than
    `keep` arrive between two reads (the server turns these into Prometheus histograms that way).
    """

    def __init__(self, keep: int) -> None:
        self._items: deque[T] = deque(maxlen=keep)
        self.total = 0

    def append(self, item: T) -> None:
        self._items.append(item)
        self.total += 1

    def since(self, seen: int) -> list[T]:
        """The records added after the first `seen` of all recorded (those of them still kept)."""
        new = min(self.total - seen, len(self._items))
        return list(itertools.islice(self._items, len(self._items) - new, None)) if new > 0 else []

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
