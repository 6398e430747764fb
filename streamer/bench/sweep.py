"""`sonate bench sweep`: operating points — chunk length × Euler steps × CFG on/off × concurrent sessions — by
time to first audio, real-time factor and quality, so a user can pick one.

Every point runs `bench_e2e`'s speech phase (real server and WebRTC clients) for its time to first audio, its
real-time factor and its underruns. Quality comes from `sonate eval` on the first clips of a world's test split
(`--data`), once per chunk length × steps × CFG (quality does not depend on how many sessions share the engine).
Chunk lengths other than the checkpoint's reuse its weights with the attention window kept at the same seconds;
the model was trained at one length, so quality there measures that change too.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tqdm import tqdm

from sonate.models.config import SonateConfig
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.sampler import Guidance
from sonate.models.transformer import SonateModel
from sonate.streamer.bench import BAR_FORMAT, advance
from sonate.streamer.bench.common import add_model_arguments, load_bench_model, preset_name
from sonate.streamer.bench.e2e import E2EConfig, bench_e2e
from sonate.streamer.bench.plots import pareto_front, plot_pareto
from sonate.streamer.bench.report import Report, run_info, write_outputs

QUALITY = ("sync_confidence", "wer", "sim")


def rechunked(model: SonateModel, chunk_video_latents: int) -> SonateModel:
    """`model`'s weights with chunks of `chunk_video_latents` latent frames, its window kept at the same seconds."""
    cfg = model.cfg
    if chunk_video_latents == cfg.chunk_video_latents:
        return model
    window = max(1, round(cfg.window_chunks * cfg.chunk_video_latents / chunk_video_latents))
    values = {**cfg.to_dict(), "chunk_video_latents": chunk_video_latents, "window_chunks": window}
    other = SonateModel(SonateConfig(**values)).to(next(model.parameters()))
    other.load_state_dict(model.state_dict())
    return other.eval()


