"""Write generated audio-video to an MP4 file (H.264 + AAC), chunk by chunk or as a whole clip.

Both clocks are counted, never measured: a video frame's pts is its index in a 1/fps time base and an
audio frame's pts is its first sample's index in a 1/sample_rate time base, so they cannot drift apart.
Audio arrives in chunks of any length and is cut into frames of exactly the AAC encoder's ``frame_size``
(1024 samples); the remainder waits for the next chunk, so chunk boundaries leave no gap and no click.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from sonate.models.errors import SonateInputError

logger = logging.getLogger(__name__)

VIDEO_CODECS = ("libx264", "h264", "mpeg4")  # first one this FFmpeg build can encode wins
AUDIO_CODEC = "aac"  # FFmpeg's native AAC encoder; needs a standard MPEG-4 audio rate
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)  # Hz
X264_OPTIONS = {"preset": "veryfast", "crf": "18"}  # keeps up with real time; visually lossless

__all__ = ["Mp4Writer", "write_mp4"]


def _pick_video_codec() -> str:
    """The first encoder of VIDEO_CODECS that this FFmpeg build provides."""
    for name in VIDEO_CODECS:
        try:
            av.Codec(name, "w")
        except ValueError:  # PyAV 18 raises UnknownCodecError, a ValueError, for a codec not compiled in
            continue
        return name
    raise RuntimeError(f"this FFmpeg build has none of the video encoders {VIDEO_CODECS}; install PyAV's wheels")


class Mp4Writer:
    """An MP4 file that grows by one chunk of frames and audio per :meth:`write`.

    ``fps`` is video frames per second, ``sample_rate`` audio samples per second (Hz), ``width`` and
    ``height`` the frame size in pixels (even numbers, as yuv420p needs). Video is H.264 yuv420p (MPEG-4
    part 2 when no H.264 encoder exists), audio is mono AAC at ``sample_rate``. Use it as a context manager
    or call :meth:`close`, which flushes both encoders; the file is only complete after that.
    """

    def __init__(self, path: str | Path, *, fps: int, sample_rate: int, width: int, height: int) -> None:
        if fps <= 0:
            raise SonateInputError(f"fps must be a positive number of frames per second, got {fps}")
        if sample_rate not in AAC_SAMPLE_RATES:
            raise SonateInputError(f"AAC cannot store {sample_rate} Hz; resample to one of {AAC_SAMPLE_RATES}")
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise SonateInputError(f"frame size must be positive and even (yuv420p), got {width}x{height}")
        self.path = Path(path)
        self.fps = fps
        self.sample_rate = sample_rate
        self.width = width
        self.height = height
        self.frames_written = 0  # video frames handed to the encoder
        self.samples_written = 0  # audio samples handed to the encoder
        self._pending = np.zeros(0, dtype=np.float32)  # audio samples short of one AAC frame: [samples]
        self._closed = False

        if not self.path.parent.is_dir():  # PyAV opens the file only at the first packet: check now
            raise SonateInputError(f"cannot create {self.path}: folder {self.path.parent} does not exist")
        try:
            self._container = av.open(str(self.path), mode="w", format="mp4")
        except OSError as exc:  # PyAV's FileNotFoundError, PermissionError, ... are OSErrors too
            raise SonateInputError(f"cannot create {self.path}: {exc}; pick a writable path") from exc
        try:
            codec = _pick_video_codec()
            self._video = self._container.add_stream(
                codec, rate=fps, options=X264_OPTIONS if codec in ("libx264", "h264") else {}
            )
            self._video.width = width
            self._video.height = height
            self._video.pix_fmt = "yuv420p"
            self._video.time_base = Fraction(1, fps)
            self._video.codec_context.time_base = Fraction(1, fps)

            self._audio = self._container.add_stream(AUDIO_CODEC, rate=sample_rate, layout="mono")
            self._audio.time_base = Fraction(1, sample_rate)
            self._audio.codec_context.time_base = Fraction(1, sample_rate)
            self._audio.codec_context.open()
            self._audio_frame_size = self._audio.codec_context.frame_size or 1024  # samples per AAC frame
        except Exception:
            self._container.close()
            raise
        logger.debug("writing %s with %s + %s at %d fps, %d Hz", self.path, codec, AUDIO_CODEC, fps, sample_rate)

    def write(self, frames: np.ndarray, audio: np.ndarray) -> None:
        """Append one chunk: ``frames`` uint8 ``[N, height, width, 3]`` RGB and ``audio`` float32 ``[S]`` mono.

        Audio in [-1, 1]; either may be empty. The chunk may hold any number of samples: they are
        encoded gap-free after the previous chunk's.
        """
        if self._closed:
            raise SonateInputError(f"{self.path} is already closed; open a new Mp4Writer to write more")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise SonateInputError(
                f"frames must be [N, {self.height}, {self.width}, 3] RGB, got shape {list(frames.shape)}"
            )
        if frames.dtype != np.uint8:
            raise SonateInputError(f"frames must be uint8 (0..255), got {frames.dtype}")
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise SonateInputError(f"audio must be mono [samples], got shape {list(audio.shape)}")

        for rgb in frames:
            self._encode_video(rgb)
        self._pending = np.concatenate([self._pending, np.clip(audio.astype(np.float32), -1.0, 1.0)])
        frame_size = self._audio_frame_size
        n_full = self._pending.shape[0] // frame_size * frame_size
        for start in range(0, n_full, frame_size):
            self._encode_audio(self._pending[start : start + frame_size])
        self._pending = self._pending[n_full:]

    def close(self) -> None:
        """Encode the last partial audio frame, flush both encoders and finish the file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending.shape[0]:
                self._encode_audio(self._pending)  # AAC takes a short last frame
                self._pending = self._pending[:0]
            self._container.mux(self._video.encode(None))
            self._container.mux(self._audio.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _encode_video(self, rgb: np.ndarray) -> None:
        """Encode one frame ``[height, width, 3]`` uint8 at pts = its index (time base 1/fps)."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = self.frames_written
        frame.time_base = self._video.codec_context.time_base
        self.frames_written += 1
        self._container.mux(self._video.encode(frame))

    def _encode_audio(self, pcm: np.ndarray) -> None:
        """Encode ``[samples]`` float32 at pts = its first sample's index (time base 1/sample_rate)."""
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self.samples_written
        frame.time_base = self._audio.codec_context.time_base
        self.samples_written += pcm.shape[0]
        self._container.mux(self._audio.encode(frame))


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, *, fps: int, sample_rate: int) -> None:
    """Write a whole clip: ``frames`` uint8 ``[N, H, W, 3]`` RGB at ``fps`` frames per second and ``audio``
    float32 ``[S]`` mono at ``sample_rate`` Hz; the file's two durations agree when ``S / sample_rate == N / fps``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise SonateInputError(f"frames must be [N, H, W, 3] RGB, got shape {list(frames.shape)}")
    with Mp4Writer(path, fps=fps, sample_rate=sample_rate, width=frames.shape[2], height=frames.shape[1]) as writer:
        writer.write(frames, audio)
