"""The end-to-end benchmark: the real server in-process, real clients over loopback, figures as a client sees them.

`bench_e2e` starts the server (uvicorn, in a thread with its own event loop) on a free loopback port and runs
two phases against it:

1. **speech** (`--source model`): N concurrent clients (`ClientSession`: websocket + aiortc WebRTC viewer) hold a
   conversation for about S seconds each: a sentence streamed word by word at ~30 tokens/s (as an LLM sends
   it), flushed, its `speech.done` awaited, a pause, the next sentence. Client i starts i · `STAGGER_S` later
   so the turns of different sessions do not all arrive at the same instant. Per utterance it measures, on the
   client's monotonic clock, first text piece sent → the WebRTC audio frame carrying the first phoneme received
   (ttfa) and → the video frame showing it received (ttfv). The first phoneme is found in the received media by
   matching it against the session's audio from the websocket media subscription (`sonate.clients.latency`):
   energy cannot mark speech, since an idle avatar need not be silent. Underruns and the real-time factor come
   from the engine, counted over the measured span only (after a warm-up session). With `sentence_baseline` it
   runs again with each sentence sent whole once produced; then, with the server down, every sentence spoken is
   generated whole in this process and timed (`whole_sentence_ms`): sentence-at-a-time generation.
2. **sync** (always the clapper source, on a second server): N clients watch for a few seconds; flashes and beeps
   are found on the received timeline (pts) with `sonate.streamer.media.clapper` and paired: the A/V offset.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sonate.clients.client import ClientOptions, ClientSession, SonateClient
from sonate.clients.latency import SpeechLatency
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.sampler import ChunkStream, Guidance
from sonate.models.transformer import SonateModel
from sonate.streamer.bench import BAR_FORMAT, advance
from sonate.streamer.bench.breakdown import first_audio_breakdown
from sonate.streamer.bench.common import add_model_arguments, load_bench_model, preset_name, torch_threads
from sonate.streamer.bench.plots import plot_stacked_spans, plot_waterfall
from sonate.streamer.bench.report import Report, run_info, write_outputs
from sonate.streamer.engine.clip import speak_clip, speech_timeline
from sonate.streamer.engine.engine import SOURCES, Engine, EngineConfig
from sonate.streamer.engine.reference_media import session_conditioning
from sonate.streamer.media.clapper import av_offsets, beep_times, flash_times
from sonate.streamer.server.launch import serve_in_background

log = logging.getLogger(__name__)

TEXT_MODES = ("stream", "sentence")
TOKENS_PER_SECOND = 30.0  # text pieces (words) sent per second, as an LLM streams them
TURN_GAP_S = 1.0  # pause after each sentence's speech.done before the next sentence (s)
STAGGER_S = 0.7  # client i starts i times this later (s)
SYNC_SECONDS = 6.0  # seconds each client watches the clapper in the sync phase
FIRST_MEDIA_TIMEOUT_S = 15.0  # seconds for a client's first WebRTC frames
SENTENCES = (
    "Hello there, it is good to see you again, and I hope your morning went well.",
    "The weather today looks calm and mild, with a light breeze coming in from the sea.",
    "Let me walk you through the plan for this afternoon, one step at a time.",
    "First we check the numbers from last week and see where the gaps are.",
    "Then we write down three small changes that we can test before Friday.",
    "If anything looks odd, just stop me and ask, that is what I am here for.",
    "A good answer is short and clear, and it leaves room for the next question.",
    "I can also read the summary aloud while you look over the charts on screen.",
    "That sounds like a fine idea, so let us start with the first chart right away.",
    "Thank you for your patience, we are almost done with the review for today.",
)


@dataclass
class E2EConfig:
    """What the benchmark runs: `sessions` concurrent clients for about `seconds` of conversation each.

    source: the media source of the speech phase ("model", or "clapper" to leave the model out);
    tokens_per_second: words sent per second within a sentence; sync_seconds: seconds each client watches the
    clapper in the sync phase (0 skips it); warmup: run one untimed session first; threads: the engine's torch
    CPU threads (`EngineConfig.threads`); text: "stream" sends each sentence word by word as it is produced,
    "sentence" holds it until its last word is produced and sends it whole (sentence-at-a-time, as most TTS
    servers take text); sentence_baseline: after the streamed phase, run the same conversation sentence at a
    time on the same server, side by side; max_batch: `EngineConfig.max_batch` (1: one session per forward);
    steps, guidance: the sampler's (None: the model's).
    """

    sessions: int = 1
    seconds: float = 60.0
    source: str = "model"
    tokens_per_second: float = TOKENS_PER_SECOND
    sync_seconds: float = SYNC_SECONDS
    warmup: bool = True
    threads: int | None = EngineConfig.threads
    text: str = "stream"
    sentence_baseline: bool = False
    max_batch: int | None = None
    steps: int | None = None
    guidance: Guidance | None = None

    def check(self) -> None:
        if self.sessions < 1:
            raise SonateInputError(f"--sessions must be at least 1, got {self.sessions}")
        if self.seconds <= 0 or self.tokens_per_second <= 0 or self.sync_seconds < 0:
            raise SonateInputError("--seconds and --tokens-per-second must be positive, --sync-seconds not negative")
        if self.threads is not None and self.threads < 1:
            raise SonateInputError(f"--threads must be at least 1, got {self.threads}")
        if self.source not in SOURCES:
            raise SonateInputError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.text not in TEXT_MODES:
            raise SonateInputError(f"unknown text mode {self.text!r}; choose one of {', '.join(TEXT_MODES)}")
        if self.max_batch is not None and self.max_batch < 1:
            raise SonateInputError(f"--max-batch must be at least 1, got {self.max_batch}")


@dataclass
class SessionRun:
    """One client's run of the speech phase."""

    session_id: str
    turns: int
    underruns: int  # the session's playout underruns over the run (from the server, before teardown)
    media_seconds: float
    latencies: list[SpeechLatency] = field(default_factory=list)
    held_s: dict[int, float] = field(default_factory=dict)  # text start → seconds a whole sentence was held
    sentences: dict[int, str] = field(default_factory=dict)  # text start → the sentence sent there


