"""`sonate bench`: the model, the end-to-end server, kernels, capacity, the operating-point sweep, comparisons."""

from __future__ import annotations

import argparse
from pathlib import Path

from sonate.models.errors import SonateInputError
from sonate.streamer.bench.capacity import add_bench_capacity_parser
from sonate.streamer.bench.common import add_model_arguments, load_bench_model
from sonate.streamer.bench.compare import add_bench_compare_parser
from sonate.streamer.bench.e2e import add_bench_e2e_parser
from sonate.streamer.bench.kernels import add_bench_kernels_parser
from sonate.streamer.bench.sweep import add_bench_sweep_parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The targets of `sonate bench` and their arguments."""
    p.description = "Benchmarks that print figures."
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    m = targets.add_parser(
        "model",
        help="stream media through the sampler in-process",
        description="Stream media through the chunked sampler (model only, batch 1) and report chunk latency, "
        "real-time factor and the speedup of the KV cache over recomputing the visible context.",
    )
    add_model_arguments(m)
    m.add_argument("--seconds", type=float, default=30.0, help="media seconds to stream (default 30)")
    m.add_argument("--steps", type=int, default=4, help="Euler steps per chunk (default 4)")
    m.add_argument("--no-cfg", action="store_true", help="guidance off (one branch)")
    m.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    m.add_argument(
        "--recompute-seconds",
        type=_seconds_list,
        default=(),
        metavar="S1,S2,…",
        help="also time one chunk made by recomputing all of S seconds streamed (no cache, no window), e.g. 5,20,60",
    )
    m.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    m.set_defaults(run=run_bench_model)
    add_bench_e2e_parser(targets)
    add_bench_kernels_parser(targets)
    add_bench_compare_parser(targets)
    add_bench_capacity_parser(targets)
    add_bench_sweep_parser(targets)


def _seconds_list(text: str) -> tuple[float, ...]:
    """`5,20,60` → (5.0, 20.0, 60.0): positive seconds."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}") from None
    if not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"every length must be positive, got {text!r}")
    return values


def run_bench_model(args: argparse.Namespace) -> None:
    from sonate.models.sampler import Guidance
    from sonate.streamer.bench.model import bench_model, model_report
    from sonate.streamer.bench.plots import plot_recompute_curve
    from sonate.streamer.bench.report import write_outputs

    if args.seconds <= 0 or args.steps < 1:
        raise SonateInputError("--seconds must be positive and --steps at least 1")
    model, codecs = load_bench_model(args.checkpoint, args.preset)
    cfg = model.cfg
    guidance = Guidance() if args.no_cfg else Guidance.of(cfg)
    result = bench_model(cfg, args.seconds, args.steps, guidance, threads=args.threads, model=model, codecs=codecs,
                         recompute_seconds=args.recompute_seconds)  # fmt: skip
    plots = {"recompute": lambda path: plot_recompute_curve(result, path)} if args.recompute_seconds else {}
    write_outputs(result, model_report(result), args.json, plots)
