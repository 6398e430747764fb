"""The model benchmark: chunk latency, real-time factor, and what the KV cache saves over recomputation.

`bench_model` streams media through `ChunkStream.generate` in-process for one sequence (random seeded
weights and inputs: speed does not depend on their values) and times every chunk. It then times the last
chunk again two ways, alternating, and compares their medians:

- cached: roll the stream back one chunk and `generate` it again (N Euler steps against the cache, then the
  clean pass that writes the cache);
- uncached: at every Euler step, recompute the prefix (`model.conditioning`) and run the one-pass
  `teacher_forward` over [prefix | the W clean chunks before it | the chunk], both CFG branches when guidance
  is on. This is what streaming servers that re-run the flow decoder over everything so far (CosyVoice-style)
  pay per chunk. It has no clean pass: without a cache there is nothing to write.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from sonate import kernels
from sonate.models.checkpoint import random_model
from sonate.models.conditioning import Conditioning
from sonate.models.config import SonateConfig
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.phases import Laps
from sonate.models.sampler import (
    ChunkStream,
    Guidance,
    branch_conditioning,
    branch_phonemes,
    chunk_noise,
    euler_integrate,
    flow_timesteps,
)
from sonate.models.teacher_forcing import teacher_forward
from sonate.models.transformer import ChunkPhonemes, SonateModel
from sonate.streamer.bench.common import SEED, preset_name, random_conditioning, random_phonemes, torch_threads
from sonate.streamer.bench.report import Report, run_info

SPEEDUP_REPEATS = 5  # timings of the last chunk per path (cached, uncached); the medians are compared
RECOMPUTE_REPEATS = 3  # timings of a recomputed chunk per length of the recompute curve (the median is kept)

T = TypeVar("T")


def bench_model(
    cfg: SonateConfig,
    seconds: float,
    steps: int,
    guidance: Guidance,
    warmup_chunks: int = 2,
    threads: int | None = None,
    model: SonateModel | None = None,
    codecs: Codecs | None = None,
    recompute_seconds: tuple[float, ...] = (),
) -> dict:
    """Stream `seconds` of media for batch 1 and return the figures as a JSON-able dict.

    `warmup_chunks` untimed chunks come first, then ceil(seconds / chunk_seconds) timed chunks. `threads` sets
    `torch.set_num_threads` for the run (restored afterwards). `model` defaults to a randomly initialised
    `SonateModel(cfg)` on the CPU in `cfg.dtype`; when given, its own config, device and dtype are used
    and `cfg` is ignored. Every chunk is also decoded to audio and frames by `codecs` (default: seeded random
    ones; their cost does not depend on the weights). Times are wall-clock (`time.perf_counter`), in ms per
    chunk; `rtf` is the model's compute seconds per media second, `rtf_total` adds the decoders.
    For each length in `recompute_seconds` (media seconds streamed), `recompute_curve` adds the cost of one chunk
    made by recomputing everything streamed so far, with no cache and no window, beside the cached chunk's.
    """
    if model is not None:
        cfg = model.cfg
    _check_arguments(cfg, seconds, steps, warmup_chunks)
    with torch_threads(threads), torch.no_grad():
        model = model or random_model(cfg)
        result = _bench(cfg, seconds, steps, guidance, warmup_chunks, model, codecs or Codecs.random(cfg))
        if recompute_seconds:
            result["recompute_curve"] = recompute_curve(model, guidance, steps, recompute_seconds,
                                                        result["cached_chunk_ms"])  # fmt: skip
        return result


def _check_arguments(cfg: SonateConfig, seconds: float, steps: int, warmup_chunks: int) -> None:
    if seconds <= 0:
        raise SonateInputError(f"bench seconds must be positive (got {seconds})")
    if steps < 1:
        raise SonateInputError(f"bench steps must be at least 1 (got {steps})")
    if warmup_chunks < 0:
        raise SonateInputError(f"warm-up chunks cannot be negative (got {warmup_chunks})")
    if cfg.max_rollback_chunks < 1:
        raise SonateInputError("the cache speedup re-times the last chunk by rolling back: max_rollback_chunks ≥ 1")


def _bench(
    cfg: SonateConfig,
    seconds: float,
    steps: int,
    guidance: Guidance,
    warmup_chunks: int,
    model: SonateModel,
    codecs: Codecs,
) -> dict:
    param = next(model.parameters())
    timed_chunks = math.ceil(seconds / cfg.chunk_seconds - 1e-9)
    total_chunks = warmup_chunks + timed_chunks
    cond = random_conditioning(cfg, param.device, param.dtype)
    phonemes = random_phonemes(cfg, total_chunks, param.device)
    stream = ChunkStream.open_batch(model, cond, [SEED], guidance, steps=steps)

    # 1. stream every chunk, keeping the last W + 1 outputs: the last chunk and its clean context
    outputs: deque[tuple[Tensor, Tensor]] = deque(maxlen=cfg.window_chunks + 1)
    chunk_ms, decoder_ms = [], []
    vocoder_states = [codecs.vocoder.init_state(1)]
    for chunk in range(total_chunks):
        out, ms = _timed(lambda c=chunk: stream.generate(phonemes.select(c, 1, cfg)), param.device)
        outputs.append(out)
        laps = Laps(sync=functools.partial(_synchronize, param.device))
        *_, vocoder_states = codecs.decode_chunk(*out, vocoder_states, timer=laps)
        if chunk >= warmup_chunks:
            chunk_ms.append(ms)
            decoder_ms.append((laps.seconds["vocoder"] * 1000, laps.seconds["video_decoder"] * 1000))

    # 2. the last chunk again, cached and uncached, alternating so drift hits both alike
    context = list(outputs)[:-1]
    speedup = _cache_speedup(model, stream, cond, guidance, context, phonemes, total_chunks - 1)

    compute_seconds = sum(chunk_ms) / 1000
    decoder_seconds = sum(a + v for a, v in decoder_ms) / 1000
    media_seconds = timed_chunks * cfg.chunk_seconds
    return {
        "preset": preset_name(cfg),
        "config": cfg.to_dict(),
        "chunks": timed_chunks,
        "warmup_chunks": warmup_chunks,
        "chunk_seconds": cfg.chunk_seconds,
        "media_seconds": media_seconds,
        "tokens_per_chunk": cfg.chunk_tokens,
        "prefix_tokens": cfg.prefix_tokens,
        "window_chunks": cfg.window_chunks,
        "steps": steps,
        "cfg": {"enabled": guidance.enabled, "audio": guidance.audio, "video": guidance.video},
        "chunk_ms": chunk_ms,
        "chunk_ms_p50": float(np.percentile(chunk_ms, 50)),
        "chunk_ms_p95": float(np.percentile(chunk_ms, 95)),
        "chunk_ms_max": max(chunk_ms),
        "compute_seconds": compute_seconds,
        "rtf": compute_seconds / media_seconds,
        "rtf_p50": float(np.percentile(chunk_ms, 50)) / 1000 / cfg.chunk_seconds,  # robust to load spikes
        "vocoder_ms_p50": float(np.percentile([a for a, _ in decoder_ms], 50)),
        "video_decoder_ms_p50": float(np.percentile([v for _, v in decoder_ms], 50)),
        "rtf_total": (compute_seconds + decoder_seconds) / media_seconds,
        **speedup,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "kernels_backend": kernels.backend(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        **run_info(),
    }


def _cache_speedup(
    model: SonateModel,
    stream: ChunkStream,
    cond: Conditioning,
    guidance: Guidance,
    context: list[tuple[Tensor, Tensor]],
    phonemes: ChunkPhonemes,
    last: int,
) -> dict:
    """Median ms of the last chunk made with the cache and without it, and their ratio."""
    cfg, device = model.cfg, next(model.parameters()).device
    rows_cond = branch_conditioning(cfg, cond, stream.seeds, stream.branches)
    noise = tuple(x.to(device, next(model.parameters()).dtype) for x in chunk_noise(cfg, stream.seeds, [last]))
    window = len(context)
    clean = tuple(torch.cat([x[:, :0], *(out[i] for out in context)], dim=1) for i, x in enumerate(noise))
    clean_phonemes = phonemes.select(last - window, window, cfg)
    chunk_phonemes = phonemes.select(last, 1, cfg)

    def cached() -> object:
        stream.rollback(last)
        return stream.generate(chunk_phonemes)

    def uncached() -> object:
        return recompute_chunk(
            model, rows_cond, guidance, stream.schedule, (clean, clean_phonemes), (noise, chunk_phonemes)
        )

    uncached()  # warm-up: the long sequence's first run allocates
    cached_ms, uncached_ms = [], []
    for _ in range(SPEEDUP_REPEATS):
        cached_ms.append(_timed(cached, device)[1])
        uncached_ms.append(_timed(uncached, device)[1])
    cached_median, uncached_median = float(np.median(cached_ms)), float(np.median(uncached_ms))
    return {
        "cache_speedup": uncached_median / cached_median,
        "cached_chunk_ms": cached_median,
        "uncached_chunk_ms": uncached_median,
        "speedup_context_chunks": window,
        "speedup_repeats": SPEEDUP_REPEATS,
    }


def recompute_curve(
    model: SonateModel, guidance: Guidance, steps: int, lengths_s: tuple[float, ...], cached_chunk_ms: float
) -> list[dict]:
    """For each length L (media seconds streamed), the median ms of one chunk made by recomputing all L seconds
    before it — no cache, no window, as CosyVoice 2's flow decoder does when streaming — on seeded random
    latents, and its ratio to `cached_chunk_ms` (a cached chunk reads only its window, so it costs the same at
    any length)."""
    cfg = model.cfg
    param = next(model.parameters())
    cond = random_conditioning(cfg, param.device, param.dtype)
    seeds = [SEED]
    rows_cond = branch_conditioning(cfg, cond, seeds, 2 if guidance.enabled else 1)
    schedule = flow_timesteps(steps, cfg.shift)
    curve = []
    for length_s in lengths_s:
        chunks = max(1, round(length_s / cfg.chunk_seconds))
        phonemes = random_phonemes(cfg, chunks + 1, param.device)
        generator = torch.Generator().manual_seed(SEED + chunks)
        clean = (
            torch.randn(1, chunks * cfg.chunk_audio_latents, cfg.audio_latent_dim, generator=generator),
            torch.randn(1, chunks * cfg.chunk_video_latents, cfg.video_latent_channels, cfg.video_latent_height,
                        cfg.video_latent_width, generator=generator),
        )  # fmt: skip
        clean = tuple(x.to(param.device, param.dtype) for x in clean)
        noise = tuple(x.to(param.device, param.dtype) for x in chunk_noise(cfg, seeds, [chunks]))
        context = (clean, phonemes.select(0, chunks, cfg))
        chunk = (noise, phonemes.select(chunks, 1, cfg))
        recompute = functools.partial(recompute_chunk, model, rows_cond, guidance, schedule, context, chunk)
        times = [_timed(recompute, param.device)[1] for _ in range(RECOMPUTE_REPEATS)]
        median = float(np.median(times))
        curve.append({"seconds_streamed": chunks * cfg.chunk_seconds, "recompute_chunk_ms": median,
                      "cached_chunk_ms": cached_chunk_ms, "ratio": median / cached_chunk_ms})  # fmt: skip
    return curve


def recompute_chunk(
    model: SonateModel,
    cond: Conditioning,
    guidance: Guidance,
    schedule: Tensor,
    clean: tuple[tuple[Tensor, Tensor], ChunkPhonemes],
    chunk: tuple[tuple[Tensor, Tensor], ChunkPhonemes],
) -> tuple[Tensor, Tensor]:
    """Make one chunk without a cache: each Euler step re-encodes the prefix and re-runs the one-pass forward.

    cond: the conditioning of every row ([conditional | negative] when guidance is on); clean: the latents
    (audio [1, K·Fa, Ca], video [1, K·Fv, C, h, w]) and phonemes of the K chunks before it; chunk: its
    starting noise (audio [1, Fa, Ca], video [1, Fv, C, h, w]) and phonemes. Returns the clean latents.
    """
    rows = cond.instruction_ids.shape[0]
    (clean_latents, clean_phonemes), ((audio, video), phonemes) = clean, chunk
    window = clean_latents[0].shape[1] // model.cfg.chunk_audio_latents
    clean_rows = tuple(_repeat_rows(x, rows) for x in clean_latents)
    clean_phonemes, phonemes = (branch_phonemes(model.cfg, ids, rows) for ids in (clean_phonemes, phonemes))

    def velocity(audio: Tensor, video: Tensor, t: float) -> tuple[Tensor, Tensor]:
        prefix = model.conditioning(cond)
        noisy = (_repeat_rows(audio, rows), _repeat_rows(video, rows))
        noisy_t = torch.full((rows, 1), t, device=audio.device)
        v_a, v_v = teacher_forward(model, prefix, clean_rows, clean_phonemes, noisy, phonemes, noisy_t, [window])
        return guidance.combine(v_a, v_v) if rows == 2 else (v_a, v_v)

    return euler_integrate(audio, video, schedule, velocity)


def _repeat_rows(x: Tensor, rows: int) -> Tensor:
    return x.repeat(rows, *([1] * (x.dim() - 1)))


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """fn's result and its wall time in ms, waiting for the device to finish."""
    _synchronize(device)
    start = time.perf_counter()
    out = fn()
    _synchronize(device)
    return out, (time.perf_counter() - start) * 1000


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_report(result: dict) -> Report:
    """The figures of `bench_model` as a readable table."""
    guidance = result["cfg"]
    cfg_text = f"audio {guidance['audio']:g} / video {guidance['video']:g}" if guidance["enabled"] else "off"
    context = result["speedup_context_chunks"]  # W once the stream is longer than the window
    rows = [
        ("preset", f"{result['preset']}  ({result['params'] / 1e6:.2f} M params)"),
        ("device", f"{result['device']} {result['dtype']}, {result['torch_threads']} threads, "
                   f"kernels {result['kernels_backend']}, torch {result['torch_version']}"),
        ("chunk", f"{result['chunk_seconds'] * 1000:.0f} ms of media, {result['tokens_per_chunk']} tokens, "
                  f"window {result['window_chunks']} chunks + {result['prefix_tokens']} sink tokens"),
        ("sampling", f"{result['steps']} Euler steps + 1 clean pass, CFG {cfg_text}"),
        ("chunks timed", f"{result['chunks']} ({result['media_seconds']:.2f} s of media) "
                         f"after {result['warmup_chunks']} warm-up"),
        ("chunk ms", f"p50 {result['chunk_ms_p50']:.1f}   p95 {result['chunk_ms_p95']:.1f}   "
                     f"max {result['chunk_ms_max']:.1f}"),
        ("rtf", f"{result['rtf']:.3f}  (compute s per media s; below 1 is real time; "
                f"{result['rtf_p50']:.3f} at the p50 chunk)"),
        ("decoders", f"vocoder {result['vocoder_ms_p50']:.1f} ms, video {result['video_decoder_ms_p50']:.1f} ms "
                     f"per chunk (p50); rtf_total {result['rtf_total']:.3f} with them"),
        ("cache speedup", f"{result['cache_speedup']:.2f}×  (last chunk: {result['uncached_chunk_ms']:.1f} ms "
                          f"recomputing {context} chunks of context, "
                          f"{result['cached_chunk_ms']:.1f} ms cached; ({context}+1)/2 = {(context + 1) / 2:g})"),
    ]  # fmt: skip
    for point in result.get("recompute_curve", []):
        rows.append((f"recompute {point['seconds_streamed']:.0f} s", f"{point['recompute_chunk_ms']:.0f} ms a chunk "
                     f"recomputing everything streamed, {point['ratio']:.1f}× the cached chunk"))  # fmt: skip
    return Report(f"sonate model bench — {result['timestamp']}", rows)