# --- the benchmark ---------------------------------------------------------------------------------------------


def bench_e2e(model: SonateModel, config: E2EConfig, codecs: Codecs | None = None) -> dict:
    """Run both phases against `model` (and its `codecs`: default seeded random ones) and return the figures
    as a JSON-able dict (times in ms).

    The server runs in this process; the clients run in one child process, so that their WebRTC stacks do not
    compete with the engine for this interpreter's lock (remote clients would not).
    """
    config.check()
    codecs = codecs or Codecs.random(model.cfg)
    load_before = os.getloadavg()  # other work on the machine skews every figure: say how busy it was
    spawn = multiprocessing.get_context("spawn")  # a fork would copy the server's threads and locks
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as clients:
        engine_config = EngineConfig(
            max_sessions=config.sessions,
            source=config.source,
            threads=config.threads,
            max_batch=config.max_batch,
            steps=config.steps,
            guidance=config.guidance,
        )
        engine = Engine(model, engine_config, codecs)
        with serve_in_background(engine) as server:
            if config.warmup:
                warmup = E2EConfig(seconds=0.1, tokens_per_second=config.tokens_per_second, sync_seconds=0)
                clients.submit(run_conversations, server.url, warmup).result()
            speech = _measure_engine(engine, clients.submit(run_conversations, server.url, config), config.seconds)
            speech["breakdown"] = first_audio_breakdown(engine, speech)
            if config.sentence_baseline:
                sentences = replace(config, text="sentence")
                baseline = _measure_engine(
                    engine, clients.submit(run_conversations, server.url, sentences), config.seconds
                )
                speech["sentence_baseline"] = baseline
        if config.sentence_baseline:  # the server is down: nothing else competes for the cores
            sentences = sorted({s for run in speech["sentence_baseline"]["runs"] for s in run.sentences.values()})
            speech["sentence_baseline"]["whole_ms"] = whole_sentence_ms(model, codecs, sentences, config)
        sync: dict = {"av_offsets_ms": [], "av_arrival_offsets_ms": [], "sync_underruns": 0}
        if config.sync_seconds > 0:
            clapper = Engine(model, EngineConfig(max_sessions=config.sessions, source="clapper"))
            with serve_in_background(clapper) as server:
                sync = clients.submit(run_clapper_watch, server.url, config).result()
    return _report(model, config, speech, sync, load_before)


