"""Prometheus text exposition (format 0.0.4), written by hand: gauges, counters and cumulative histograms."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)  # seconds


class Histogram:
    """A cumulative histogram of observations (seconds): counts per upper bound, their sum and count."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation; NaN is ignored."""
        if math.isnan(value):
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class RollingSync:
    """Feeds a histogram from a rolling list of recent values (newest last) and the running total of values.

    The engine keeps its last 1000 batch times; each `sync` observes those added since the previous one, so the
    histogram stays cumulative as long as fewer than the list's length arrive between two syncs.
    """

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.seen = 0  # values of the running total already observed

    def sync(self, recent: list[float], total: int) -> None:
        new = min(total - self.seen, len(recent))
        for value in recent[len(recent) - new :] if new > 0 else ():
            self.histogram.observe(value)
        self.seen = total


class Exposition:
    """Accumulates metric families and renders them as one text page."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def gauge(self, name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._family(name, "gauge", help_text)
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def gauges(self, name: str, help_text: str, values: dict[str, float], label: str) -> None:
        """One gauge family with a sample per value of `label`."""
        self._family(name, "gauge", help_text)
        for key, value in values.items():
            self.lines.append(f"{name}{_labels({label: key})} {_number(value)}")

    def counter(self, name: str, help_text: str, value: float) -> None:
        """A counter; `name` ends in `_total`."""
        self._family(name, "counter", help_text)
        self.lines.append(f"{name} {_number(value)}")

    def histogram(self, name: str, help_text: str, histogram: Histogram) -> None:
        self._family(name, "histogram", help_text)
        self._histogram_samples(name, histogram, {})

    def histograms(self, name: str, help_text: str, histograms: dict[str, Histogram], label: str) -> None:
        """One histogram family with a histogram per value of `label`."""
        self._family(name, "histogram", help_text)
        for key, histogram in histograms.items():
            self._histogram_samples(name, histogram, {label: key})

    def _histogram_samples(self, name: str, histogram: Histogram, labels: dict[str, str]) -> None:
        cumulative = 0
        for bound, count in zip([*histogram.bounds, math.inf], histogram.counts, strict=True):
            cumulative += count
            self.lines.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {cumulative}")
        self.lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.sum)}")
        self.lines.append(f"{name}_count{_labels(labels)} {histogram.count}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"

    def _family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")


def _labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return ""
    pairs = (f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + ",".join(pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
