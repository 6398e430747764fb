"""Media I/O through real PyAV files, no mocks: audio and image loading, and the chunked MP4 writer."""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from sonate.models.errors import SonateInputError
from sonate.models.media_io import load_audio, load_image
from sonate.streamer.media.mp4 import Mp4Writer, write_mp4

TONE_HZ = 440.0


def sine(seconds: float, sample_rate: int, hz: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
    """A sine of ``seconds`` at ``sample_rate`` Hz: [samples] float32."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(pcm: np.ndarray, sample_rate: int) -> float:
    """The frequency (Hz) of the strongest FFT bin of ``pcm``."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    return float(np.argmax(spectrum)) * sample_rate / pcm.shape[0]


def write_audio_file(path: Path, fmt: str, codec: str, sample_rate: int, pcm: np.ndarray) -> None:
    """Encode ``pcm`` [channels, samples] float32 with PyAV (which converts to the codec's sample format)."""
    layout = "mono" if pcm.shape[0] == 1 else "stereo"
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        for start in range(0, pcm.shape[1], 1000):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + 1000]), format="fltp", layout=layout
            )
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def encode_image(rgb: np.ndarray, codec: str) -> bytes:
    """One picture [H, W, 3] uint8 encoded as a PNG (``png``) or JPEG (``mjpeg``) file's bytes."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height = rgb.shape[1], rgb.shape[0]
    context.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    context.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=context.pix_fmt)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])


@pytest.fixture
def wav_16k(tmp_path: Path) -> Path:
    path = tmp_path / "tone.wav"
    write_audio_file(path, "wav", "pcm_s16le", 16000, sine(1.0, 16000)[None])
    return path


# --- load_audio --------------------------------------------------------------------------------------


def test_wav_length_is_exact_and_resampler_flushes(wav_16k: Path) -> None:
    same = load_audio(wav_16k, 16000)
    assert same.shape == (16000,) and same.dtype == np.float32
    up = load_audio(wav_16k, 48000)
    assert abs(up.shape[0] - 48000) <= 480
    assert peak_hz(up, 48000) == pytest.approx(TONE_HZ, abs=2)
    assert np.abs(up[-100:]).max() > 0.3  # the tail is there, not zeros lost in the resampler


@pytest.mark.parametrize(
    ("fmt", "codec", "rate"),
    [("wav", "pcm_s16le", 16000), ("flac", "flac", 44100), ("ogg", "libopus", 48000), ("mp3", "libmp3lame", 44100)],
)
def test_formats_load_resampled_with_the_tone(tmp_path: Path, fmt: str, codec: str, rate: int) -> None:
    path = tmp_path / f"tone.{fmt}"
    write_audio_file(path, fmt, codec, rate, sine(1.0, rate)[None])
    pcm = load_audio(path, 22050)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(pcm.shape[0] - 22050) <= 0.02 * 22050
    assert peak_hz(pcm, 22050) == pytest.approx(TONE_HZ, abs=2)
    assert 0.4 < np.abs(pcm).max() <= 1.0


def test_stereo_mixes_to_mono_without_gain(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    left = sine(1.0, 16000, amplitude=0.9)
    write_audio_file(path, "flac", "flac", 16000, np.stack([left, left]))
    pcm = load_audio(path, 16000)
    assert pcm.shape == (16000,)
    np.testing.assert_allclose(pcm, left, atol=1e-3)  # the mean of equal channels is the channel: no clipping


def test_bytes_file_object_and_max_seconds(wav_16k: Path) -> None:
    data = wav_16k.read_bytes()
    assert load_audio(data, 16000).shape == (16000,)
    with wav_16k.open("rb") as f:
        assert load_audio(f, 16000).shape == (16000,)
    assert load_audio(io.BytesIO(data), 8000, max_seconds=0.25).shape == (2000,)


def test_bad_audio_inputs_raise_input_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    png = tmp_path / "picture.png"
    png.write_bytes(encode_image(np.zeros((16, 16, 3), np.uint8), "png"))
    silent_header = tmp_path / "nothing.wav"
    with wave.open(str(silent_header), "wb") as w:  # a valid WAV header with zero samples
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    cases = [
        (tmp_path / "missing.wav", "not found"),
        (empty, "empty"),
        (b"\x00garbage, not a media file\xff" * 50, "cannot read"),
        (b"", "empty"),
        (png, "no audio stream"),
        (silent_header, "no audio samples"),
    ]
    for source, message in cases:
        with pytest.raises(SonateInputError, match=message):
            load_audio(source, 16000)
    with pytest.raises(SonateInputError, match="sample_rate"):
        load_audio(png, 0)


# --- load_image --------------------------------------------------------------------------------------

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (20, 40, 210)


def landscape_picture() -> np.ndarray:
    """A 160x100 picture: blue side margins around a centre square, red over green. [100, 160, 3] uint8."""
    rgb = np.empty((100, 160, 3), np.uint8)
    rgb[:] = BLUE
    rgb[:50, 30:130] = RED
    rgb[50:, 30:130] = GREEN
    return rgb


@pytest.mark.parametrize(("codec", "tolerance"), [("png", 2), ("mjpeg", 20)])
def test_image_is_center_cropped_resized_rgb(tmp_path: Path, codec: str, tolerance: int) -> None:
    data = encode_image(landscape_picture(), codec)
    path = tmp_path / ("avatar.png" if codec == "png" else "avatar.jpg")
    path.write_bytes(data)
    for source in (path, data, io.BytesIO(data)):
        image = load_image(source, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        # Interior rows only: the red/green edge is blurred by resizing and by JPEG's chroma subsampling.
        assert np.abs(image[4:26].astype(int) - RED).max() <= tolerance
        assert np.abs(image[38:60].astype(int) - GREEN).max() <= tolerance


def test_bad_images_raise_input_error(tmp_path: Path, wav_16k: Path) -> None:
    for source in (tmp_path / "missing.png", b"\x89PNG but not really" * 10, wav_16k):
        with pytest.raises(SonateInputError):
            load_image(source, 64)


# --- Mp4Writer ---------------------------------------------------------------------------------------

FPS, MP4_RATE, SIZE = 25, 16000, 128
CHUNKS, FRAMES_PER_CHUNK, FLASH_FRAME = 10, 8, 37
CHUNK_SAMPLES = FRAMES_PER_CHUNK * MP4_RATE // FPS  # 0.32 s


def test_mp4_written_chunk_by_chunk(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    n_frames = CHUNKS * FRAMES_PER_CHUNK
    frames = np.full((n_frames, SIZE, SIZE, 3), 60, np.uint8)
    frames[FLASH_FRAME] = 255
    audio = sine(n_frames / FPS, MP4_RATE, hz=1000.0)
    with Mp4Writer(path, fps=FPS, sample_rate=MP4_RATE, width=SIZE, height=SIZE) as writer:
        for k in range(CHUNKS):
            writer.write(
                frames[k * FRAMES_PER_CHUNK : (k + 1) * FRAMES_PER_CHUNK],
                audio[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES],
            )
    writer.close()  # a second close is a no-op

    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, sound.codec_context.name) == ("h264", "aac")
        video_seconds = float(video.duration * video.time_base)
        audio_seconds = float(sound.duration * sound.time_base)
        brightness = np.array([f.to_ndarray(format="rgb24").mean() for f in container.decode(video)])
    assert brightness.shape == (n_frames,)
    assert video_seconds == pytest.approx(n_frames / FPS, abs=1 / FPS)
    assert abs(audio_seconds - video_seconds) <= 1 / FPS
    assert int(np.argmax(brightness)) == FLASH_FRAME
    assert brightness[FLASH_FRAME] > 200 and np.delete(brightness, FLASH_FRAME).max() < 100

    pcm = load_audio(path, MP4_RATE)  # the audio track of a video, through the loader
    assert abs(pcm.shape[0] - audio.shape[0]) <= MP4_RATE // FPS
    assert peak_hz(pcm, MP4_RATE) == pytest.approx(1000.0, abs=2)
    window = MP4_RATE // 50  # 20 ms
    rms = np.sqrt((pcm[: pcm.shape[0] // window * window].reshape(-1, window) ** 2).mean(axis=1))
    steady = rms[2:-2]  # past the encoder's start-up and the padded last frame
    assert np.abs(steady / steady.mean() - 1).max() < 0.2  # no gap or dip at any chunk boundary


def test_mp4_uneven_audio_chunks_are_gap_free(tmp_path: Path) -> None:
    """Chunks whose audio is not a multiple of the AAC frame (1024 samples) still join seamlessly."""
    rate, n_frames = 44100, 50
    audio = sine(n_frames / FPS, rate)
    frames = np.zeros((n_frames, 64, 96, 3), np.uint8)
    cuts = [0, 700, 5000, 5001, 33333, 60000, audio.shape[0]]
    frame_cuts = [0, 5, 10, 10, 30, 40, n_frames]
    with Mp4Writer(tmp_path / "uneven.mp4", fps=FPS, sample_rate=rate, width=96, height=64) as writer:
        for i in range(len(cuts) - 1):
            writer.write(frames[frame_cuts[i] : frame_cuts[i + 1]], audio[cuts[i] : cuts[i + 1]])
    assert writer.samples_written == audio.shape[0] and writer.frames_written == n_frames
    pcm = load_audio(tmp_path / "uneven.mp4", rate)
    assert pcm.shape[0] >= audio.shape[0]
    np.testing.assert_allclose(pcm[2048 : audio.shape[0] - 2048], audio[2048:-2048], atol=0.05)


def test_write_mp4_whole_clip_and_bad_input(tmp_path: Path) -> None:
    frames = np.zeros((25, 32, 32, 3), np.uint8)
    write_mp4(tmp_path / "whole.mp4", frames, sine(1.0, 24000), fps=FPS, sample_rate=24000)
    with av.open(str(tmp_path / "whole.mp4")) as container:
        assert container.streams.video[0].frames == 25
        assert container.streams.audio[0].sample_rate == 24000
    with pytest.raises(SonateInputError, match="AAC"):
        Mp4Writer(tmp_path / "x.mp4", fps=FPS, sample_rate=12345, width=32, height=32)
    with pytest.raises(SonateInputError, match="even"):
        Mp4Writer(tmp_path / "x.mp4", fps=FPS, sample_rate=16000, width=33, height=32)
    with pytest.raises(SonateInputError, match="cannot create"):
        Mp4Writer(tmp_path / "no" / "such" / "dir.mp4", fps=FPS, sample_rate=16000, width=32, height=32)
    with Mp4Writer(tmp_path / "y.mp4", fps=FPS, sample_rate=16000, width=32, height=32) as writer:
        with pytest.raises(SonateInputError, match="frames must be"):
            writer.write(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(1280, np.float32))
        with pytest.raises(SonateInputError, match="mono"):
            writer.write(frames[:2], np.zeros((2, 1280), np.float32))
    with pytest.raises(SonateInputError, match="closed"):
        writer.write(frames[:2], np.zeros(1280, np.float32))