def _measure_engine(engine: Engine, clients: Future[tuple[list[SessionRun], float]], seconds: float) -> dict:
    """Wait for the clients' conversations of about `seconds` (a progress bar on stderr) and return their runs with
    the engine's and the processes' figures over that span."""
    metrics = engine.metrics
    before = (metrics.compute_seconds, metrics.media_seconds, metrics.batches, engine.underruns, _cpu_seconds(),
              _cpu_seconds(engine.compute_pid))  # fmt: skip
    started = time.monotonic()
    bar = tqdm(desc="conversations", unit="s", bar_format=BAR_FORMAT)
    while True:
        try:
            runs, clients_cpu_seconds = clients.result(timeout=1.0)
            break
        except TimeoutError:
            advance(bar, min(round(time.monotonic() - started), round(seconds)), round(seconds))
    bar.close()
    ended = time.monotonic()
    wall = ended - started
    batches = metrics.batches - before[2]
    return {
        "runs": runs,
        "started_at": started,
        "ended_at": ended,
        "wall_seconds": wall,
        "compute_seconds": metrics.compute_seconds - before[0],
        "engine_media_seconds": metrics.media_seconds - before[1],
        "batch_ms": [s * 1e3 for s in metrics.batch_seconds(batches)],
        "engine_underruns": engine.underruns - before[3],
        "server_cpu_seconds": _cpu_seconds() - before[4],
        "compute_cpu_seconds": _cpu_seconds(engine.compute_pid) - before[5],
        "clients_cpu_seconds": clients_cpu_seconds,
    }


# --- the clients (in the child process) ------------------------------------------------------------------------


def run_conversations(url: str, config: E2EConfig) -> tuple[list[SessionRun], float]:
    """The speech phase's clients: `config.sessions` conversations at once against the server at `url`;
    returns their runs and the CPU seconds the clients used."""
    started = _cpu_seconds()
    runs = asyncio.run(_conversations(url, config))
    return runs, _cpu_seconds() - started


async def _conversations(url: str, config: E2EConfig) -> list[SessionRun]:
    client = SonateClient(url)
    return list(await asyncio.gather(*(_converse(client, i, config, i * STAGGER_S) for i in range(config.sessions))))


async def _converse(client: SonateClient, index: int, config: E2EConfig, delay_s: float) -> SessionRun:
    """One client: sentences streamed word by word, each awaited until spoken, for about `config.seconds`."""
    await asyncio.sleep(delay_s)
    info = await client.create_session(seed=max(index, 0))
    try:
        async with ClientSession(client, info, ClientOptions(reference=True)) as session:
            assert session.recorder is not None
            await asyncio.wait_for(session.recorder.media_arrived.wait(), FIRST_MEDIA_TIMEOUT_S)
            start, turns, offset, held_s, sentences = time.monotonic(), 0, 0, {}, {}
            while time.monotonic() - start < config.seconds:
                sentence = SENTENCES[(max(index, 0) * 3 + turns) % len(SENTENCES)] + " "
                sentences[offset] = sentence
                if config.text == "sentence":  # the sentence is produced at the same pace, but sent whole
                    held_s[offset] = len(sentence.split()) / config.tokens_per_second
                    await asyncio.sleep(held_s[offset])
                    pieces = [await session.send_text(sentence)]
                else:
                    pieces = await session.stream_text(sentence, config.tokens_per_second)
                offset += len(sentence)
                await session.flush()
                last = await session.wait_for("input.accepted", lambda e, i=pieces[-1].id: e.get("id") == i)
                spoken_end = int(last["text_end"]) - 1  # type: ignore[call-overload]  # the trailing space
                await session.wait_for("speech.done", lambda e, end=spoken_end: e["text_end"] >= end, timeout=60)  # type: ignore[operator]
                turns += 1
                await asyncio.sleep(TURN_GAP_S)
            described = await client.describe_session(info.session_id)  # before teardown can add a hold
    finally:
        await client.delete_session(info.session_id)
    log.info("session %s: %d turns, %d underruns", info.session_id, turns, described["underruns"])
    return SessionRun(info.session_id, turns, int(described["underruns"]), float(described["media_seconds"]),
                      session.speech_latencies(), held_s, sentences)  # fmt: skip


