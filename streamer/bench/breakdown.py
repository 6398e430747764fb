"""Where the time to first audio goes, end to end: the engine's spans of each utterance
(`sonate.streamer.engine.timing`) joined with what its client measured, and the steady state of the batches.

For an utterance the client sent at `text_sent_at`, got over the websocket media at `websocket_at` and over WebRTC
at `audio_at` (its first phoneme located in the received audio), and the engine took in at `text_received_at` and
began to play at `plays_at`, the spans are `upstream` (text_sent_at → text_received_at), the engine's
(text_received_at → plays_at), `to_client` (plays_at → websocket_at: the server's sending task and the network) and
`webrtc` (websocket_at → audio_at: Opus and RTP, and the receiver's jitter buffer). The client and the server share
the host's monotonic clock in `bench e2e`, which is what makes the two ends comparable. The spans are
consecutive, so they add up to the ttfa; what no instrument covers is the engine's `other`, and the share of the
ttfa the named spans explain is 1 − other / ttfa.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sonate.streamer.engine.timing import BATCH_SPANS, FIRST_AUDIO_SPANS, ChunkTiming, FirstAudio
from sonate.streamer.media.playout import TICK

if TYPE_CHECKING:
    from sonate.clients.latency import SpeechLatency
    from sonate.streamer.bench.e2e import SessionRun
    from sonate.streamer.engine.engine import Engine

E2E_SPANS = ("upstream", *FIRST_AUDIO_SPANS, "to_client", "webrtc")
WATERFALL_SECONDS = 2.0  # media seconds of a reply the waterfall shows


def first_audio_breakdown(engine: Engine, speech: dict) -> dict:
    """The breakdown of every utterance of the runs in `speech` (`bench_e2e`'s measured phase) that both ends
    timed, its summary, a waterfall of the median one and the steady-state batch spans (all in ms)."""
    runs: list[SessionRun] = speech["runs"]
    recorded = {(b.session_id, b.text_start): b for b in engine.metrics.first_audio}
    rows = []
    for run in runs:
        for latency in run.latencies:
            breakdown = recorded.get((run.session_id, latency.text_start))
            if breakdown is not None and latency.audio_at is not None and latency.websocket_at is not None:
                rows.append((run.session_id, latency, breakdown))
    utterances = [_e2e_spans(latency, breakdown) for _, latency, breakdown in rows]
    window = [(s, t) for s, t in engine.metrics.chunk_log if speech["started_at"] <= t.sent_at <= speech["ended_at"]]
    steady = {name: float(np.mean([t.spans()[name] for _, t in window])) * 1e3 for name in BATCH_SPANS if window}
    result: dict = {
        "utterances": len(utterances),
        "spans": list(E2E_SPANS),
        "per_utterance_ms": utterances,
        "steady_state_batch_ms": steady,
        "batch_size_mean": float(np.mean([t.batch_size for _, t in window])) if window else None,
    }
    if not utterances:
        return result
    ttfa = [u["ttfa"] for u in utterances]
    explained = [1 - u["other"] / u["ttfa"] for u in utterances]
    median = int(np.argsort(ttfa)[len(ttfa) // 2])
    session_id, latency, breakdown = rows[median]
    chunks = {t.chunk: t for s, t in window if s == session_id}  # the last made of each index
    result.update(
        spans_ms_p50={name: float(np.median([u[name] for u in utterances])) for name in E2E_SPANS},
        spans_ms_mean={name: float(np.mean([u[name] for u in utterances])) for name in E2E_SPANS},
        ttfa_ms_p50=float(np.median(ttfa)),
        explained_mean=float(np.mean(explained)),
        explained_min=float(np.min(explained)),
        waterfall=_waterfall(latency, breakdown, chunks, engine.cfg.chunk_seconds),
    )
    return result


def _e2e_spans(latency: SpeechLatency, breakdown: FirstAudio) -> dict[str, float]:
    """One utterance's spans from the client's send to its receipt, and its ttfa, in ms."""
    assert latency.audio_at is not None and latency.websocket_at is not None and latency.ttfa_ms is not None
    return {
        "upstream": (breakdown.text_received_at - latency.text_sent_at) * 1e3,
        **{name: seconds * 1e3 for name, seconds in breakdown.spans.items()},
        "to_client": (latency.websocket_at - breakdown.plays_at) * 1e3,
        "webrtc": (latency.audio_at - latency.websocket_at) * 1e3,
        "ttfa": latency.ttfa_ms,
    }


def _waterfall(
    latency: SpeechLatency, breakdown: FirstAudio, chunks: dict[int, ChunkTiming], chunk_seconds: float
) -> dict:
    """Bars (span, start ms, length ms) from the reply's first text piece reaching the server: a row for its
    text, then one per chunk of its first `WATERFALL_SECONDS`, each made, buffered, then playing."""
    origin = breakdown.text_received_at
    spans = breakdown.spans

    def ms(at: float) -> float:
        return (at - origin) * 1e3

    upstream = (origin - latency.text_sent_at) * 1e3
    text_bars = [("upstream", -upstream, upstream), ("text", 0.0, spans["text"] * 1e3),
                 ("scheduler", spans["text"] * 1e3, (spans["scheduler"] + spans["g2p"]) * 1e3)]  # fmt: skip
    rows = [{"label": "text", "bars": text_bars}]
    first = int(breakdown.media_time / chunk_seconds + 1e-9)
    first_tick = int(breakdown.media_time / TICK + 1e-9) * TICK  # media time of the tick `plays_at` begins
    for index in sorted(i for i in chunks if first <= i < first + WATERFALL_SECONDS / chunk_seconds):
        timing = chunks[index]
        bars, at = [], timing.sent_at
        for name, seconds in timing.spans().items():
            bars.append((name, ms(at), seconds * 1e3))
            at += seconds
        media_start = max(index * chunk_seconds, first_tick)
        plays_at = breakdown.plays_at + media_start - first_tick  # (no hold between)
        bars.append(("buffered", ms(timing.delivered_at), ms(plays_at) - ms(timing.delivered_at)))
        bars.append(("playing", ms(plays_at), ((index + 1) * chunk_seconds - media_start) * 1e3))
        if index == first:
            assert latency.audio_at is not None and latency.websocket_at is not None
            bars.append(("to_client", ms(breakdown.plays_at), ms(latency.websocket_at) - ms(breakdown.plays_at)))
            bars.append(("webrtc", ms(latency.websocket_at), ms(latency.audio_at) - ms(latency.websocket_at)))
        rows.append({"label": f"chunk {index}", "bars": bars})
    return {"rows": rows, "first_audio_ms": breakdown.total * 1e3}
