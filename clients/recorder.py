"""Records a session's WebRTC tracks as they arrive: timings of every frame, the audio, and optionally an MP4.

The two remote tracks of a viewer start on the same server tick, and aiortc dates each from its first frame, so
both share one *received timeline* (seconds since the first frame, from the frames' pts). The recorder places
every frame on that timeline by its pts, never by its arrival: a lost audio packet becomes silence of its length
and a missing video frame repeats the previous one, so sound and picture stay aligned in the file. Decoded audio
(Opus, 48 kHz) is resampled to the session's sample rate, which is what the MP4 stores. Frame conversion and
encoding run in one worker thread, off the event loop, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from sonate.streamer.media.mp4 import Mp4Writer
from sonate.streamer.media.resample import AUDIO_FRAME_SAMPLES, AUDIO_RATE, StreamingResampler

log = logging.getLogger(__name__)

ENERGY_FLOOR_DBFS = -50.0  # an audio frame louder than this (RMS, full scale = 0 dB) counts as sound
VIDEO_BATCH_FRAMES = 8  # video frames handed to the MP4 encoder at once


@dataclass(frozen=True)
class FrameTiming:
    """One received frame: `pts` (s on the received timeline), `arrival` (monotonic s when `recv` returned it)."""

    pts: float
    arrival: float


class MediaRecorder:
    """Reads a viewer's remote audio and video tracks until they end, keeping timings, audio and brightness.

    sample_rate (Hz), fps, width and height (pixels) are the session's (its `session.ready`); with `path` the
    media is also written to an MP4 there (H.264 + AAC at `sample_rate`). `stop()` ends the readers and
    finishes the file; afterwards audio and video have the same duration (the shorter one is padded). Frame
    timings and `first_*_at` are up to date as frames arrive; `audio` and `brightness` are complete after `stop()`.
    """

    def __init__(
        self,
        *,
        sample_rate: int,
        fps: int,
        width: int,
        height: int,
        path: str | Path | None = None,
        session_id: str = "",
    ) -> None:
        self.session_id = session_id  # for the log
        self.sample_rate, self.fps, self.width, self.height = sample_rate, fps, width, height
        self.path = None if path is None else Path(path)
        self.audio_frames: list[FrameTiming] = []  # every received audio frame, in arrival order
        self.video_frames: list[FrameTiming] = []  # every received video frame, in arrival order
        self.brightness: list[tuple[float, float]] = []  # (pts s, mean RGB value / 255) of each video frame
        self.first_audio_at: float | None = None  # monotonic s: the first audio frame arrived
        self.first_video_at: float | None = None  # monotonic s: the first video frame arrived
        self.first_sound_at: float | None = None  # monotonic s: the first audio frame above ENERGY_FLOOR_DBFS
        self.lost_audio_seconds = 0.0  # gaps in the audio pts, filled with silence
        self.media_arrived = asyncio.Event()  # set when both tracks (or the only one) have delivered a frame
        self._writer = (
            None
            if self.path is None
            else Mp4Writer(self.path, fps=fps, sample_rate=sample_rate, width=width, height=height)
        )
        self._resampler = StreamingResampler(AUDIO_RATE, sample_rate, AUDIO_FRAME_SAMPLES)
        self._skip_samples = round(self._resampler.delay_seconds * sample_rate)  # the resampler's lag, trimmed
        self._audio_blocks: list[np.ndarray] = []  # float32 mono at sample_rate on the received timeline
        self._samples = 0  # samples in _audio_blocks
        self._pending_48k = np.zeros(0, dtype=np.float32)  # decoded audio short of one resampler block
        self._next_audio_pts = 0  # 48 kHz samples: where the next audio frame should start
        self._frames: list[np.ndarray] = []  # video frames waiting for the MP4 encoder
        self._frames_placed = 0  # video frames on the timeline so far
        self._last_frame: np.ndarray | None = None
        self._kinds: set[str] = set()
        self._readers: list[asyncio.Task[None]] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonate-recorder")
        self._stopped = False

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def add_track(self, track: MediaStreamTrack) -> None:
        """Start reading a remote track ("audio" or "video") until it ends."""
        if track.kind not in ("audio", "video") or track.kind in self._kinds:
            raise ValueError(f"the recorder takes one audio and one video track, got another {track.kind!r}")
        self._kinds.add(track.kind)
        self._readers.append(asyncio.create_task(self._read(track), name=f"sonate-recorder-{track.kind}"))

    async def stop(self) -> None:
        """Stop reading, wait for the worker, pad the shorter track and finish the MP4; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        for reader in self._readers:
            reader.cancel()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._readers.clear()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._worker, self._finish)
        finally:
            self._worker.shutdown(wait=True)

    # --- what was received ---------------------------------------------------------------------------------------

    @property
    def audio(self) -> np.ndarray:
        """The received audio: float32 mono [samples] at `sample_rate`, sample 0 at received time 0."""
        blocks = list(self._audio_blocks)  # the worker may be appending: read a snapshot
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)

    @property
    def video_seconds(self) -> float:
        """Seconds of video on the received timeline (frames placed / fps)."""
        return self._frames_placed / self.fps

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio on the received timeline."""
        return self._samples / self.sample_rate

    def arrival_of(self, kind: str, received_s: float) -> float | None:
        """Monotonic arrival time of the `kind` frame that carries received time `received_s` (None if none does)."""
        frames = self.audio_frames if kind == "audio" else self.video_frames
        length = AUDIO_FRAME_SAMPLES / AUDIO_RATE if kind == "audio" else 1 / self.fps  # seconds per frame
        for frame in frames:
            if frame.pts <= received_s + 1e-9 < frame.pts + length:
                return frame.arrival
        return None

    def nearest_pts(self, kind: str, arrival: float) -> float | None:
        """The pts (s) of the `kind` frame that arrived nearest to monotonic time `arrival` (None if none came)."""
        frames = self.audio_frames if kind == "audio" else self.video_frames
        if not frames:
            return None
        return min(frames, key=lambda frame: abs(frame.arrival - arrival)).pts

    # --- reading -------------------------------------------------------------------------------------------------

    async def _read(self, track: MediaStreamTrack) -> None:
        """Own one track: time each frame on arrival, hand its processing to the worker."""
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return  # the track ended: the connection closed
                arrival = time.monotonic()
                pts = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                if track.kind == "audio":
                    self.audio_frames.append(FrameTiming(pts, arrival))
                    self.first_audio_at = self.first_audio_at or arrival
                    self._submit(self._take_audio, frame, arrival)
                else:
                    self.video_frames.append(FrameTiming(pts, arrival))
                    self.first_video_at = self.first_video_at or arrival
                    self._submit(self._take_video, frame, pts)
                if (self.first_audio_at or "audio" not in self._kinds) and (
                    self.first_video_at or "video" not in self._kinds
                ):
                    self.media_arrived.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: recording the %s track failed", self.session_id, track.kind)

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        """Queue work for the worker thread; jobs run one at a time, in order."""
        self._worker.submit(fn, *args).add_done_callback(self._log_failure)

    def _log_failure(self, job: Future[None]) -> None:
        if not job.cancelled() and job.exception() is not None:
            log.error("session %s: recording a frame failed", self.session_id, exc_info=job.exception())

    # --- the worker thread ---------------------------------------------------------------------------------------

    def _take_audio(self, frame: AudioFrame, arrival: float) -> None:
        """Place one decoded audio frame by its pts (silence for any gap before it) and resample it."""
        pcm = frame.to_ndarray()  # s16: [1, samples · channels] interleaved, or [channels, samples] planar
        channels = len(frame.layout.channels)
        mono = (pcm[0, ::channels] if pcm.shape[0] == 1 else pcm[0]).astype(np.float32)
        if frame.format.name.startswith("s16"):
            mono /= 32768.0
        if frame.sample_rate != AUDIO_RATE:  # aiortc decodes Opus at 48 kHz
            raise ValueError(f"expected {AUDIO_RATE} Hz audio from the Opus decoder, got {frame.sample_rate} Hz")
        start = self._next_audio_pts if frame.pts is None else round(float(frame.pts * frame.time_base) * AUDIO_RATE)
        if start > self._next_audio_pts:  # packets lost: their time is silence
            gap = start - self._next_audio_pts
            self.lost_audio_seconds += gap / AUDIO_RATE
            self._push_48k(np.zeros(gap, dtype=np.float32))
        elif start < self._next_audio_pts:  # overlaps what is placed already: keep only the new part
            mono = mono[self._next_audio_pts - start :]
        self._push_48k(mono)
        if self.first_sound_at is None and len(mono):
            rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
            if 20 * math.log10(max(rms, 1e-12)) > ENERGY_FLOOR_DBFS:
                self.first_sound_at = arrival

    def _push_48k(self, samples: np.ndarray) -> None:
        self._next_audio_pts += len(samples)
        self._pending_48k = np.concatenate([self._pending_48k, samples])
        blocks = len(self._pending_48k) // AUDIO_FRAME_SAMPLES
        if not blocks:
            return
        out = [
            self._resampler.process(self._pending_48k[i * AUDIO_FRAME_SAMPLES : (i + 1) * AUDIO_FRAME_SAMPLES])
            for i in range(blocks)
        ]
        self._pending_48k = self._pending_48k[blocks * AUDIO_FRAME_SAMPLES :]
        resampled = np.concatenate(out)
        if self._skip_samples:  # the resampler's delay: the first output samples precede received time 0
            skipped = min(self._skip_samples, len(resampled))
            resampled, self._skip_samples = resampled[skipped:], self._skip_samples - skipped
        self._add_audio(resampled)

    def _add_audio(self, samples: np.ndarray) -> None:
        self._audio_blocks.append(samples)
        self._samples += len(samples)
        if self._writer is not None:
            self._writer.write(np.zeros((0, self.height, self.width, 3), dtype=np.uint8), samples)

    def _take_video(self, frame: VideoFrame, pts: float) -> None:
        """Place one decoded video frame at frame index round(pts · fps), repeating the last one over any gap."""
        if (frame.width, frame.height) != (self.width, self.height):
            frame = frame.reformat(width=self.width, height=self.height)
        rgb = frame.to_ndarray(format="rgb24")
        self.brightness.append((pts, float(rgb.mean()) / 255))
        index = round(pts * self.fps)
        if index < self._frames_placed:
            return  # a late duplicate: its place is taken
        filler = self._last_frame if self._last_frame is not None else np.zeros_like(rgb)
        for _ in range(index - self._frames_placed):
            self._place_frame(filler)
        self._place_frame(rgb)

    def _place_frame(self, rgb: np.ndarray) -> None:
        self._last_frame = rgb
        self._frames_placed += 1
        if self._writer is None:
            return
        self._frames.append(rgb)
        if len(self._frames) >= VIDEO_BATCH_FRAMES:
            self._flush_frames()

    def _flush_frames(self) -> None:
        if self._frames and self._writer is not None:
            self._writer.write(np.stack(self._frames), np.zeros(0, dtype=np.float32))
        self._frames = []

    def _finish(self) -> None:
        """Pad the shorter track to the longer one (whole video frames) and close the MP4."""
        if self._pending_48k.size:  # the last partial block: pad it to a whole one
            self._push_48k(np.zeros(AUDIO_FRAME_SAMPLES - len(self._pending_48k), dtype=np.float32))
        frames = math.ceil(max(self.audio_seconds, self.video_seconds) * self.fps - 1e-6)
        if self._last_frame is not None:
            while self._frames_placed < frames:
                self._place_frame(self._last_frame)
        target_samples = round(self._frames_placed * self.sample_rate / self.fps)
        if self._samples < target_samples:
            self._add_audio(np.zeros(target_samples - self._samples, dtype=np.float32))
        self._flush_frames()
        if self._writer is not None:
            self._writer.close()
