"""The kernel benchmark: Triton against the PyTorch reference, SDPA and FlexAttention, and end to end.

On CUDA, at the shapes of a preset (`1b` by default):

1. checks — every Triton kernel against the reference on the same bf16 inputs (the reference computed in fp32),
   atol 2e-2; the block-causal kernel's gradients too;
2. chunk attention — TFLOP/s of the sampler's attention (one chunk of queries against sinks + current chunk +
   0 … W cached chunks, batch 1, 2, 8): Triton vs `scaled_dot_product_attention` on its flash backend vs compiled
   FlexAttention, and split-KV on and off for short query chunks against the longest cache;
3. block-causal — TFLOP/s of the training kernel vs FlexAttention on the same mask, forward and backward;
4. end to end — chunk latency and frames per second of `ChunkStream.generate` on a random model, reference vs
   Triton kernels, CFG off and on, once the window is full.

It must finish in under 5 minutes on an H200. With `smoke=True` (and always on a CPU) the same code runs tiny
shapes through Triton's interpreter in fp32, as a test that it runs, not as figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sonate import kernels
from sonate.kernels import block_mask, reference
from sonate.models.checkpoint import random_model
from sonate.models.config import SonateConfig
from sonate.models.positions import chunk_rope_tables
from sonate.models.sampler import ChunkStream, Guidance
from sonate.models.teacher_forcing import token_layout
from sonate.streamer.bench.common import SEED, random_conditioning, random_phonemes
from sonate.streamer.bench.report import Report, run_info, write_outputs

GPU_ATOL = 2e-2  # bf16 kernels against the fp32 reference of the same inputs
CPU_ATOL = 1e-4  # fp32 through the interpreter


@dataclass
class Shapes:
    """What to measure: the model config, and the grid of the attention and end-to-end runs."""

    cfg: SonateConfig
    check_cfg: SonateConfig  # the same heads and head_dim, a smaller frame: the checks hold a dense reference
    dtype: torch.dtype
    batches: tuple[int, ...]
    caches: tuple[int, ...]  # cached chunks besides the sinks and the current chunk
    flex_caches: tuple[int, ...]  # FlexAttention compiles once per shape: the full window only
    split_queries: tuple[int, ...]  # short query chunks for the split-KV comparison
    train_chunks: int  # clean (and as many noisy) chunks of the training sequence
    steps: int
    timed_chunks: int


def shapes(preset: str, smoke: bool) -> Shapes:
    if smoke:
        small = dict(dim=64, n_layers=2, n_heads=2, n_kv_heads=2, video_width=64, video_height=64, window_chunks=2)
        cfg = SonateConfig.preset("tiny", **small, dtype="float32")
        return Shapes(cfg, cfg, torch.float32, (1, 2), (0, 2), (0,), (16,), 2, 1, 1)
    cfg = SonateConfig.preset(preset)
    check_cfg = SonateConfig.preset(preset, video_width=208, video_height=112)
    window = cfg.window_chunks
    return Shapes(
        cfg, check_cfg, getattr(torch, cfg.dtype), (1, 2, 8), tuple(range(window + 1)), (window,),
        (16, 256), window + 1, 4, 3,
    )  # fmt: skip


def bench_kernels(preset: str = "1b", smoke: bool = False, flex: bool = True) -> dict:
    """Run every section and return the figures as a JSON-able dict (see the module docstring)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = smoke or device.type != "cuda"
    plan = shapes(preset, smoke)
    triton = kernels.triton_kernels()
    torch.manual_seed(SEED)
    started = time.perf_counter()
    result = {
        "preset": "smoke" if smoke else preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(plan.dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        **run_info(),
        "checks": _checks(plan, triton, device),
        "chunk_attention": _chunk_attention(plan, triton, device, flex),
        "split_kv": _split_kv(plan, triton, device),
        "block_causal": _block_causal(plan, triton, device, flex),
        "end_to_end": _end_to_end(plan, device),
    }
    result["seconds"] = time.perf_counter() - started
    return result


def _timed_ms(fn: Callable[[], object], device: torch.device, grads: list[Tensor] | None = None) -> float:
    """Median ms of fn: CUDA events over ~100 ms of repeats on a GPU, one warm run on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median"))
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _max_error(got: Tensor, want: Tensor) -> float:
    return float((got.detach().float() - want.detach().float()).abs().max())


def _randn(*shape: int, device: torch.device, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(*shape, device=device)).to(dtype)


def _checks(plan: Shapes, triton, device: torch.device) -> list[dict]:
    cfg, dtype = plan.check_cfg, plan.dtype
    atol = CPU_ATOL if device.type == "cpu" else GPU_ATOL
    heads, kv_heads, dim, chunk = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.chunk_tokens
    checks = []

    def record(name: str, got: Tensor, want: Tensor) -> None:
        error = _max_error(got, want)
        checks.append({"kernel": name, "max_error": error, "atol": atol, "ok": error <= atol})

    # chunk attention: three sessions at different cache fill in one launch
    keys = cfg.prefix_tokens + (1 + cfg.window_chunks) * chunk
    q = _randn(3, heads, chunk, dim, device=device, dtype=dtype)
    k, v = (_randn(3, kv_heads, keys, dim, device=device, dtype=dtype) for _ in range(2))
    lengths = torch.tensor([keys, keys - 2 * chunk, cfg.prefix_tokens + chunk], device=device)
    want = reference.chunk_attention(q.float(), k.float(), v.float(), lengths)
    record("chunk_attention", triton.chunk.chunk_attention(q, k, v, lengths), want)
    record("chunk_attention split-KV", triton.chunk.chunk_attention(q, k, v, lengths, splits=3), want)

    # block-causal attention, forward and gradients
    layout = token_layout(cfg, 3, [0, 1, 2])
    tokens = len(layout.kind)
    q, k, v = (
        _randn(1, h, tokens, dim, device=device, dtype=dtype).requires_grad_() for h in (heads, kv_heads, kv_heads)
    )
    grad = _randn(1, heads, tokens, dim, device=device, dtype=dtype)
    out = triton.block_causal.block_causal_attention(q, k, v, kernels.block_causal_mask(layout, cfg.window_chunks))
    out.backward(grad)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    want = reference.block_causal_attention(q32, k32, v32, layout, cfg.window_chunks)
    want.backward(grad.float())
    record("block_causal_attention", out, want)
    for name, got, ref in (("dq", q.grad, q32.grad), ("dk", k.grad, k32.grad), ("dv", v.grad, v32.grad)):
        record(f"block_causal_attention {name}", got, ref)

    # the fused ops, on the transformer's views: modulation slices of [B, T, 6, C]
    x = _randn(2, chunk, cfg.dim, device=device, dtype=dtype)
    mod = _randn(2, 1, 6, cfg.dim, device=device, dtype=dtype, scale=0.1)
    shift, scale, gate = mod[:, :, 0], mod[:, :, 1], mod[:, :, 2]
    want = reference.modulated_norm(x.float(), shift.float(), scale.float(), cfg.norm_eps)
    record("modulated_norm", triton.norm.modulated_norm(x, shift, scale, cfg.norm_eps), want)
    y = _randn(2, chunk, cfg.dim, device=device, dtype=dtype)
    record(
        "gated_residual",
        triton.residual.gated_residual(x, y, gate),
        reference.gated_residual(x.float(), y.float(), gate.float()),
    )
    cos, sin = (t[0].to(device) for t in chunk_rope_tables(cfg, torch.tensor([cfg.window_chunks])))
    x = _randn(2, chunk, heads, dim, device=device, dtype=dtype).transpose(1, 2)
    want = reference.apply_rope(x.float(), cos, sin)
    record("apply_rope", triton.rope.apply_rope(x, cos.to(dtype), sin.to(dtype)), want)
    return checks


def _sdpa(q: Tensor, k: Tensor, v: Tensor, device: torch.device) -> Tensor:
    """SDPA, on its flash backend on CUDA (no mask: every key visible), its default on the CPU."""
    gqa = q.shape[1] != k.shape[1]
    if device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)


def _flex(device: torch.device) -> Callable:
    """FlexAttention compiled on CUDA; eager on the CPU (unfused: only that it runs means anything there)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type == "cuda":
        return torch.compile(flex_attention, dynamic=False)

    def eager(*args, **kwargs) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "called without torch.compile()"
            return flex_attention(*args, **kwargs)

    return eager


def _chunk_attention(plan: Shapes, triton, device: torch.device, flex: bool) -> list[dict]:
    cfg = plan.cfg
    heads, kv_heads, dim, chunk = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.chunk_tokens
    flex_attention = _flex(device) if flex else None
    rows = []
    for batch in plan.batches:
        for cache in plan.caches:
            keys = cfg.prefix_tokens + (1 + cache) * chunk
            q = _randn(batch, heads, chunk, dim, device=device, dtype=plan.dtype)
            k, v = (_randn(batch, kv_heads, keys, dim, device=device, dtype=plan.dtype) for _ in range(2))
            lengths = torch.full((batch,), keys, device=device)
            tflop = 4 * batch * heads * chunk * keys * dim / 1e12
            row = {"batch": batch, "cache_chunks": cache, "queries": chunk, "keys": keys}
            row["triton_ms"] = _timed_ms(partial(triton.chunk.chunk_attention, q, k, v, lengths), device)
            row["sdpa_ms"] = _timed_ms(partial(_sdpa, q, k, v, device), device)
            row["triton_vs_sdpa_max_error"] = _max_error(
                triton.chunk.chunk_attention(q, k, v, lengths), _sdpa(q, k, v, device)
            )
            if flex_attention is not None and cache in plan.flex_caches:
                flex_call = partial(flex_attention, q, k, v, enable_gqa=heads != kv_heads)
                row["flex_ms"] = _timed_ms(flex_call, device)
            for name in ("triton", "sdpa", "flex"):
                if f"{name}_ms" in row:
                    row[f"{name}_tflops"] = tflop / (row[f"{name}_ms"] / 1000)
            rows.append(row)
    return rows


def _split_kv(plan: Shapes, triton, device: torch.device) -> list[dict]:
    """Short query chunks against the longest cache, batch 1: one pass over the keys vs split-KV."""
    cfg = plan.cfg
    keys = cfg.prefix_tokens + (1 + max(plan.caches)) * cfg.chunk_tokens
    rows = []
    for queries in plan.split_queries:
        q = _randn(1, cfg.n_heads, queries, cfg.head_dim, device=device, dtype=plan.dtype)
        k, v = (_randn(1, cfg.n_kv_heads, keys, cfg.head_dim, device=device, dtype=plan.dtype) for _ in range(2))
        row = {"queries": queries, "keys": keys}
        row["one_pass_ms"] = _timed_ms(partial(triton.chunk.chunk_attention, q, k, v, splits=1), device)
        splits = 4 if device.type != "cuda" else None  # the CPU has no SMs to count: force a split
        row["split_ms"] = _timed_ms(partial(triton.chunk.chunk_attention, q, k, v, splits=splits), device)
        row["speedup"] = row["one_pass_ms"] / row["split_ms"]
        rows.append(row)
    return rows


def _block_causal(plan: Shapes, triton, device: torch.device, flex: bool) -> dict:
    cfg, dtype = plan.cfg, plan.dtype
    chunks = plan.train_chunks
    layout = token_layout(cfg, chunks, list(range(chunks)))
    mask = kernels.block_causal_mask(layout, cfg.window_chunks)
    tokens, heads, kv_heads, dim = len(layout.kind), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q, k, v = (
        _randn(1, h, tokens, dim, device=device, dtype=dtype).requires_grad_() for h in (heads, kv_heads, kv_heads)
    )
    grad = _randn(1, heads, tokens, dim, device=device, dtype=dtype)
    forward_tflop = 4 * heads * dim * mask.visible_pairs() / 1e12
    classes = mask.classes(128, 128)
    result = {
        "tokens": tokens,
        "chunks": chunks,
        "density": mask.visible_pairs() / tokens**2,
        "tiles_128": {name: int((classes == c).sum()) for name, c in (("empty", 0), ("partial", 1), ("full", 2))},
    }

    implementations = {"triton": (partial(triton.block_causal.block_causal_attention, mask=mask), True)}
    if flex:
        from torch.nn.attention.flex_attention import create_block_mask

        kind, chunk = mask.arrays(device)
        window = cfg.window_chunks

        def mask_mod(b, h, q_index, k_index):
            return block_mask.visible(kind[q_index], chunk[q_index], kind[k_index], chunk[k_index], window)

        flex_mask = create_block_mask(mask_mod, None, None, tokens, tokens, device=device)
        flex_attention = partial(_flex(device), block_mask=flex_mask, enable_gqa=heads != kv_heads)
        implementations["flex"] = (flex_attention, device.type == "cuda")  # no FlexAttention backward on a CPU
    inputs = (q.detach(), k.detach(), v.detach())
    for name, (attention, has_backward) in implementations.items():
        with torch.no_grad():
            fwd_ms = _timed_ms(partial(attention, *inputs), device)
        result[f"{name}_forward_ms"] = fwd_ms
        result[f"{name}_forward_tflops"] = forward_tflop / (fwd_ms / 1000)
        if has_backward:
            total_ms = _timed_ms(lambda f=attention: f(q, k, v).backward(grad), device, grads=[q, k, v])
            result[f"{name}_backward_ms"] = total_ms - fwd_ms
            result[f"{name}_backward_tflops"] = 2.5 * forward_tflop / ((total_ms - fwd_ms) / 1000)
    return result


@contextlib.contextmanager
def _kernels_set_to(choice: str) -> Iterator[None]:
    previous = os.environ.get("SONATE_KERNELS")
    os.environ["SONATE_KERNELS"] = choice
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SONATE_KERNELS", None)
        else:
            os.environ["SONATE_KERNELS"] = previous


def _end_to_end(plan: Shapes, device: torch.device) -> list[dict]:
    """Chunk latency once the window is full: W untimed chunks fill the cache, then `timed_chunks` are timed."""
    cfg = plan.cfg
    with torch.device(device):
        model = random_model(cfg)
    cond = random_conditioning(cfg, device, plan.dtype)
    warmup = cfg.window_chunks
    phonemes = random_phonemes(cfg, warmup + plan.timed_chunks, device)
    rows = []
    for guided in (False, True):
        guidance = Guidance.of(cfg) if guided else Guidance()
        for choice in ("reference", "triton"):
            with _kernels_set_to(choice), torch.no_grad():
                stream = ChunkStream.open_batch(model, cond, [SEED], guidance, steps=plan.steps)
                chunk_ms = []
                for index in range(warmup + plan.timed_chunks):
                    _synchronize(device)
                    start = time.perf_counter()
                    stream.generate(phonemes.select(index, 1, cfg))
                    _synchronize(device)
                    chunk_ms.append((time.perf_counter() - start) * 1000)
            median = float(np.median(chunk_ms[warmup:]))
            rows.append({
                "kernels": choice, "cfg": guided, "steps": plan.steps, "chunk_ms": median,
                "fps": cfg.chunk_video_frames / (median / 1000), "rtf": median / 1000 / cfg.chunk_seconds,
            })  # fmt: skip
    del model
    return rows


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernels_report(result: dict) -> Report:
    """The figures of `bench_kernels` as readable tables."""
    rows = [("setup", f"{result['preset']} on {result['device']}, {result['dtype']}, torch {result['torch_version']}, "
                      f"{result['seconds']:.0f} s")]  # fmt: skip
    checks = [[c["kernel"], f"{c['max_error']:.2e}", f"{c['atol']:g}", "ok" if c["ok"] else "FAIL"]
              for c in result["checks"]]  # fmt: skip
    chunk = [[str(r["batch"]), str(r["cache_chunks"]), str(r["keys"]),
              *(_cell(r, name) for name in ("triton", "sdpa", "flex")), f"{r['triton_vs_sdpa_max_error']:.2e}"]
             for r in result["chunk_attention"]]  # fmt: skip
    split = [[str(r["queries"]), str(r["keys"]), f"{r['one_pass_ms']:.3f}", f"{r['split_ms']:.3f}",
              f"{r['speedup']:.2f}×"] for r in result["split_kv"]]  # fmt: skip
    train = result["block_causal"]
    tiles = train["tiles_128"]
    training = [[name, _cell(train, f"{name}_forward"), _cell(train, f"{name}_backward")]
                for name in ("triton", "flex") if f"{name}_forward_ms" in train]  # fmt: skip
    end_to_end = [[r["kernels"], "on" if r["cfg"] else "off", str(r["steps"]), f"{r['chunk_ms']:.1f}",
                   f"{r['fps']:.1f}", f"{r['rtf']:.3f}"] for r in result["end_to_end"]]  # fmt: skip
    tables = [
        ("checks (Triton vs the fp32 reference of the same inputs)", ["kernel", "max error", "atol", ""], checks),
        ("chunk attention, TFLOP/s (ms)", ["batch", "cache", "keys", "triton", "sdpa", "flex", "max |Δ| vs sdpa"],
         chunk),
        ("split-KV, batch 1 against the longest cache (ms)", ["queries", "keys", "one pass", "split", "speedup"],
         split),
        (f"block-causal training attention, {train['tokens']} tokens ({train['chunks']} clean + noisy chunks), "
         f"density {train['density']:.3f}, 128² tiles empty/partial/full {tiles['empty']}/{tiles['partial']}/"
         f"{tiles['full']}; TFLOP/s (ms)", ["kernel", "forward", "backward"], training),
        ("end to end (median chunk once the window is full)", ["kernels", "CFG", "steps", "ms/chunk", "fps", "rtf"],
         end_to_end),
    ]  # fmt: skip
    return Report(f"sonate kernel bench — {result['timestamp']}", rows, tables)


def _cell(row: dict, name: str) -> str:
    if f"{name}_ms" not in row:
        return "—"
    return f"{row[f'{name}_tflops']:.1f} ({row[f'{name}_ms']:.2f})"


def add_bench_kernels_parser(bench_subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `kernels` under `sonate bench` (the `bench` subparsers) and return its parser."""
    p = bench_subcommands.add_parser(
        "kernels",
        help="Triton kernels vs the reference, SDPA and FlexAttention",
        description="Check every Triton kernel against the PyTorch reference and report TFLOP/s of chunk and "
        "block-causal attention against SDPA (flash) and FlexAttention, and end-to-end chunk latency, "
        "reference vs Triton. Needs a CUDA GPU; --smoke runs tiny shapes anywhere (Triton's interpreter on a CPU).",
    )
    p.add_argument("--preset", default="1b", help="model preset whose shapes are measured (default 1b)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes: checks that the bench runs, no figures")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (it compiles once per shape)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(run=run_bench_kernels)
    return p


def run_bench_kernels(args: argparse.Namespace) -> None:
    result = bench_kernels(args.preset, smoke=args.smoke, flex=not args.no_flex)
    write_outputs(result, kernels_report(result), args.json)


def main(argv: list[str] | None = None) -> None:
    """`python -m sonate.streamer.bench.kernels`, until `sonate bench kernels` is wired into the CLI."""
    parser = argparse.ArgumentParser(prog="python -m sonate.streamer.bench.kernels")
    add_bench_kernels_parser(parser.add_subparsers(dest="target", required=True))
    args = parser.parse_args(["kernels", *(sys.argv[1:] if argv is None else argv)])
    args.run(args)


if __name__ == "__main__":
    main()
