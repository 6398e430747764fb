"""The benchmarks' plots (matplotlib, drawn off-screen to PNG). Each takes a benchmark's JSON figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPAN_COLOURS = {
    "upstream": "#9e9e9e",
    "text": "#c5cae9",
    "scheduler": "#ffcc80",
    "g2p": "#ffb74d",
    "to_compute": "#bcaaa4",
    "euler": "#1e88e5",
    "clean": "#64b5f6",
    "video_decoder": "#43a047",
    "vocoder": "#81c784",
    "from_compute": "#8d6e63",
    "deliver": "#6d4c41",
    "buffered": "#e0e0e0",
    "other": "#f06292",
    "to_client": "#ce93d8",
    "webrtc": "#8e24aa",
    "playing": "#263238",
}


def _figure(width: float = 8.0, height: float = 4.5) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_recompute_curve(result: dict, path: Path) -> None:
    """`bench model --recompute-seconds`: the cost of one chunk against seconds streamed, cached (flat) and
    recomputing everything streamed (growing)."""
    curve = result["recompute_curve"]
    seconds = [point["seconds_streamed"] for point in curve]
    figure, axes = _figure()
    axes.plot(seconds, [p["recompute_chunk_ms"] for p in curve], "o-", color="#e53935", label="recompute everything")
    axes.plot(seconds, [result["cached_chunk_ms"]] * len(seconds), "o-", color="#1e88e5", label="KV cache + window")
    for point in curve:
        axes.annotate(f"{point['ratio']:.0f}×", (point["seconds_streamed"], point["recompute_chunk_ms"]),
                      textcoords="offset points", xytext=(-8, 6), fontsize=8)  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("seconds streamed")
    axes.set_ylabel("ms to make one chunk")
    axes.set_title(f"chunk cost as the stream grows ({result['preset']}, {result['steps']} steps)")
    axes.legend()
    axes.grid(alpha=0.3)
    _save(figure, path)


def plot_waterfall(waterfall: dict, path: Path) -> None:
    """`bench e2e`: one reply's first seconds, from its first text piece (0 ms): a row for the text, then a row
    per chunk with its spans, its wait in the playout buffer and its playing."""
    figure, axes = _figure(9.0, 0.45 * (len(waterfall["rows"]) + 2) + 2.5)
    seen: set[str] = set()
    for y, row in enumerate(waterfall["rows"]):
        for name, start_ms, length_ms in row["bars"]:
            label = None if name in seen else name
            seen.add(name)
            axes.barh(y, length_ms, left=start_ms, color=SPAN_COLOURS.get(name, "#000000"), label=label, height=0.7)
    axes.axvline(waterfall["first_audio_ms"], color="#e53935", linestyle="--", linewidth=1,
                 label="first phoneme plays (server)")  # fmt: skip
    axes.set_yticks(range(len(waterfall["rows"])), [row["label"] for row in waterfall["rows"]])
    axes.invert_yaxis()
    axes.set_xlabel("ms since the reply's first text piece reached the server")
    axes.set_title("where the time goes: the first seconds of a reply")
    axes.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    axes.grid(axis="x", alpha=0.3)
    _save(figure, path)


def plot_stacked_spans(bars: dict[str, dict[str, float]], path: Path, title: str, ylabel: str) -> None:
    """Stacked bars: one bar per key of `bars`, stacked by span (ms)."""
    figure, axes = _figure(7.0, 4.5)
    names = list(bars)
    spans = list(dict.fromkeys(span for parts in bars.values() for span in parts))
    bottoms = [0.0] * len(names)
    for span in spans:
        heights = [bars[name].get(span, 0.0) for name in names]
        axes.bar(names, heights, bottom=bottoms, color=SPAN_COLOURS.get(span, "#000000"), label=span)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)


def plot_capacity(result: dict, path: Path) -> None:
    """`bench capacity`: underruns per session-minute against concurrent sessions, per scheduling mode."""
    figure, axes = _figure()
    for mode, ramp in result["ramps"].items():
        axes.plot([r["sessions"] for r in ramp], [r["underruns_per_minute"] for r in ramp], "o-",
                  label=f"{mode}: {result['capacity'][mode]} sustained")  # fmt: skip
    axes.set_xticks(range(1, 1 + max(r["sessions"] for ramp in result["ramps"].values() for r in ramp)))
    axes.set_xlabel("concurrent sessions")
    axes.set_ylabel("underruns per session-minute")
    axes.set_title(f"capacity: sessions with no underrun for {result['seconds']:g} s")
    axes.legend()
    axes.grid(alpha=0.3)
    _save(figure, path)


def plot_pareto(points: list[dict], front: list[dict], path: Path, x: str, y: str, x_label: str, y_label: str) -> None:
    """`bench sweep`: every operating point by `x` and `y` (lower is better for both) — dots for one session,
    triangles for more — and the Pareto `front`, joined and labelled."""
    figure, axes = _figure(9.0, 5.5)
    for many, marker, label in ((False, "o", "one session"), (True, "^", "more sessions")):
        chosen = [p for p in points if (p["sessions"] > 1) == many]
        axes.scatter([p[x] for p in chosen], [p[y] for p in chosen], color="#90a4ae", marker=marker, label=label)
    axes.plot([p[x] for p in front], [p[y] for p in front], "o-", color="#e53935", label="Pareto front")
    for point in front:
        axes.annotate(point["label"], (point[x], point[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title("operating points")
    axes.legend()
    axes.grid(alpha=0.3)
    _save(figure, path)


def pareto_front(points: list[dict], x: str, y: str) -> list[dict]:
    """The points no other point beats on both `x` and `y` (lower is better for both), by `x`."""
    front = [p for p in points if not any(q[x] <= p[x] and q[y] <= p[y] and (q[x], q[y]) != (p[x], p[y])
                                          for q in points)]  # fmt: skip
    return sorted(front, key=lambda p: p[x])
