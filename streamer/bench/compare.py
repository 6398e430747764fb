"""`sonate bench compare A.json B.json`: the figures two runs of a benchmark share, side by side, with B / A.

Every number in either file's JSON — nested objects flattened to dotted names, lists left out — that both runs
have is a row: its value in A, in B, and the ratio B / A (none when A is 0). Registered by the `sonate` program
through :func:`add_bench_compare_parser`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from sonate.models.errors import SonateInputError

__all__ = ["Comparison", "add_bench_compare_parser", "compare", "format_comparison", "numeric_figures"]


@dataclass
class Comparison:
    """One figure of both runs: its dotted name, its values, and B / A (None when A is 0)."""

    name: str
    a: float
    b: float
    ratio: float | None


def numeric_figures(result: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a benchmark's JSON by dotted name (`machine.cpu_count`); booleans, strings, lists and
    non-finite values are not figures."""
    figures: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            figures.update(numeric_figures(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            figures[name] = float(value)
    return figures


def compare(a: dict, b: dict) -> list[Comparison]:
    """Every figure both results have, in A's order; raises SonateInputError for runs of different benchmarks."""
    if a.get("benchmark") != b.get("benchmark"):
        raise SonateInputError(f"cannot compare a {a.get('benchmark')!r} benchmark with a {b.get('benchmark')!r} one")
    figures_a, figures_b = numeric_figures(a), numeric_figures(b)
    return [
        Comparison(name, value, figures_b[name], figures_b[name] / value if value != 0 else None)
        for name, value in figures_a.items()
        if name in figures_b
    ]


def format_comparison(rows: list[Comparison], name_a: str, name_b: str) -> str:
    """A table of the rows: figure, A, B, B / A."""
    width = max([len("figure"), *(len(row.name) for row in rows)])
    lines = [f"A: {name_a}", f"B: {name_b}", f"{'figure':<{width}}  {'A':>12}  {'B':>12}  {'B / A':>8}"]
    for row in rows:
        ratio = "n/a" if row.ratio is None else f"{row.ratio:.3f}"
        lines.append(f"{row.name:<{width}}  {row.a:>12.6g}  {row.b:>12.6g}  {ratio:>8}")
    return "\n".join(lines)


def add_bench_compare_parser(targets: argparse._SubParsersAction) -> None:
    """Add `sonate bench compare` to the `sonate bench` targets."""
    p = targets.add_parser(
        "compare",
        help="the ratios between two runs of a benchmark",
        description="Print every figure two benchmark JSON files share, with the ratio B / A.",
    )
    p.add_argument("a", type=Path, help="the first run's JSON (A)")
    p.add_argument("b", type=Path, help="the second run's JSON (B)")
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> None:
    print(format_comparison(compare(_load(args.a), _load(args.b)), str(args.a), str(args.b)))


def _load(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise SonateInputError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SonateInputError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(result, dict):
        raise SonateInputError(f"{path} is not a benchmark's JSON (an object)")
    return result
