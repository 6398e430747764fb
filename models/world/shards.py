"""Shards: many clips in one ``.npz`` file, frames as lossless H.264, read back bit-exact.

A shard is a zip of ``.npy`` arrays that ``numpy.load`` opens (no pickle). Per-clip data is concatenated and
cut by offset arrays (clip ``i`` owns ``[offsets[i], offsets[i + 1])``):

==================  =================  ======================================================================
key                 dtype, shape       meaning
==================  =================  ======================================================================
``clip_ids``        str [C]            clip ids (``train-000123``)
``split``           str [C]            train / val / test
``timbre_ids``      str [C]            timbre of each clip (``t017``)
``avatar_ids``      str [C]            avatar of each clip (``a042``)
``text``            str [C]            the sentence as written
``words``           str [C]            the sentence as spoken (lowercase, numbers in words): WER reference
``instruction``     str [C]            "a calm, low female voice; a round face with ..."
``audio``           int16 [S]          mono PCM at ``sample_rate`` Hz; ``audio_offsets`` int64 [C+1]
``video``           uint8 [B]          per clip, a Matroska file of lossless H.264 RGB (libx264rgb, qp 0);
                                       ``video_offsets`` int64 [C+1]
``frame_offsets``   int64 [C+1]        frames per clip; cuts ``mouth``, ``blink`` and ``head``
``mouth``           float32 [F, 3]     rendered mouth: openness, width, rounding
``blink``           float32 [F]        rendered eyelid closure
``head``            float32 [F, 2]     rendered head offset (x, y), pixels
``phoneme_offsets`` int64 [C+1]        cuts the phoneme arrays
``phoneme_symbols`` str [P]            espeak-ng symbols; pauses are ``_``
``phoneme_ids``     int16 [P]          the frontend's ids (``sonate.models.frontend.phoneme_id``)
``phoneme_starts``  float64 [P]        seconds from the clip's first sample
``phoneme_ends``    float64 [P]        seconds, end exclusive
``sample_rate``     int64 []           Hz
``fps``             int64 []           frames per second
==================  =================  ======================================================================

Files are written with fixed zip timestamps, so the same clips always give the same bytes.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from sonate.models.espeak import TimedPhoneme
from sonate.models.frontend import PhonemeTimeline, phoneme_id

__all__ = ["Shard", "WorldClip", "decode_frames", "encode_frames", "write_shard"]

FRAME_CODECS = ("libx264rgb", "ffv1")  # lossless; the first one this FFmpeg build has wins
_CODEC_OPTIONS = {"libx264rgb": ({"qp": "0", "preset": "ultrafast"}, "rgb24"), "ffv1": ({}, "bgr0")}
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_TEXT_KEYS = ("clip_ids", "split", "timbre_ids", "avatar_ids", "text", "words", "instruction")


@dataclass
class WorldClip:
    """One clip of the world: speech, frames, exact phonemes, the rendered motion and its labels.

    ``audio`` float32 [samples] at ``sample_rate`` Hz, lasting exactly ``len(frames) / fps`` seconds;
    ``frames`` uint8 [N, H, W, 3] RGB; ``mouth`` [N, 3], ``blink`` [N], ``head`` [N, 2] as rendered.
    """

    id: str
    split: str
    timbre_id: str
    avatar_id: str
    text: str
    words: str
    instruction: str
    audio: np.ndarray
    frames: np.ndarray
    phonemes: list[TimedPhoneme]
    mouth: np.ndarray
    blink: np.ndarray
    head: np.ndarray
    sample_rate: int
    fps: int

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

    def timeline(self) -> PhonemeTimeline:
        """The clip's phonemes as a timeline over its whole length, lead-in pause included (the model's input)."""
        return PhonemeTimeline(list(self.phonemes), self.seconds)


def _frame_codec() -> str:
    for name in FRAME_CODECS:
        try:
            av.Codec(name, "w")
        except ValueError:
            continue
        return name
    raise RuntimeError(f"this FFmpeg build has none of the lossless encoders {FRAME_CODECS}")


def encode_frames(frames: np.ndarray, fps: int) -> bytes:
    """Frames [N, H, W, 3] uint8 → a Matroska file of lossless video (decodes to the same arrays)."""
    codec = _frame_codec()
    options, pix_fmt = _CODEC_OPTIONS[codec]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska", options={"fflags": "+bitexact"}) as container:  # no random ids
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.time_base = Fraction(1, fps)
        stream.thread_count = 1  # deterministic bytes, and the machine is shared
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pix_fmt != "rgb24":
                frame = frame.reformat(format=pix_fmt)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def decode_frames(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_frames`: [N, H, W, 3] uint8."""
    with av.open(io.BytesIO(data), "r") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames)


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def write_shard(path: str | Path, clips: list[WorldClip]) -> int:
    """Write ``clips`` to ``path`` atomically (a temporary file, then a rename); returns the file's bytes."""
    if not clips:
        raise ValueError("a shard holds at least one clip")
    sample_rates, rates = {c.sample_rate for c in clips}, {c.fps for c in clips}
    if len(sample_rates) != 1 or len(rates) != 1:
        raise ValueError("the clips of one shard share one sample rate and one frame rate")
    videos = [np.frombuffer(encode_frames(c.frames, c.fps), np.uint8) for c in clips]
    phonemes = [p for c in clips for p in c.phonemes]
    arrays: dict[str, np.ndarray] = {
        "clip_ids": np.array([c.id for c in clips]),
        "split": np.array([c.split for c in clips]),
        "timbre_ids": np.array([c.timbre_id for c in clips]),
        "avatar_ids": np.array([c.avatar_id for c in clips]),
        "text": np.array([c.text for c in clips]),
        "words": np.array([c.words for c in clips]),
        "instruction": np.array([c.instruction for c in clips]),
        "audio": np.concatenate([np.round(np.clip(c.audio, -1, 1) * 32767).astype(np.int16) for c in clips]),
        "audio_offsets": _offsets([c.audio.shape[0] for c in clips]),
        "video": np.concatenate(videos),
        "video_offsets": _offsets([v.shape[0] for v in videos]),
        "frame_offsets": _offsets([len(c.frames) for c in clips]),
        "mouth": np.concatenate([c.mouth for c in clips]).astype(np.float32),
        "blink": np.concatenate([c.blink for c in clips]).astype(np.float32),
        "head": np.concatenate([c.head for c in clips]).astype(np.float32),
        "phoneme_offsets": _offsets([len(c.phonemes) for c in clips]),
        "phoneme_symbols": np.array([p.symbol for p in phonemes] or [""])[: len(phonemes)],
        "phoneme_ids": np.array([phoneme_id(p.symbol) for p in phonemes], np.int16),
        "phoneme_starts": np.array([p.start_s for p in phonemes], np.float64),
        "phoneme_ends": np.array([p.end_s for p in phonemes], np.float64),
        "sample_rate": np.array(clips[0].sample_rate, np.int64),
        "fps": np.array(clips[0].fps, np.int64),
    }
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
    os.replace(temporary, path)
    return path.stat().st_size


