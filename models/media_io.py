"""Read conditioning inputs (a reference voice clip, a reference avatar image) through PyAV.

Anything FFmpeg can demux and decode is accepted: a path, raw ``bytes`` (an HTTP upload) or a binary
file-like object. Every failure a user can cause — a missing file, garbage bytes, an image given where
audio is expected — raises :class:`SonateInputError` with a message that says what to send instead.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from sonate.models.errors import SonateInputError

MediaSource = str | Path | bytes | bytearray | memoryview | BinaryIO

__all__ = ["MediaSource", "load_audio", "load_image", "resample"]


def _describe(source: MediaSource) -> str:
    """A short name for the source, for error messages."""
    if isinstance(source, str | Path):
        return f"'{source}'"
    if isinstance(source, bytes | bytearray | memoryview):
        return f"the uploaded data ({len(source)} bytes)"
    return f"'{getattr(source, 'name', 'the uploaded file')}'"


@contextmanager
def _open_input(source: MediaSource, kind: str) -> Iterator[av.container.InputContainer]:
    """Open ``source`` for demuxing, turning every way it can fail into a SonateInputError."""
    what = _describe(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise SonateInputError(f"{kind} file {what} not found; pass the path of an existing file")
        if path.stat().st_size == 0:
            raise SonateInputError(f"{kind} file {what} is empty; pass a non-empty {kind} file")
        target: str | BinaryIO = str(path)
    elif isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise SonateInputError(f"the uploaded {kind} is empty; send the file's contents")
        target = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        target = source
    else:
        raise SonateInputError(
            f"cannot read {kind} from a {type(source).__name__}; pass a path, bytes or a binary file object"
        )
    try:
        container = av.open(target, mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SonateInputError(f"cannot read {what} as {kind}: {exc}; pass a {kind} file FFmpeg can decode") from exc
    try:
        yield container
    except av.FFmpegError as exc:
        raise SonateInputError(f"{what} is damaged and cannot be decoded as {kind}: {exc}") from exc
    finally:
        container.close()


def load_audio(source: MediaSource, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream of ``source`` to mono float32 in [-1, 1] at ``sample_rate`` Hz.

    ``source`` is a path, ``bytes`` or a binary file-like object in any format FFmpeg reads (WAV, FLAC,
    MP3, OGG, the audio track of a video, ...). The rate is converted by ``av.AudioResampler``
    (libswresample), flushed at the end so no trailing samples are lost; channels are then averaged to mono
    (libswresample's own downmix adds +3 dB for stereo and would clip a loud clip).
    ``max_seconds`` (seconds), when given, keeps only the clip's first ``max_seconds``.
    Returns ``[samples]`` float32.
    """
    if sample_rate <= 0:
        raise SonateInputError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    if max_seconds is not None and max_seconds <= 0:
        raise SonateInputError(f"max_seconds must be positive (seconds), got {max_seconds}")
    max_samples = None if max_seconds is None else round(max_seconds * sample_rate)
    what = _describe(source)

    with _open_input(source, "audio") as container:
        if not container.streams.audio:
            raise SonateInputError(f"{what} has no audio stream; pass a WAV, FLAC, MP3, OGG or a video with sound")
        stream = container.streams.audio[0]
        # Planar float at the target rate, keeping the input's channels: [channels, samples] per frame.
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        pieces: list[np.ndarray] = []  # each [samples] float32
        n_samples = 0

        def take(frames: list[av.AudioFrame]) -> None:
            nonlocal n_samples
            for frame in frames:
                pcm = frame.to_ndarray().mean(axis=0, dtype=np.float32)  # [channels, samples] -> [samples]
                pieces.append(pcm)
                n_samples += pcm.shape[0]

        try:
            for frame in container.decode(stream):
                take(resampler.resample(frame))
                if max_samples is not None and n_samples >= max_samples:
                    break
            take(resampler.resample(None))  # flush the samples libswresample still holds
        except ValueError as exc:  # the resampler refuses a stream whose format changes midway
            raise SonateInputError(f"cannot decode the audio of {what}: {exc}") from exc

    if n_samples == 0:
        raise SonateInputError(f"{what} contains no audio samples; pass a clip that is not empty")
    audio = np.concatenate(pieces).astype(np.float32, copy=False)
    if max_samples is not None:
        audio = audio[:max_samples]
    return np.clip(np.nan_to_num(audio), -1.0, 1.0)


def load_image(source: MediaSource, size: int) -> np.ndarray:
    """Decode an image (PNG, JPEG, ... or the first frame of a video) to RGB ``[size, size, 3]`` uint8.

    The picture is center-cropped to a square on its shorter side, then resized to ``size`` pixels with a
    bicubic filter. An alpha channel is dropped. ``source`` is a path, ``bytes`` or a binary file-like object.
    """
    if size <= 0:
        raise SonateInputError(f"size must be a positive number of pixels, got {size}")
    what = _describe(source)
    with _open_input(source, "image") as container:
        if not container.streams.video:
            raise SonateInputError(f"{what} holds no picture; pass a PNG or JPEG image")
        frame = next(container.decode(container.streams.video[0]), None)
        if frame is None:
            raise SonateInputError(f"{what} holds no decodable picture; pass a PNG or JPEG image")
        rgb = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8

    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    if side == size:
        return square
    resized = av.VideoFrame.from_ndarray(square, format="rgb24").reformat(
        width=size, height=size, format="rgb24", interpolation="BICUBIC"
    )
    return resized.to_ndarray()


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 ``wave`` [samples] from ``from_rate`` to ``to_rate`` Hz with libswresample."""
    if from_rate == to_rate:
        return wave.astype(np.float32, copy=False)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave, dtype=np.float32)[None], format="flt", layout="mono")
    frame.sample_rate = from_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)
