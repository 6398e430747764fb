"""A one-line progress bar for long CLI jobs (data making, evaluation, benchmarks)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A one-line progress bar on stderr (a line every ``every_s`` seconds when stderr is not a terminal)."""

    def __init__(self, label: str, every_s: float = 10.0, width: int = 30) -> None:
        self.label, self.every_s, self.width = label, every_s, width
        self.started = time.perf_counter()
        self._last = -every_s
        self._tty = sys.stderr.isatty()

    def update(self, done: int, total: int, extra: str = "") -> None:
        now = time.perf_counter()
        if not self._tty and now - self._last < self.every_s and done < total:
            return
        self._last = now
        filled = self.width * done // max(total, 1)
        elapsed = now - self.started
        eta = f"{elapsed / done * (total - done):.0f}s" if done else "?"
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{total} {extra} {elapsed:.0f}s, ETA {eta}"
        print(("\r" if self._tty else "") + line, end="" if self._tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._tty:
            print(file=sys.stderr, flush=True)