def bench_sweep(
    model: SonateModel,
    codecs: Codecs | None,
    chunk_latents: list[int],
    steps: list[int],
    cfg_modes: list[bool],
    sessions: list[int],
    seconds: float,
    data: Path | None = None,
    max_clips: int = 8,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Measure every operating point of the grid (see the module docstring)."""
    if min(chunk_latents + steps + sessions, default=0) < 1 or seconds <= 0 or max_clips < 1:
        raise SonateInputError("chunk lengths, steps and sessions must be at least 1, --seconds positive")
    from sonate.models.metrics.evaluate import evaluate
    from sonate.streamer.engine.evaluation import model_system

    grid = list(itertools.product(chunk_latents, steps, cfg_modes))
    total, done, points = len(grid) * (len(sessions) + (data is not None)), 0, []
    for latents, step_count, cfg_on in grid:
        variant = rechunked(model, latents)
        guidance = Guidance.of(variant.cfg) if cfg_on else Guidance()
        label = f"{variant.cfg.chunk_seconds * 1000:.0f} ms, {step_count} steps, CFG {'on' if cfg_on else 'off'}"
        quality: dict = {}
        if data is not None:
            if progress is not None:
                progress(done, total, f"{label}: quality")
            scores = evaluate(data, model_system(variant, codecs or Codecs.random(variant.cfg), 0, step_count,
                                                 guidance, False), "test", max_clips)  # fmt: skip
            quality = {name: scores[name] for name in QUALITY}
            done += 1
        for count in sessions:
            if progress is not None:
                progress(done, total, f"{label}: {count} session(s)")
            config = E2EConfig(sessions=count, seconds=seconds, sync_seconds=0, steps=step_count, guidance=guidance)
            result = bench_e2e(variant, config, codecs)
            points.append({
                "label": f"{label}, {count} session(s)",
                "chunk_ms": variant.cfg.chunk_seconds * 1000,
                "steps": step_count,
                "cfg": cfg_on,
                "sessions": count,
                "ttfa_ms_p50": result["ttfa_ms_p50"],
                "rtf": result["rtf"],
                "underruns": result["underruns"],
                **quality,
            })  # fmt: skip
            done += 1
    return {
        "benchmark": "sweep",
        "preset": preset_name(model.cfg),
        "seconds": seconds,
        "quality_clips": max_clips if data is not None else 0,
        "points": points,
        **run_info(),
    }


def sweep_front(points: list[dict]) -> list[dict]:
    """The operating points worth choosing: among those that ran without an underrun, the ones no other beats on
    both time to first audio and WER (lip sync barely moves across the grid; WER does)."""
    viable = [p for p in points if p["ttfa_ms_p50"] is not None and p["underruns"] == 0]
    return pareto_front(viable, "ttfa_ms_p50", "wer")


def sweep_report(result: dict) -> Report:
    """The operating points as a table, the Pareto front (`sweep_front`) marked."""
    points = result["points"]
    quality = bool(result["quality_clips"])
    front = {id(p) for p in sweep_front(points)} if quality else set()
    header = ["chunk ms", "steps", "CFG", "sessions", "ttfa p50 ms", "rtf", "underruns"]
    header += ["sync conf", "WER", "timbre sim", "Pareto"] if quality else []
    rows = []
    for p in points:
        ttfa = "n/a" if p["ttfa_ms_p50"] is None else f"{p['ttfa_ms_p50']:.0f}"
        row = [f"{p['chunk_ms']:.0f}", str(p["steps"]), "on" if p["cfg"] else "off", str(p["sessions"]), ttfa,
               f"{p['rtf']:.3f}", str(p["underruns"])]  # fmt: skip
        if quality:
            row += [f"{p['sync_confidence']:.3f}", f"{p['wer']:.3f}", f"{p['sim']:.3f}", "●" if id(p) in front else ""]
        rows.append(row)
    summary = [("points", f"{len(points)}, each {result['seconds']:g} s of conversation per session"),
               ("quality", f"`sonate eval` on {result['quality_clips']} test clips" if quality else "not measured "
                           "(no --data)")]  # fmt: skip
    return Report(f"sonate sweep — {result['timestamp']} ({result['preset']})", summary,
                  [("operating points", header, rows)])  # fmt: skip


def add_bench_sweep_parser(bench_subcommands: argparse._SubParsersAction) -> None:
    """Add `sweep` to the `sonate bench` targets."""
    p = bench_subcommands.add_parser(
        "sweep",
        help="chunk length × steps × CFG × sessions → ttfa, rtf, quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--chunk-latents", type=_ints, default=[1, 2], help="latent frames per chunk (default 1,2)")
    p.add_argument("--steps", type=_ints, default=[2, 4], help="Euler steps (default 2,4)")
    p.add_argument("--cfg", type=_cfg_modes, default=[True, False], help="on, off or on,off (default on,off)")
    p.add_argument("--sessions", type=_ints, default=[1, 2], help="concurrent sessions (default 1,2)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of conversation per point (default 20)")
    p.add_argument("--data", type=Path, help="a world (`sonate data make`) to measure quality on its test split")
    p.add_argument("--max-clips", type=int, default=8, help="test clips for quality (default 8)")
    add_model_arguments(p)
    p.add_argument("--json", type=Path, help="also write the figures (and the Pareto plot and a summary) here")
    p.set_defaults(run=_run)


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _cfg_modes(text: str) -> list[bool]:
    modes = {"on": True, "off": False}
    if any(part not in modes for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected on, off or on,off, got {text!r}")
    return [modes[part] for part in text.split(",")]


def _run(args: argparse.Namespace) -> None:
    model, codecs = load_bench_model(args.checkpoint, args.preset)
    bar = tqdm(desc="sweep", unit="points", bar_format=BAR_FORMAT)
    result = bench_sweep(model, codecs, args.chunk_latents, args.steps, args.cfg, args.sessions, args.seconds,
                         args.data, args.max_clips, partial(advance, bar))  # fmt: skip
    bar.close()
    plots = {}
    if result["quality_clips"]:
        measured = [p for p in result["points"] if p["ttfa_ms_p50"] is not None]
        front = sweep_front(result["points"])
        labels = ("time to first audio, p50 (ms)", "WER (lower is better)")
        plots["pareto"] = lambda path: plot_pareto(measured, front, path, "ttfa_ms_p50", "wer", *labels)
    write_outputs(result, sweep_report(result), args.json, plots)
