"""A chunk of generated media: what the compute process makes, playout buffers and every transport sends."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class AVChunk:
    """One generated chunk of a session's media.

    index: the chunk's place on the session's media timeline (chunk 0 starts at pts 0); pts: its presentation
    time in seconds (= index · chunk seconds); audio: float32 mono [samples] at `sample_rate` Hz;
    frames: uint8 RGB [n, H, W, 3] at `fps`; text_start/text_end: the span of session text it speaks
    (-1, -1 when it is silent).
    """

    index: int
    pts: float
    audio: np.ndarray
    frames: np.ndarray
    sample_rate: int
    fps: int
    text_start: int = -1
    text_end: int = -1

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.frames) / self.fps

    @property
    def end(self) -> float:
        """End time in seconds."""
        return self.pts + self.seconds

    def part(self, start: float, end: float) -> AVChunk:
        """Its media in [start, end) seconds of presentation time; both must fall on video frame boundaries."""
        first, last = (round((t - self.pts) * self.fps) for t in (start, end))
        samples_per_frame = len(self.audio) // len(self.frames)
        return replace(
            self,
            pts=self.pts + first / self.fps,
            audio=self.audio[first * samples_per_frame : last * samples_per_frame],
            frames=self.frames[first:last],
        )
