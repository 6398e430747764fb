"""The capacity ramp, the sweep and the plots run to completion in a smoke mode (tiny sizes, seconds) and write
their JSON, Markdown summary and plots; the Pareto front and the one-at-a-time scheduler do what they say."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sonate.models.checkpoint import random_model, save_pretrained
from sonate.models.world import WorldConfig, make_world
from sonate.streamer.bench.plots import pareto_front
from sonate.streamer.cli.main import main
from sonate.streamer.engine.engine import Engine, EngineConfig
from tests.conftest import small_config


def test_the_pareto_front_keeps_the_points_nothing_beats() -> None:
    points = [{"ttfa": 300, "wer": 0.8}, {"ttfa": 200, "wer": 0.9}, {"ttfa": 250, "wer": 0.7},
              {"ttfa": 400, "wer": 0.7}, {"ttfa": 200, "wer": 0.95}]  # fmt: skip
    assert pareto_front(points, "ttfa", "wer") == [{"ttfa": 200, "wer": 0.9}, {"ttfa": 250, "wer": 0.7}]


async def test_one_at_a_time_makes_one_chunk_per_forward_for_every_session() -> None:
    model = random_model(small_config(n_layers=1, max_rollback_chunks=4))
    async with Engine(model, EngineConfig(max_sessions=2, max_batch=1)) as engine:
        sessions = [await engine.open_session(seed=i) for i in range(2)]
        for session in sessions:
            session.add_viewer()
        deadline = asyncio.get_running_loop().time() + 60
        while engine.metrics.chunks < 8:
            assert asyncio.get_running_loop().time() < deadline, f"{engine.metrics.chunks} of 8 chunks made in 60 s"
            await asyncio.sleep(0.05)
        log = list(engine.metrics.chunk_log)
        assert all(timing.batch_size == 1 for _, timing in log)
        assert {session_id for session_id, _ in log} == {s.id for s in sessions}
        assert engine.metrics.batches == engine.metrics.chunks


@pytest.mark.slow
def test_bench_capacity_smoke_run(tmp_path: Path) -> None:
    checkpoint = tmp_path / "small"
    save_pretrained(random_model(small_config(n_layers=1)), checkpoint)
    out = tmp_path / "capacity.json"
    main(["bench", "capacity", "--max-sessions", "2", "--seconds", "1", "--checkpoint", str(checkpoint),
          "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["capacity"]) == {"continuous batching", "one at a time"}
    for mode, ramp in result["ramps"].items():
        assert [step["sessions"] for step in ramp] == list(range(1, len(ramp) + 1))
        clean = [step["sessions"] for step in ramp if step["underruns"] == 0]
        assert result["capacity"][mode] == (clean[-1] if clean and clean == list(range(1, len(clean) + 1)) else 0)
    assert (tmp_path / "capacity-ramp.png").stat().st_size > 1000
    assert "| one at a time |" in (tmp_path / "capacity.md").read_text()


@pytest.mark.slow
def test_bench_sweep_smoke_run_measures_quality_and_draws_the_pareto_front(tmp_path: Path) -> None:
    world = tmp_path / "world"
    make_world(world, WorldConfig(hours=0.01, seed=4, timbres=8, avatars=8, eval_fraction=0.25, clips_per_shard=8))
    out = tmp_path / "sweep.json"
    main(["bench", "sweep", "--checkpoint", "default", "--chunk-latents", "1,2", "--steps", "1", "--cfg", "off",
          "--sessions", "1", "--seconds", "1", "--data", str(world), "--max-clips", "1",
          "--json", str(out)])  # fmt: skip
    points = json.loads(out.read_text())["points"]
    assert [(p["chunk_ms"], p["steps"], p["cfg"], p["sessions"]) for p in points] == [(160, 1, False, 1),
                                                                                    (320, 1, False, 1)]  # fmt: skip
    for point in points:
        assert point["rtf"] > 0 and point["ttfa_ms_p50"] > 0 and -1 <= point["sync_confidence"] <= 2
    assert (tmp_path / "sweep-pareto.png").stat().st_size > 1000
    assert "| 160 | 1 | off | 1 |" in (tmp_path / "sweep.md").read_text()


def test_bench_model_draws_the_recompute_curve(tmp_path: Path) -> None:
    checkpoint = tmp_path / "small"
    save_pretrained(random_model(small_config(n_layers=1)), checkpoint)
    out = tmp_path / "model.json"
    main(["bench", "model", "--checkpoint", str(checkpoint), "--seconds", "0.7", "--steps", "1", "--threads", "1",
          "--recompute-seconds", "0.3,1", "--json", str(out)])  # fmt: skip
    assert len(json.loads(out.read_text())["recompute_curve"]) == 2
    assert (tmp_path / "model-recompute.png").stat().st_size > 1000
    assert "recompute" in (tmp_path / "model.md").read_text()


def test_the_whole_sentence_baseline_adds_the_hold_the_generation_and_the_transport() -> None:
    from sonate.clients.latency import SpeechLatency
    from sonate.streamer.bench.e2e import SessionRun, _sentence_baseline

    latency = SpeechLatency(text_start=0, media_time=1.0, text_sent_at=10.5, started_at=11.0, server_ttfa_ms=300.0,
                            websocket_at=10.85, received_s=2.0, audio_at=10.9)  # fmt: skip
    run = SessionRun("s", 1, 0, 5.0, [latency], held_s={0: 0.5}, sentences={0: "One two. "})
    speech = {"sentence_baseline": {"runs": [run], "whole_ms": {"One two. ": 700.0, "Three. ": 100.0}},
              "breakdown": {"spans_ms_p50": {"to_client": 5.0, "webrtc": 75.0}}}  # fmt: skip
    result = _sentence_baseline(speech, [200.0])
    assert result["sentence_at_a_time"]["ttfa_ms_p50"] == pytest.approx(400 + 500)  # sent → received, + the hold
    assert result["sentence_at_a_time"]["whole_sentence_ttfa_ms_p50"] == pytest.approx(500 + 700 + 80)
    assert result["ttfa_ratio_whole_sentence_over_stream"] == pytest.approx(1280 / 200)
