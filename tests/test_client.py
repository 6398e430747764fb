"""The Python client, `sonate say` and `sonate bench e2e` against the real server (small random model), no mocks."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import urllib.parse
from pathlib import Path

import av
import numpy as np
import pytest

from sonate.clients.client import ClientOptions, ClientSession, SonateClient, SonateClientError
from sonate.clients.latency import MediaReference, locate
from sonate.models.checkpoint import random_model, save_pretrained
from sonate.streamer.bench.e2e import SENTENCES, add_bench_e2e_parser
from sonate.streamer.cli.main import main as sonate_main
from sonate.streamer.media.playout import TICK
from tests.conftest import small_config
from tests.test_server import TEXT, running_server, wav_bytes

SAMPLE_RATE = 16000  # Hz: the small model's rate


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mp4_durations(path: Path) -> tuple[float, float, int]:
    """(video seconds, audio seconds, fps) of an MP4: decoded frames / fps, and the audio track's duration.

    The audio is timed by its track (which trims the encoder's priming and padding): decoded AAC comes in whole
    frames of 1024 samples, 64 ms at 16 kHz.
    """
    with av.open(str(path)) as container:
        fps = int(container.streams.video[0].average_rate)
        audio = container.streams.audio[0]
        audio_s = float(audio.duration * audio.time_base)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert audio_s <= samples / rate < audio_s + 2048 / rate  # at most the priming and one frame of padding more
    return frames / fps, audio_s, fps


# --- fast: locating an instant of the media clock in received audio ----------------------------------------------


def test_an_instant_is_found_in_received_audio_by_its_content() -> None:
    rng = np.random.default_rng(0)
    media = (0.3 * rng.standard_normal(4 * SAMPLE_RATE)).astype(np.float32)  # 4 s of a session's audio
    reference = MediaReference(SAMPLE_RATE)
    tick = round(SAMPLE_RATE * TICK)
    for i in range(0, len(media), tick):
        if i // tick != 30:  # one tick never arrived over the websocket
            reference.add(i / SAMPLE_RATE, media[i : i + tick], arrival=100.0 + i / SAMPLE_RATE)
    assert reference.window(0.58, 0.64)[:tick].any() and not reference.window(0.60, 0.62).any()
    # received: joined 0.73 s into the media, a 0.1 s hold (silence) at received 1.0 s, some noise
    joined, hold = round(0.73 * SAMPLE_RATE), round(0.1 * SAMPLE_RATE)
    before_hold = media[joined : joined + SAMPLE_RATE]
    received = np.concatenate([before_hold, np.zeros(hold, np.float32), media[joined + SAMPLE_RATE :]])
    received = received + (0.03 * rng.standard_normal(len(received))).astype(np.float32)
    assert locate(reference, 1.2, received, guess_s=0.3) == pytest.approx(1.2 - 0.73, abs=1 / SAMPLE_RATE)
    assert locate(reference, 2.5, received, guess_s=1.6) == pytest.approx(2.5 - 0.73 + 0.1, abs=1 / SAMPLE_RATE)
    assert locate(reference, 2.5, received, guess_s=0.5) is None  # too far from the guess: not found
    assert reference.arrival_at(1.2) == pytest.approx(101.2)
    silent = MediaReference(SAMPLE_RATE)
    silent.add(1.2, np.zeros(tick, np.float32), 0.0)
    assert locate(silent, 1.2, received, guess_s=0.5) is None  # nothing to match


def test_bad_server_urls_are_refused_before_any_request() -> None:
    for url in ("localhost:8000", "ftp://host/", "http://"):
        with pytest.raises(SonateClientError, match="http://host:port"):
            SonateClient(url)


# --- slow: against the real server ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_session_streams_text_and_records_an_mp4_whose_tracks_match(tmp_path: Path) -> None:
    out = tmp_path / "reply.mp4"
    with running_server() as served:
        client = SonateClient(served.url)
        voice_id = await client.upload_voice(wav_bytes(1.0))
        info = await client.create_session(voice_id=voice_id, instruction="a calm voice", seed=3)
        whep_path = urllib.parse.urlsplit(info.whep_url).path  # (the URL's query carries the session's token)
        assert info.voice_id == voice_id and whep_path.endswith(f"/v1/sessions/{info.session_id}/whep")
        seen: list[str] = []
        async with ClientSession(client, info, ClientOptions(record_to=out, reference=True)) as session:
            session.on_event(lambda event: seen.append(event.type))
            assert session.ready is not None and session.ready["fps"] == 25
            assert session.recorder is not None
            await asyncio.wait_for(session.recorder.media_arrived.wait(), 10)
            pieces = await session.stream_text(TEXT + " ", words_per_second=30)
            await session.flush()
            done = await session.wait_for("speech.done", lambda e: e["text_end"] >= len(TEXT), timeout=20)
            described = await client.describe_session(info.session_id)
            assert described["webrtc_viewers"] == 1 and described["websockets"] == 1
            await asyncio.sleep(0.3)
        assert (await client.describe_session(info.session_id))["webrtc_viewers"] == 0  # the viewer was deleted
        await client.delete_session(info.session_id)
        with pytest.raises(SonateClientError) as caught:
            await client.delete_session(info.session_id)
        assert caught.value.status == 404 and caught.value.code == "session_not_found"

    assert [p.text for p in pieces] == [word + " " for word in TEXT.split(" ")]
    assert pieces[0].text_start == 0 and all(a.text_end == b.text_start for a, b in itertools.pairwise(pieces))
    assert seen.index("speech.started") < seen.index("speech.done")
    (latency,) = session.speech_latencies()
    assert latency.text_sent_at == pieces[0].sent_at
    assert latency.received_s is not None, "the first phoneme was not found in the received audio"
    assert latency.started_at > latency.text_sent_at and 0 < latency.ttfa_ms < 5000 and 0 < latency.ttfv_ms < 5000
    # the file: both tracks last as long, within a frame, and hold the speech
    video_s, audio_s, fps = mp4_durations(out)
    assert fps == 25 and abs(video_s - audio_s) <= 1 / fps, (video_s, audio_s)
    assert video_s >= float(done["media_time"]) - float(latency.media_time) + 0.3
    assert session.recorder.audio_seconds == pytest.approx(session.recorder.video_seconds, abs=1 / fps)


@pytest.mark.slow
def test_say_writes_an_mp4_and_prints_timings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reply.mp4"
    with running_server() as served:
        sonate_main(
            ["say", "--server", served.url, "Hello there, how are you?", "--out", str(out), "--words-per-second", "20"]
        )
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "time to first audio" in printed and "n/a" not in printed, printed
    video_s, audio_s, fps = mp4_durations(out)
    assert video_s > 1.0 and abs(video_s - audio_s) <= 1 / fps


def test_say_against_a_closed_port_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--server", f"http://127.0.0.1:{closed_port()}", "Hi", "--out", str(tmp_path / "a.mp4")],
        ["Hi", "--out", str(tmp_path / "no" / "such" / "folder.mp4")],
        ["Hi", "--out", str(tmp_path / "a.mp4"), "--voice", str(tmp_path / "missing.wav")],
    ):
        with pytest.raises(SystemExit) as caught:
            sonate_main(["say", *argv])
        assert caught.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sonate: error: "), err


@pytest.mark.slow
def test_bench_e2e_smoke_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "small"
    save_pretrained(random_model(small_config(n_layers=1)), checkpoint)
    parser = argparse.ArgumentParser(prog="sonate bench")
    add_bench_e2e_parser(parser.add_subparsers(dest="target", required=True))
    out = tmp_path / "e2e.json"
    args = parser.parse_args(["e2e", "--sessions", "1", "--seconds", "1", "--sync-seconds", "2.2",
                              "--sentence-baseline", "--checkpoint", str(checkpoint), "--json", str(out)])  # fmt: skip
    args.run(args)
    assert "ttfa ms" in capsys.readouterr().out
    result = json.loads(out.read_text())
    figures = ["ttfa_ms_p50", "ttfa_ms_p95", "ttfv_ms_p50", "ttfv_ms_p95", "av_offset_ms_p95", "underruns", "rtf"]
    missing = [key for key in figures if result.get(key) is None]
    assert not missing, (missing, result)
    assert result["sessions"] == 1 and result["utterances"] >= 1 and result["av_claps"] >= 1
    assert 0 < result["ttfa_ms_p50"] < 5000 and result["av_offset_ms_p95"] < 40
    assert {"platform", "cpu_count", "load_average"} <= set(result["machine"]) and "torch" in result["versions"]
    breakdown = result["first_audio_breakdown"]
    assert breakdown["utterances"] >= 1 and breakdown["spans"][0] == "upstream"
    for utterance in breakdown["per_utterance_ms"]:
        assert all(utterance[name] >= 0 for name in breakdown["spans"]), utterance
        assert sum(utterance[name] for name in breakdown["spans"]) == pytest.approx(utterance["ttfa"], abs=0.01)
    assert 0 < breakdown["explained_min"] <= 1 and breakdown["steady_state_batch_ms"]["euler"] > 0
    sentence = result["sentence_at_a_time"]
    assert sentence["utterances"] >= 1 and result["ttfa_ratio_sentence_over_stream"] > 0
    generation = sentence["whole_sentence_generation_ms"]  # measured per sentence spoken, after the run
    assert generation and all(text.strip() in SENTENCES and ms > 0 for text, ms in generation.items())
    assert sentence["whole_sentence_ttfa_ms_p50"] > min(generation.values())  # + the hold and the transport
    for written in ("e2e.md", "e2e-waterfall.png", "e2e-spans.png"):
        assert (tmp_path / written).stat().st_size > 1000, written
    assert "| euler |" in (tmp_path / "e2e.md").read_text()
