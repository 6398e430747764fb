"""Reference files of the world: 16-bit mono WAV voices and PNG avatar images (read back with ``media_io``)."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np

__all__ = ["write_png", "write_wav"]


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Mono float32 ``audio`` [samples] in [-1, 1] at ``sample_rate`` Hz → 16-bit PCM WAV."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())


def write_png(path: str | Path, image: np.ndarray) -> None:
    """RGB ``image`` [H, W, 3] uint8 → PNG."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image, dtype=np.uint8), format="rgb24")
    data = b"".join(bytes(packet) for packet in codec.encode(frame) + codec.encode(None))
    Path(path).write_bytes(data)
