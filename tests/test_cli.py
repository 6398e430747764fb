"""`sonate generate` end to end through real files, and its answers to bad input."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from sonate.models.checkpoint import random_model
from sonate.models.decoders import Codecs
from sonate.models.espeak import TimedPhoneme
from sonate.models.frontend import MAX_SPEAKERS, PHONEME_VOCAB_SIZE, IncrementalFrontend, PhonemeTimeline
from sonate.models.media_io import load_audio
from sonate.streamer.cli.main import COMMANDS, build_parser, main
from sonate.streamer.engine.clip import generate_clip, open_clip_stream, speak_clip, speech_timeline
from tests.conftest import small_config


def sonate(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the `sonate` program as a user would."""
    command = [sys.executable, "-m", "sonate.streamer.cli.main", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def write_wav(path: Path, seconds: float, rate: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        pcm = (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_png(path: Path) -> None:
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "rgb24"
        image = np.zeros((80, 96, 3), dtype=np.uint8)
        image[..., 0] = 200
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def durations(path: Path) -> tuple[float, float, str, str]:
    """(video seconds, audio seconds, video codec, audio codec) as decoded."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        fps, rate = video.average_rate, audio.rate
        codecs = video.codec_context.name, audio.codec_context.name
        frames = sum(1 for _ in container.decode(video))
    samples = load_audio(path, rate).shape[0]
    return float(frames / fps), samples / rate, *codecs


@pytest.mark.slow
def test_generate_writes_a_synchronized_mp4(tmp_path: Path) -> None:
    voice, avatar, out = tmp_path / "voice.wav", tmp_path / "face.png", tmp_path / "clips" / "hello.mp4"
    write_wav(voice, 2.0, 44100)
    write_png(avatar)
    text = "Hello there. How are you today?"
    result = sonate("generate", "--text", text, "--out", out, "--voice", voice, "--avatar", avatar, "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert "random" not in result.stderr  # the shipped default checkpoint, not the random stand-in
    video_s, audio_s, video_codec, audio_codec = durations(out)
    assert (video_codec, audio_codec) == ("h264", "aac")
    assert abs(video_s - audio_s) <= 1 / 25 + 1e-6
    frontend = IncrementalFrontend()
    frontend.push(text)
    frontend.flush()
    assert video_s >= frontend.timeline.duration_s


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "   "], "text is empty"),
        (["--text", "..."], "nothing to speak"),
        (["--text", "Hi", "--voice", "{png}"], "audio"),
        (["--text", "Hi", "--voice", "{missing}"], "not found"),
        (["--text", "Hi", "--checkpoint", "{missing}"], "not a checkpoint"),
        (["--text", "Hi", "--steps", "0"], "--steps"),
        (["--text", "[S9] Hi"], "S9"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    write_png(tmp_path / "face.png")
    args = [a.format(png=tmp_path / "face.png", missing=tmp_path / "missing") for a in args]
    result = sonate("generate", *args, "--out", tmp_path / "x.mp4")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sonate: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.mp4").exists()


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Every (sub-)subcommand under `parser` by its path of names, with the help its parent lists it with."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found[(*path, name)] = helps.get(name) or ""
                found |= subcommands(sub, (*path, name))
    return found


def test_help_explains_every_command(capsys: pytest.CaptureFixture) -> None:
    commands = subcommands(build_parser())
    assert {path[0] for path in commands} == set(COMMANDS)
    assert any(len(path) == 2 for path in commands)  # the jobs of `bench`, `data` and `train` are in
    assert [path for path, help_text in commands.items() if not help_text] == []
    for path in [(), *commands]:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])  # as the program runs it: only that command's module is imported
        assert exited.value.code == 0, path
        assert capsys.readouterr().out.startswith(" ".join(("usage: sonate", *path))), path


def test_frontend_ids_fit_the_model() -> None:
    cfg = small_config()
    assert cfg.phoneme_vocab >= PHONEME_VOCAB_SIZE and cfg.max_speakers >= MAX_SPEAKERS


def test_generation_is_deterministic_and_seeded() -> None:
    model = random_model(small_config(dim=128, n_heads=2, n_kv_heads=2))
    codecs = Codecs.random(model.cfg)
    first = generate_clip(model, codecs, "One two.", seed=3, steps=1)
    again = generate_clip(model, codecs, "One two.", seed=3, steps=1)
    other = generate_clip(model, codecs, "One two.", seed=4, steps=1)
    one_pass = generate_clip(model, codecs, "One two.", seed=3, steps=1, one_pass=True)
    assert np.array_equal(first.audio, again.audio) and np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.audio, other.audio)
    assert np.abs(first.audio - one_pass.audio).max() < 1e-4
    assert np.abs(first.frames.astype(int) - one_pass.frames.astype(int)).max() <= 1
    assert first.audio.shape[0] == first.frames.shape[0] * model.cfg.sample_rate // model.cfg.video_fps


def test_a_clip_made_to_a_length_is_the_start_of_the_whole_one() -> None:
    model = random_model(small_config(dim=128, n_heads=2, n_kv_heads=2))
    codecs, cfg = Codecs.random(model.cfg), model.cfg
    timeline = speech_timeline("One two three.")
    whole = speak_clip(open_clip_stream(model, codecs, seed=3, steps=1), codecs, timeline)
    short = speak_clip(open_clip_stream(model, codecs, seed=3, steps=1), codecs, timeline, seconds=0.52)
    assert len(whole.frames) % cfg.chunk_video_frames == 0 and whole.seconds >= timeline.duration_s + 0.3
    assert len(short.frames) == 13 and short.audio.shape[0] == 13 * cfg.sample_rate // cfg.video_fps
    assert np.array_equal(short.frames, whole.frames[:13])
    assert np.array_equal(short.audio, whole.audio[: short.audio.shape[0]])
    lead_in = PhonemeTimeline(
        [TimedPhoneme("_", 0.0, 0.2)]
        + [replace(p, start_s=p.start_s + 0.2, end_s=p.end_s + 0.2) for p in timeline.phonemes],
        timeline.duration_s + 0.2,
    )
    late = speak_clip(open_clip_stream(model, codecs, seed=3, steps=1), codecs, lead_in, seconds=0.32)
    assert whole.speech_start_s == timeline.phonemes[0].start_s
    assert late.speech_start_s == pytest.approx(whole.speech_start_s + 0.2)  # the first spoken phoneme