class Shard:
    """A shard opened for reading; clips decode on demand (``shard[i]``, ``len(shard)``, iteration)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as data:
            self._arrays = {key: data[key] for key in data.files}
        self.clip_ids: list[str] = [str(c) for c in self._arrays["clip_ids"]]

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def index(self, clip_id: str) -> int:
        return self.clip_ids.index(clip_id)

    def audio(self, i: int) -> np.ndarray:
        """Clip ``i``'s audio, float32 [samples] in [-1, 1]."""
        a = self._arrays
        return a["audio"][a["audio_offsets"][i] : a["audio_offsets"][i + 1]].astype(np.float32) / 32767

    def frames(self, i: int) -> np.ndarray:
        """Clip ``i``'s frames, decoded: [N, H, W, 3] uint8."""
        a = self._arrays
        return decode_frames(a["video"][a["video_offsets"][i] : a["video_offsets"][i + 1]].tobytes())

    def __getitem__(self, i: int) -> WorldClip:
        a = self._arrays
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range: {self.path} holds {len(self)} clips")
        first, last = a["phoneme_offsets"][i], a["phoneme_offsets"][i + 1]
        phonemes = [
            TimedPhoneme(str(symbol), float(start), float(end))
            for symbol, start, end in zip(
                a["phoneme_symbols"][first:last],
                a["phoneme_starts"][first:last],
                a["phoneme_ends"][first:last],
                strict=True,
            )
        ]
        f0, f1 = a["frame_offsets"][i], a["frame_offsets"][i + 1]
        text = {key: str(a[key][i]) for key in _TEXT_KEYS}
        return WorldClip(
            id=text["clip_ids"],
            split=text["split"],
            timbre_id=text["timbre_ids"],
            avatar_id=text["avatar_ids"],
            text=text["text"],
            words=text["words"],
            instruction=text["instruction"],
            audio=self.audio(i),
            frames=self.frames(i),
            phonemes=phonemes,
            mouth=a["mouth"][f0:f1],
            blink=a["blink"][f0:f1],
            head=a["head"][f0:f1],
            sample_rate=int(a["sample_rate"]),
            fps=int(a["fps"]),
        )
