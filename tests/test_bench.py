"""The model benchmark returns every figure, consistently; its uncached baseline makes the same chunk."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from sonate import kernels
from sonate.models.config import SonateConfig
from sonate.models.errors import SonateInputError
from sonate.models.sampler import ChunkStream, Guidance, branch_conditioning, chunk_noise
from sonate.streamer.bench import model as bench

CPU = torch.device("cpu")


def small_config(**overrides: object) -> SonateConfig:
    return SonateConfig.preset("tiny", n_layers=1, dim=64, n_heads=2, n_kv_heads=2, window_chunks=2, **overrides)


@pytest.fixture(scope="module", params=[Guidance(2.0, 1.5), Guidance()], ids=["cfg", "no-cfg"])
def result(request: pytest.FixtureRequest) -> dict:
    return bench.bench_model(small_config(), seconds=2.5, steps=2, guidance=request.param, threads=1)


def test_every_figure_is_there_and_json_able(result: dict) -> None:
    expected = {
        "chunk_ms_p50": float, "chunk_ms_p95": float, "chunk_seconds": float, "chunks": int, "rtf": float,
        "rtf_p50": float, "cache_speedup": float, "window_chunks": int, "steps": int, "cfg": dict, "preset": str,
        "config": dict, "torch_threads": int, "tokens_per_chunk": int, "params": int, "device": str, "dtype": str,
        "kernels_backend": str, "torch_version": str, "timestamp": str, "rtf_total": float, "vocoder_ms_p50": float,
        "video_decoder_ms_p50": float,
    }  # fmt: skip
    for key, kind in expected.items():
        assert isinstance(result[key], kind), key
    assert json.loads(json.dumps(result)) == result


def test_figures_agree_with_the_run(result: dict) -> None:
    cfg = small_config()
    assert result["chunks"] == math.ceil(2.5 / cfg.chunk_seconds) == len(result["chunk_ms"])
    assert result["chunk_seconds"] == pytest.approx(cfg.chunk_seconds)
    assert result["window_chunks"] == 2 == result["speedup_context_chunks"]
    assert result["tokens_per_chunk"] == cfg.chunk_tokens
    assert result["steps"] == 2
    assert result["torch_threads"] == 1
    assert result["preset"] == "custom" and result["config"] == cfg.to_dict()
    assert result["params"] == sum(p.numel() for p in bench.random_model(cfg).parameters())
    assert (result["device"], result["dtype"], result["kernels_backend"]) == ("cpu", "float32", kernels.backend())
    assert result["cfg"]["enabled"] == (result["cfg"]["audio"] != 1.0 or result["cfg"]["video"] != 1.0)


def test_times_are_positive_and_consistent(result: dict) -> None:
    chunk_ms = result["chunk_ms"]
    assert min(chunk_ms) > 0
    assert result["vocoder_ms_p50"] > 0 and result["video_decoder_ms_p50"] > 0
    assert result["rtf_total"] > result["rtf"]
    assert min(chunk_ms) <= result["chunk_ms_p50"] <= result["chunk_ms_p95"] <= max(chunk_ms)
    media_seconds = result["chunks"] * result["chunk_seconds"]
    assert result["rtf"] == pytest.approx(sum(chunk_ms) / 1000 / media_seconds)
    assert result["rtf_p50"] == pytest.approx(result["chunk_ms_p50"] / 1000 / result["chunk_seconds"])
    assert result["cached_chunk_ms"] > 0 and result["uncached_chunk_ms"] > 0
    assert result["cache_speedup"] == pytest.approx(result["uncached_chunk_ms"] / result["cached_chunk_ms"])
    # measured 2.2–3.0 over 60 runs on the 2-core CPU, either thread count, with and without CFG
    assert result["cache_speedup"] > 1


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    bench.bench_model(small_config(), seconds=0.3, steps=1, guidance=Guidance(), warmup_chunks=0, threads=1)
    assert torch.get_num_threads() == before


def test_bad_arguments_raise() -> None:
    with pytest.raises(SonateInputError):
        bench.bench_model(small_config(), seconds=0, steps=1, guidance=Guidance())
    with pytest.raises(SonateInputError):
        bench.bench_model(small_config(), seconds=1, steps=0, guidance=Guidance())


@pytest.mark.parametrize("guidance", [Guidance(2.0, 1.5), Guidance()], ids=["cfg", "no-cfg"])
def test_uncached_baseline_makes_the_same_chunk(guidance: Guidance) -> None:
    """With one layer the window's K/V depend on nothing older, so recomputing the window reproduces the cache."""
    cfg = small_config()
    model = bench.random_model(cfg)
    cond = bench.random_conditioning(cfg, CPU, torch.float32)
    phonemes = bench.random_phonemes(cfg, 5, CPU)
    stream = ChunkStream.open_batch(model, cond, [0], guidance, steps=3)
    outs = [stream.generate(phonemes.select(c, 1, cfg)) for c in range(5)]
    rows = branch_conditioning(cfg, cond, [0], stream.branches)
    clean = tuple(torch.cat([out[i] for out in outs[2:4]], dim=1) for i in range(2))
    with torch.no_grad():
        audio, video = bench.recompute_chunk(
            model, rows, guidance, stream.schedule,
            (clean, phonemes.select(2, 2, cfg)), (chunk_noise(cfg, [0], [4]), phonemes.select(4, 1, cfg)),
        )  # fmt: skip
    torch.testing.assert_close(audio, outs[4][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(video, outs[4][1], rtol=1e-4, atol=1e-4)


def test_the_recompute_curve_times_one_chunk_per_length() -> None:
    cfg = small_config()
    with torch.no_grad():
        result = bench.bench_model(cfg, seconds=0.7, steps=1, guidance=Guidance(2.0, 1.5), threads=1,
                                   recompute_seconds=(0.3, 1.0))  # fmt: skip
    curve = result["recompute_curve"]
    assert [point["seconds_streamed"] for point in curve] == pytest.approx([cfg.chunk_seconds, 3 * cfg.chunk_seconds])
    for point in curve:
        assert point["recompute_chunk_ms"] > 0 and point["cached_chunk_ms"] == result["cached_chunk_ms"]
        assert point["ratio"] == pytest.approx(point["recompute_chunk_ms"] / result["cached_chunk_ms"])
    json.dumps(result)


def test_the_recompute_lengths_must_be_positive_seconds() -> None:
    for bad in ("5,-1", "five"):
        argv = [sys.executable, "-m", "sonate.streamer.cli.main", "bench", "model", "--recompute-seconds", bad]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "--recompute-seconds" in done.stderr
