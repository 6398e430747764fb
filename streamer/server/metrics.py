"""/metrics: the engine's and the server's figures for Prometheus, through `prometheus_client`.

Each app has its own `CollectorRegistry` (several apps may live in one process; the library's global registry
is never used). `ServerCollector` reads the counts and gauges from the engine and the registry when Prometheus
scrapes. The latency histograms are `prometheus_client` histograms: `sonate_ttfa_seconds` is observed as each
utterance starts playing; the others are fed from the timings the engine keeps as plain data
(`EngineMetrics.batch_timings`, `EngineMetrics.first_audio`) by `LatencyHistograms.follow`, which observes those
recorded since its previous call. The registry calls it every second and each scrape does, so no timing rolls
out of the engine's bounded lists unseen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sonate.streamer.engine.timing import BATCH_SPANS, FIRST_AUDIO_SPANS

if TYPE_CHECKING:
    from sonate.streamer.engine.engine import Engine, EngineMetrics
    from sonate.streamer.server.registry import Registry

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)  # seconds


def _latency_histogram(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
    """A histogram of seconds over `LATENCY_BUCKETS`, in no registry (a collector yields it)."""
    return Histogram(name, documentation, labels, buckets=LATENCY_BUCKETS, registry=None)


class LatencyHistograms:
    """The latency histograms of /metrics (seconds): each batch's compute time and its spans, each utterance's
    time to first audio and its spans."""

    def __init__(self) -> None:
        self.compute = _latency_histogram("sonate_chunk_compute_seconds", "Compute time of one batch of chunks.")
        self.ttfa = _latency_histogram("sonate_ttfa_seconds", "Time from a text's first piece to its speech playing.")
        self.batch_spans = _latency_histogram(
            "sonate_batch_span_seconds", "Each part of a batch's trip through the compute process.", ("span",)
        )
        self.first_audio_spans = _latency_histogram(
            "sonate_first_audio_span_seconds", "Each part of the time from text to its first audio.", ("span",)
        )
        for name in BATCH_SPANS:  # every span shows from the start, at zero
            self.batch_spans.labels(span=name)
        for name in FIRST_AUDIO_SPANS:
            self.first_audio_spans.labels(span=name)
        self._batches_seen = 0  # of the engine's `batch_timings`, those observed already
        self._first_audio_seen = 0  # of its `first_audio`

    def follow(self, metrics: EngineMetrics) -> None:
        """Observe the batch timings and first-audio breakdowns the engine recorded since the previous call."""
        for timing in metrics.batch_timings.since(self._batches_seen):
            self.compute.observe(timing.round_trip)
            for name, seconds in timing.spans().items():
                self.batch_spans.labels(span=name).observe(seconds)
        for breakdown in metrics.first_audio.since(self._first_audio_seen):
            for name, seconds in breakdown.spans.items():
                self.first_audio_spans.labels(span=name).observe(seconds)
        self._batches_seen = metrics.batch_timings.total
        self._first_audio_seen = metrics.first_audio.total


class ServerCollector(Collector):
    """Every family of /metrics, read from the engine and the registry at scrape time."""

    def __init__(self, engine: Engine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        registry, metrics = self.registry, self.engine.metrics
        registry.sync_stats()
        stats, latency = registry.stats, registry.stats.latency
        hosted = list(registry.sessions.values())
        yield GaugeMetricFamily("sonate_sessions_active", "Open sessions.", len(hosted))
        yield GaugeMetricFamily("sonate_sessions_max", "Session slots of the engine.", self.engine.config.max_sessions)
        yield CounterMetricFamily("sonate_sessions_opened_total", "Sessions opened.", stats.opened)
        yield CounterMetricFamily(
            "sonate_sessions_expired_total", "Sessions closed because nobody was connected.", stats.expired
        )
        yield CounterMetricFamily(
            "sonate_sessions_rejected_total", "Session requests refused: every slot taken.", stats.rejected_full
        )
        yield CounterMetricFamily("sonate_chunks_total", "Chunks generated.", metrics.chunks)
        yield CounterMetricFamily("sonate_batches_total", "Batches of chunks computed.", metrics.batches)
        yield CounterMetricFamily("sonate_media_seconds_total", "Seconds of media generated.", metrics.media_seconds)
        yield CounterMetricFamily(
            "sonate_compute_seconds_total", "Seconds spent computing chunks.", metrics.compute_seconds
        )
        for histogram in (latency.compute, latency.ttfa, latency.batch_spans, latency.first_audio_spans):
            yield from histogram.collect()
        yield CounterMetricFamily(
            "sonate_underruns_total", "Playout underruns (media expected but not ready).", self.engine.underruns
        )
        yield GaugeMetricFamily("sonate_realtime_factor", "Compute seconds per media second so far.", metrics.rtf)
        viewers = GaugeMetricFamily("sonate_viewers", "Viewers watching media, by transport.", labels=["transport"])
        viewers.add_metric(["webrtc"], sum(h.webrtc_viewers for h in hosted))
        viewers.add_metric(["websocket"], sum(h.media_websockets for h in hosted))
        yield viewers
        yield GaugeMetricFamily("sonate_websockets", "Open session websockets.", sum(h.websockets for h in hosted))
        yield CounterMetricFamily(
            "sonate_ws_media_dropped_total", "Websocket media messages dropped for slow clients.", stats.media_dropped
        )


def metrics_registry(engine: Engine, registry: Registry) -> CollectorRegistry:
    """The Prometheus registry of one app: its figures, read from `engine` and `registry` at each scrape."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(ServerCollector(engine, registry))
    return collectors
