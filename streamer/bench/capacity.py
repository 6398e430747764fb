"""`sonate bench capacity`: how many real-time sessions the engine sustains, with continuous batching and with
one session per forward.

For each scheduling mode it ramps the concurrent sessions 1, 2, 3, … through `bench_e2e`'s speech phase (real
server, real WebRTC clients talking for `seconds` each) and stops at the first count with an underrun. The
capacity of a mode is the largest count that ran without one; the ratio of the two capacities is what continuous
batching buys.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.sampler import Guidance
from sonate.models.transformer import SonateModel
from sonate.streamer.bench import BAR_FORMAT, advance
from sonate.streamer.bench.common import add_model_arguments, load_bench_model, preset_name
from sonate.streamer.bench.e2e import E2EConfig, bench_e2e
from sonate.streamer.bench.plots import plot_capacity
from sonate.streamer.bench.report import Report, run_info, write_outputs

MODES = {"continuous batching": None, "one at a time": 1}  # mode → EngineConfig.max_batch
RAMP_FIGURES = ("sessions", "underruns", "underruns_per_minute", "ttfa_ms_p50", "rtf", "engine_busy", "batch_ms_p50")


def bench_capacity(
    model: SonateModel,
    codecs: Codecs | None,
    max_sessions: int,
    seconds: float,
    steps: int | None = None,
    guidance: Guidance | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict:
    """Ramp each mode of `MODES` up to `max_sessions` sessions of `seconds` each (see the module docstring), with
    `steps` Euler steps and `guidance` (None: the model's)."""
    if max_sessions < 1 or seconds <= 0:
        raise SonateInputError("--max-sessions must be at least 1 and --seconds positive")
    ramps: dict[str, list[dict]] = {}
    capacity: dict[str, int] = {}
    for mode, max_batch in MODES.items():
        ramps[mode], capacity[mode] = [], 0
        for sessions in range(1, max_sessions + 1):
            if progress is not None:
                progress(mode, sessions)
            config = E2EConfig(sessions=sessions, seconds=seconds, sync_seconds=0, max_batch=max_batch, steps=steps,
                               guidance=guidance)  # fmt: skip
            result = bench_e2e(model, config, codecs)
            ramps[mode].append({key: result[key] for key in RAMP_FIGURES})
            if result["underruns"]:
                break
            capacity[mode] = sessions
    one = capacity["one at a time"]
    guidance = guidance or Guidance.of(model.cfg)
    return {
        "benchmark": "capacity",
        "preset": preset_name(model.cfg),
        "steps": steps or model.cfg.steps,
        "cfg": {"enabled": guidance.enabled, "audio": guidance.audio, "video": guidance.video},
        "max_sessions": max_sessions,
        "seconds": seconds,
        "capacity": capacity,
        "batching_ratio": capacity["continuous batching"] / one if one else None,
        "ramps": ramps,
        **run_info(),
    }


def capacity_report(result: dict) -> Report:
    """The figures of `bench_capacity` as a readable table."""
    ratio = result["batching_ratio"]
    rows = [(mode, f"{count} session(s) in real time for {result['seconds']:g} s with no underrun")
            for mode, count in result["capacity"].items()]  # fmt: skip
    rows.append(("ratio", "n/a" if ratio is None else f"{ratio:.2f}× the sessions with continuous batching"))
    table = [[mode, str(r["sessions"]), str(r["underruns"]), f"{r['ttfa_ms_p50'] or 0:.0f}", f"{r['rtf']:.3f}",
              f"{r['engine_busy']:.0%}"] for mode, ramp in result["ramps"].items() for r in ramp]  # fmt: skip
    header = ["mode", "sessions", "underruns", "ttfa p50 ms", "rtf", "engine busy"]
    cfg = result["cfg"]
    rows.insert(0, ("sampling", f"{result['steps']} Euler steps, CFG " + ("on" if cfg["enabled"] else "off")))
    return Report(f"sonate capacity bench — {result['timestamp']} ({result['preset']})", rows,
                  [("the ramps", header, table)])  # fmt: skip


def add_bench_capacity_parser(bench_subcommands: argparse._SubParsersAction) -> None:
    """Add `capacity` to the `sonate bench` targets."""
    p = bench_subcommands.add_parser(
        "capacity",
        help="ramp concurrent sessions until real time breaks, batched and one at a time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--max-sessions", type=int, default=6, help="stop the ramp here (default 6)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of conversation per step (default 60)")
    p.add_argument("--steps", type=int, help="Euler steps per chunk (default: the model's)")
    p.add_argument("--no-cfg", action="store_true", help="guidance off (one branch)")
    add_model_arguments(p)
    p.add_argument("--json", type=Path, help="also write the figures (and a plot and a summary) here")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    model, codecs = load_bench_model(args.checkpoint, args.preset)
    bar = tqdm(desc="capacity", unit="sessions", bar_format=BAR_FORMAT)
    if args.steps is not None and args.steps < 1:
        raise SonateInputError("--steps must be at least 1")
    result = bench_capacity(model, codecs, args.max_sessions, args.seconds, args.steps,
                            Guidance() if args.no_cfg else None,
                            lambda mode, n: advance(bar, n, args.max_sessions, mode))  # fmt: skip
    bar.close()
    write_outputs(result, capacity_report(result), args.json, {"ramp": lambda path: plot_capacity(result, path)})
