"""Timing the phases of a chunk without splitting the code that makes it.

`ChunkStream.generate` and `Codecs.decode_chunk` take a `PhaseTimer` and call it with a phase's name as each
phase ends ("euler", "clean", then "video_decoder", "vocoder"); the default, `untimed`, does nothing. `Laps`
turns those calls into seconds per phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PhaseTimer = Callable[[str], None]  # called with a phase's name as the phase ends


def untimed(phase: str) -> None:
    """The timer that times nothing (the default of `ChunkStream.generate` and `Codecs.decode_chunk`)."""


class Laps:
    """A `PhaseTimer`: each call stores the seconds since the previous one (or since it was made) under the
    phase's name in `seconds`; `sync` (e.g. a device synchronize) runs before every clock read."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = {}
        sync()
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.seconds[phase], self.last = now - self.last, now