def run_clapper_watch(url: str, config: E2EConfig) -> dict:
    """The sync phase's clients: `config.sessions` viewers of a clapper server; their A/V offsets (ms)."""
    return asyncio.run(_clapper_watch(url, config))


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) this process (or the running process `pid`, read from Linux's /proc) has
    used so far, all its threads together."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def _clapper_watch(url: str, config: E2EConfig) -> dict:
    client = SonateClient(url)
    watched = await asyncio.gather(*(_watch_clapper(client, config.sync_seconds) for _ in range(config.sessions)))
    return {
        "av_offsets_ms": [x for (offsets, _), _ in watched for x in offsets],
        "av_arrival_offsets_ms": [x for (_, arrivals), _ in watched for x in arrivals],
        "sync_underruns": sum(underruns for _, underruns in watched),
    }


async def _watch_clapper(client: SonateClient, seconds: float) -> tuple[tuple[list[float], list[float]], int]:
    """Watch a clapper session for `seconds`; returns ((pts offsets ms, arrival offsets ms), underruns)."""
    info = await client.create_session()
    try:
        async with ClientSession(client, info) as session:
            recorder = session.recorder
            assert recorder is not None
            await asyncio.wait_for(recorder.media_arrived.wait(), FIRST_MEDIA_TIMEOUT_S)
            await asyncio.sleep(seconds)
            underruns = int((await client.describe_session(info.session_id))["underruns"])
    finally:
        await client.delete_session(info.session_id)
    flashes = flash_times((pts, np.full((1, 1), round(b * 255), dtype=np.uint8)) for pts, b in recorder.brightness)
    beeps = beep_times(recorder.audio, recorder.sample_rate, 0.0)
    offsets = av_offsets(flashes, beeps)
    arrivals = []
    for flash, offset in zip(flashes, offsets, strict=True):
        audio_at, video_at = recorder.arrival_of("audio", flash + offset), recorder.arrival_of("video", flash)
        if audio_at is not None and video_at is not None:
            arrivals.append((audio_at - video_at) * 1e3)
    return ([o * 1e3 for o in offsets], arrivals), underruns


# --- the report ------------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _first_media_ms(runs: list[SessionRun], figure: str = "ttfa_ms") -> list[float]:
    """Every located utterance's `figure` (`ttfa_ms` or `ttfv_ms`), from when its first word was produced: for
    text sent sentence by sentence, the time a sentence was held counts too."""
    return [getattr(x, figure) + run.held_s.get(x.text_start, 0.0) * 1e3
            for run in runs for x in run.latencies if getattr(x, figure) is not None]  # fmt: skip


def _report(model: SonateModel, config: E2EConfig, speech: dict, sync: dict, load_before: tuple) -> dict:
    runs: list[SessionRun] = speech["runs"]
    latencies = [latency for run in runs for latency in run.latencies]
    ttfa, ttfv = _first_media_ms(runs), _first_media_ms(runs, "ttfv_ms")
    ttfa_ws = [x.ttfa_websocket_ms for x in latencies if x.ttfa_websocket_ms is not None]
    ttfa_server = [x.server_ttfa_ms for x in latencies]
    av = [abs(x) for x in sync["av_offsets_ms"]]
    underruns = sum(run.underruns for run in runs)
    session_minutes = sum(run.media_seconds for run in runs) / 60
    media, wall = speech["engine_media_seconds"], speech["wall_seconds"]
    cfg = model.cfg
    info = run_info()
    info["machine"]["load_average_before"] = list(load_before)
    return {
        "benchmark": "e2e",
        "sessions": config.sessions,
        "seconds": config.seconds,
        "source": config.source,
        "tokens_per_second": config.tokens_per_second,
        "engine_threads": config.threads,
        "text": config.text,
        "max_batch": config.max_batch,
        "turn_gap_s": TURN_GAP_S,
        "stagger_s": STAGGER_S,
        "preset": preset_name(cfg),
        "params": sum(p.numel() for p in model.parameters()),
        "chunk_seconds": cfg.chunk_seconds,
        "turns": sum(run.turns for run in runs),
        "utterances": len(latencies),
        "utterances_located": len(ttfa),
        "ttfa_ms_p50": _percentile(ttfa, 50),
        "ttfa_ms_p95": _percentile(ttfa, 95),
        "ttfa_ms_max": max(ttfa, default=None),
        "ttfv_ms_p50": _percentile(ttfv, 50),
        "ttfv_ms_p95": _percentile(ttfv, 95),
        "ttfa_websocket_ms_p50": _percentile(ttfa_ws, 50),
        "ttfa_server_ms_p50": _percentile(ttfa_server, 50),
        "ttfa_server_ms_p95": _percentile(ttfa_server, 95),
        "av_offset_ms_p50": _percentile(av, 50),
        "av_offset_ms_p95": _percentile(av, 95),
        "av_offset_ms_max": max(av, default=None),
        "av_offset_ms_mean_signed": float(np.mean(sync["av_offsets_ms"])) if av else None,
        "av_arrival_offset_ms_p50": _percentile(sync["av_arrival_offsets_ms"], 50),
        "av_claps": len(av),
        "underruns": underruns,
        "underruns_per_minute": underruns / session_minutes if session_minutes else None,
        "engine_underruns": speech["engine_underruns"],
        "sync_underruns": sync["sync_underruns"],
        "rtf": speech["compute_seconds"] / media if media else None,
        "engine_busy": speech["compute_seconds"] / wall,
        "compute_seconds": speech["compute_seconds"],
        "media_seconds": media,
        "wall_seconds": wall,
        "server_cpu_per_second": speech["server_cpu_seconds"] / wall,
        "compute_cpu_per_second": speech["compute_cpu_seconds"] / wall,
        "clients_cpu_per_second": speech["clients_cpu_seconds"] / wall,
        "batch_ms_p50": _percentile(speech["batch_ms"], 50),
        "batch_ms_p95": _percentile(speech["batch_ms"], 95),
        "first_audio_breakdown": speech["breakdown"],
        **_sentence_baseline(speech, ttfa),
        "per_session": [{**asdict(run), "latencies": [_latency_row(x) for x in run.latencies]} for run in runs],
        **info,
    }


def whole_sentence_ms(model: SonateModel, codecs: Codecs, sentences: list[str], config: E2EConfig) -> dict[str, float]:
    """Per sentence, ms from having its whole text to having its first phoneme's media ready to send, for a
    server that generates each sentence whole before sending any of it (F5-TTS's socket server does, per text
    batch): G2P, every chunk with the engine's steps and guidance, both decoders, on the engine's torch threads,
    plus the clip's lead-in before its first phoneme. The session's conditioning and prefix K/V are made before
    the clock starts, as a server keeps them per session; one untimed sentence warms up first."""
    guidance = config.guidance or Guidance.of(model.cfg)
    cond = session_conditioning(model, codecs, None, None, "")
    timings = {}
    bar = tqdm(desc="whole sentences", unit="sentences", bar_format=BAR_FORMAT)
    with torch_threads(config.threads):
        warmed = [sentences[0], *sentences] if sentences else []  # the first twice: its first timing is replaced
        for done, sentence in enumerate(warmed):
            stream = ChunkStream.open_batch(model, cond, [0], guidance, config.steps)
            started = time.perf_counter()
            clip = speak_clip(stream, codecs, speech_timeline(sentence))
            timings[sentence] = (time.perf_counter() - started + clip.speech_start_s) * 1e3
            advance(bar, done + 1, len(sentences) + 1)
    bar.close()
    return timings


def _sentence_baseline(speech: dict, streamed_ttfa: list[float]) -> dict:
    """The sentence-at-a-time phase's figures beside the streamed one's, if it ran.

    `ttfa_ms_p50`: each sentence held until its last word is produced, then sent whole; the engine still streams
    its audio out chunk by chunk (measured end to end). `whole_sentence_ttfa_ms_p50`: a server that also
    *generates* the sentence whole before sending any of it: the hold, the sentence's generation measured by
    `whole_sentence_ms`, and the streamed phase's p50 `to_client` + `webrtc` for sending its first audio.
    """
    baseline = speech.get("sentence_baseline")
    if baseline is None:
        return {}
    ttfa = _first_media_ms(baseline["runs"])
    transport = speech["breakdown"].get("spans_ms_p50", {})
    send_ms = transport.get("to_client", 0.0) + transport.get("webrtc", 0.0)
    whole = [
        run.held_s.get(x.text_start, 0.0) * 1e3 + baseline["whole_ms"][run.sentences[x.text_start]] + send_ms
        for run in baseline["runs"]
        for x in run.latencies
        if x.text_start in run.sentences
    ]
    median = float(np.median(streamed_ttfa)) if streamed_ttfa else None
    return {
        "sentence_at_a_time": {
            "utterances": len(ttfa),
            "ttfa_ms_p50": _percentile(ttfa, 50),
            "ttfa_ms_p95": _percentile(ttfa, 95),
            "underruns": sum(run.underruns for run in baseline["runs"]),
            "whole_sentence_ttfa_ms_p50": _percentile(whole, 50),
            "whole_sentence_generation_ms": baseline["whole_ms"],
        },
        "ttfa_ratio_sentence_over_stream": float(np.median(ttfa)) / median if ttfa and median else None,
        "ttfa_ratio_whole_sentence_over_stream": float(np.median(whole)) / median if whole and median else None,
    }


def _latency_row(latency: SpeechLatency) -> dict:
    return {
        "text_start": latency.text_start,
        "media_time": latency.media_time,
        "ttfa_ms": latency.ttfa_ms,
        "ttfv_ms": latency.ttfv_ms,
        "ttfa_websocket_ms": latency.ttfa_websocket_ms,
        "ttfa_server_ms": latency.server_ttfa_ms,
    }


def e2e_report(result: dict) -> Report:
    """The figures of `bench_e2e` as a readable table."""

    def ms(key: str) -> str:
        value = result[key]
        return "n/a" if value is None else f"{value:.0f}"

    machine = result["machine"]
    per_minute = result["underruns_per_minute"]
    rows = [
        ("setup", f"{result['sessions']} session(s) × ~{result['seconds']:g} s, source {result['source']}, "
                  f"preset {result['preset']} ({result['params'] / 1e6:.2f} M params), "
                  f"{result['engine_threads']} torch thread(s), text at {result['tokens_per_second']:g} words/s"),
        ("machine", f"{machine['cpu_count']} CPUs, load {machine['load_average_before'][0]:.2f} before the run, "
                    f"torch {result['versions'].get('torch')}, aiortc {result['versions'].get('aiortc')}, "
                    f"revision {result['git_revision']}"),
        ("utterances", f"{result['utterances']} ({result['utterances_located']} located in the WebRTC media)"),
        ("ttfa ms", f"p50 {ms('ttfa_ms_p50')}   p95 {ms('ttfa_ms_p95')}   max {ms('ttfa_ms_max')}   "
                    "(text sent → first phoneme's audio received over WebRTC)"),
        ("ttfv ms", f"p50 {ms('ttfv_ms_p50')}   p95 {ms('ttfv_ms_p95')}   (→ the video frame showing it received)"),
        ("ttfa elsewhere", f"websocket media p50 {ms('ttfa_websocket_ms_p50')} ms; server's own p50 "
                           f"{ms('ttfa_server_ms_p50')} ms, p95 {ms('ttfa_server_ms_p95')} ms"),
        ("underruns", f"{result['underruns']} over {result['media_seconds']:.0f} s of media made"
                      + ("" if per_minute is None else f" ({per_minute:.2f} per session-minute)")),
        ("rtf", "n/a" if result["rtf"] is None else f"{result['rtf']:.3f}  (engine compute s per media s, all "
                f"sessions; batch ms p50 {ms('batch_ms_p50')}, p95 {ms('batch_ms_p95')} for "
                f"{result['chunk_seconds'] * 1000:.0f} ms of media per session)"),
        ("engine busy", f"{result['engine_busy']:.0%} of the wall time (real time needs well below 100 %)"),
        ("cpu", f"server process {result['server_cpu_per_second']:.2f} cores, its compute process "
                f"{result['compute_cpu_per_second']:.2f}, clients "
                f"{result['clients_cpu_per_second']:.2f} cores (of {machine['cpu_count']})"),
        ("a/v offset ms", f"|offset| p50 {ms('av_offset_ms_p50')}   p95 {ms('av_offset_ms_p95')}   "
                          f"max {ms('av_offset_ms_max')}   over {result['av_claps']} claps (by pts; "
                          f"arrival: audio {ms('av_arrival_offset_ms_p50')} ms after video, p50)"),
    ]  # fmt: skip
    if result["text"] == "sentence" or result["max_batch"] is not None:
        rows.insert(1, ("modes", f"text sent {'sentence at a time' if result['text'] == 'sentence' else 'streamed'}, "
                                 f"at most {result['max_batch'] or 'every due'} session(s) per batch"))  # fmt: skip
    baseline = result.get("sentence_at_a_time")
    if baseline is not None:
        rows.append(("sentence at a time", f"ttfa p50 {baseline['ttfa_ms_p50']:.0f} ms, p95 "
                     f"{baseline['ttfa_ms_p95']:.0f} ms over {baseline['utterances']} utterances: "
                     f"{result['ttfa_ratio_sentence_over_stream']:.2f}× the streamed text's p50"))  # fmt: skip
        if baseline["whole_sentence_ttfa_ms_p50"] is not None:
            whole = (f"generated whole before sending (generation measured after the run): p50 "
                     f"{baseline['whole_sentence_ttfa_ms_p50']:.0f} ms, "
                     f"{result['ttfa_ratio_whole_sentence_over_stream']:.2f}× the streamed text's p50")  # fmt: skip
            rows.append(("whole sentence", whole))
    tables = []
    breakdown = result["first_audio_breakdown"]
    if breakdown["utterances"]:
        explained = (f"the named spans explain {breakdown['explained_mean']:.1%} of the ttfa on average (least "
                     f"{breakdown['explained_min']:.1%}) over {breakdown['utterances']} utterances")  # fmt: skip
        rows.append(("explained", explained))
        p50, mean, steady = breakdown["spans_ms_p50"], breakdown["spans_ms_mean"], breakdown["steady_state_batch_ms"]
        span_rows = [[name, f"{p50[name]:.1f}", f"{mean[name]:.1f}", f"{steady[name]:.1f}" if name in steady else ""]
                     for name in breakdown["spans"]]  # fmt: skip
        tables.append(("where the time to first audio goes (ms)",
                       ["span", "p50", "mean", "steady-state batch mean"], span_rows))  # fmt: skip
    return Report(f"sonate e2e bench — {result['timestamp']}", rows, tables)


def e2e_plots(result: dict) -> dict[str, Callable[[Path], None]]:
    """The waterfall of the median reply, and the spans of its first audio beside a steady-state batch."""
    breakdown = result["first_audio_breakdown"]
    if not breakdown["utterances"]:
        return {}
    first = {k: v for k, v in breakdown["spans_ms_p50"].items() if k != "upstream"}
    bars = {"first audio (p50 of each span)": first, "steady-state batch (mean)": breakdown["steady_state_batch_ms"]}
    return {
        "waterfall": lambda path: plot_waterfall(breakdown["waterfall"], path),
        "spans": lambda path: plot_stacked_spans(bars, path, "time to first audio vs a steady-state batch", "ms"),
    }


def add_bench_e2e_parser(bench_subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `e2e` to the `sonate bench` targets."""
    p = bench_subcommands.add_parser(
        "e2e",
        help="the real server and real WebRTC clients on loopback",
        description="Start the server in-process and N concurrent clients (websocket + aiortc WebRTC) that talk "
        "for about S seconds each; report time to first audio and video at the client, underruns, real-time "
        "factor and the A/V offset measured with the clapper source.",
    )
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of conversation per session (default 60)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--source", choices=list(SOURCES), default="model",
                   help="media source of the speech phase: 'clapper' leaves the model out (default model)")  # fmt: skip
    add_model_arguments(p)
    p.add_argument("--tokens-per-second", type=float, default=TOKENS_PER_SECOND,
                   help=f"words sent per second within a sentence (default {TOKENS_PER_SECOND:g})")  # fmt: skip
    p.add_argument("--sync-seconds", type=float, default=SYNC_SECONDS,
                   help=f"seconds of the clapper phase (A/V offset; default {SYNC_SECONDS:g}; 0 skips)")  # fmt: skip
    p.add_argument(
        "--text",
        choices=TEXT_MODES,
        default="stream",
        help="send each sentence word by word as produced, or whole once produced (default stream)",
    )
    p.add_argument(
        "--sentence-baseline",
        action="store_true",
        help="then run the same conversation with each sentence sent whole, and time each generated whole",
    )
    p.add_argument("--max-batch", type=int,
                   help="most sessions per batch (default: every session due; 1: one at a time)")  # fmt: skip
    p.add_argument("--threads", type=int, default=EngineConfig.threads,
                   help=f"the engine's torch CPU threads (default {EngineConfig.threads})")  # fmt: skip
    p.set_defaults(run=run_bench_e2e)
    return p


def run_bench_e2e(args: argparse.Namespace) -> None:
    """The `bench e2e` subcommand."""
    config = E2EConfig(args.sessions, args.seconds, args.source, args.tokens_per_second, args.sync_seconds,
                       threads=args.threads, text=args.text, sentence_baseline=args.sentence_baseline,
                       max_batch=args.max_batch)  # fmt: skip
    config.check()
    model, codecs = load_bench_model(args.checkpoint, args.preset)
    result = bench_e2e(model, config, codecs)
    write_outputs(result, e2e_report(result), args.json, e2e_plots(result))
