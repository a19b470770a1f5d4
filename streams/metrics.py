"""Prometheus metrics of the worker and the sink, each in a registry of its own.

Each process builds one :class:`WorkerMetrics` or :class:`SinkMetrics`; each holds a dedicated
``CollectorRegistry`` (not prometheus-client's global one), so tests and imports never collide,
and :func:`serve_metrics` serves it on ``/metrics`` (``PHRASESTREAM_WORKER_METRICS_PORT``,
``PHRASESTREAM_SINK_METRICS_PORT``, on ``PHRASESTREAM_METRICS_HOST``; port 0 disables it).

Keeping the hot path cheap (the worker serves 1,000+ phrases/s):

- counters move once per batch (``inc(len(batch))``), never once per message;
- the timings are per batch (one embedder call, one call of each head);
- what other objects already count is read when Prometheus scrapes, by a collector, at no
  cost in between: the embedding cache's hits, misses and size, the live head versions, and
  the sink's :class:`~streams.sinks.base.SinkStats`;
- the end-to-end latency, one value per prediction, goes into a :class:`BatchHistogram`:
  numpy sorts a whole batch into the buckets at once.

docs/observability.md lists every metric.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from schemas.messages import ErrorKind

log = logging.getLogger("phrasestream.metrics")

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of the per-batch timings (embedder, heads, database writes), seconds."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Buckets of the end-to-end latency, seconds: up to 5 minutes (a backlog, a replay) before +Inf."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Buckets of batch sizes (``PHRASESTREAM_EMBED_BATCH_MAX``, the smallest under load, is 32 by default)."""


class BatchHistogram(Collector):
    """A histogram that takes a whole array of observations at once.

    ``prometheus_client.Histogram.observe`` takes a lock and finds the bucket for each value;
    here one ``np.searchsorted`` places a batch. Buckets are upper bounds, inclusive (``le``),
    as in Prometheus. Exposed like a ``Histogram`` of the same name.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Add every value of ``values`` to the histogram."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        index = np.searchsorted(self._bounds, values, side="left")  # first bound >= value
        counts = np.bincount(index, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(_le(b), float(c)) for b, c in zip(self._bounds, cumulative)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _le(bound: float) -> str:
    """Print a bucket bound as prometheus-client does (``0.5``, ``1.0``)."""
    return repr(float(bound))


class CallbackCollector(Collector):
    """Read values when Prometheus scrapes, from functions given at start (no cost in between)."""

    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Any]:
        try:
            yield from self._collect()
        except Exception:  # a scrape never breaks the process; say why once per failing scrape
            log.warning("a metrics collector failed", exc_info=True)


class WorkerMetrics:
    """The worker's metrics (``phrasestream worker``); ``registry`` is what ``/metrics`` serves.

    The agents call :meth:`phrases_read` per input batch, :meth:`dead_letter` per dead letter
    (rare), :meth:`batch_served` per embed-and-classify batch and :meth:`published` after the
    batch's predictions are acknowledged. :meth:`watch` connects the cache and the head set,
    read at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.phrases_in = Counter("phrasestream_phrases_in_total",
                                  "Messages read from the input topic, valid or not.", registry=r)
        self.predictions = Counter("phrasestream_predictions_total",
                                   "Predictions published to the predictions topic, per head.",
                                   ["region", "model"], registry=r)
        self.dead_letters = Counter("phrasestream_dead_letters_total",
                                    "Messages the worker sent to the dead-letter topic, by error kind.",
                                    ["kind"], registry=r)
        for kind in ErrorKind:  # every kind shows, at 0, before its first letter
            self.dead_letters.labels(kind.value)
        self.batch_size = Histogram("phrasestream_batch_size", "Phrases per embed-and-classify batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.embed_seconds = Histogram("phrasestream_embed_seconds",
                                       "Time of one embedder call on a batch's cache misses.",
                                       buckets=SECONDS_BUCKETS, registry=r)
        self.head_seconds = Histogram("phrasestream_head_seconds",
                                      "Time of one head on the rows of a batch that asked for it.",
                                      ["region", "model"], buckets=SECONDS_BUCKETS, registry=r)
        self.review_routed = Counter("phrasestream_review_routed_total",
                                     "Answers routed to the review topic, per head and reason (an answer with "
                                     "two reasons counts under each).", ["region", "model", "reason"], registry=r)
        self.review_dropped = Counter("phrasestream_review_dropped_total",
                                      "Answers the review rule picked but its hourly budget dropped, per head and "
                                      "kind (doubtful, random).", ["region", "model", "kind"], registry=r)
        self.shadow_predictions = Counter("phrasestream_shadow_predictions_total",
                                          "Shadow heads' answers published to the shadow topic, per head and "
                                          "shadow version.", ["region", "model", "version"], registry=r)
        self.shadow_failures = Counter("phrasestream_shadow_failures_total",
                                       "Batches on which a shadow head failed (the live answers were served).",
                                       ["region", "model", "version"], registry=r)
        self.evidence_rows = Counter("phrasestream_evidence_rows_total",
                                     "Answers given evidence (explain phrases and routed answers; computed, or remembered by the evidence memo).",
                                     registry=r)
        self.latency = BatchHistogram("phrasestream_latency_seconds",
                                      "End-to-end latency of each prediction: from the input's ts "
                                      "(or from its receipt when it has none) to the broker's acknowledgement.",
                                      LATENCY_BUCKETS)
        r.register(self.latency)

    def watch(self, cache: Any | None = None, heads: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
              shadows: Callable[[], Mapping[tuple[str, str], tuple[Any, Any]]] | None = None) -> None:
        """Read the cache's ``hits``/``misses``/``len``, the live heads (``ref.version``) and the shadow
        heads (``streams.heads.HeadSet.shadows``) at scrape time.

        A shadow head shows as ``phrasestream_shadow_head`` (its version and percent), and its
        ``phrasestream_shadow_predictions_total`` series exists from 0 on: a shadow that gets no
        traffic is a flat line, not a missing one.
        """
        if cache is not None:
            def cache_families() -> Iterable[Any]:
                yield CounterMetricFamily("phrasestream_cache_hits", "Embedding cache lookups that hit.",
                                          value=cache.hits)
                yield CounterMetricFamily("phrasestream_cache_misses", "Embedding cache lookups that missed.",
                                          value=cache.misses)
                yield GaugeMetricFamily("phrasestream_cache_entries", "Entries in the embedding cache.",
                                        value=len(cache))
            self.registry.register(CallbackCollector(cache_families))
        if heads is not None:
            def head_families() -> Iterable[Any]:
                family = InfoMetricFamily("phrasestream_head", "The live version of each head.",
                                          labels=["region", "model"])
                for region, models in sorted(heads().items()):
                    for model, head in sorted(models.items()):
                        family.add_metric([region, model], {"version": str(head.ref.version)})
                yield family
            self.registry.register(CallbackCollector(head_families))
        if shadows is not None:
            def shadow_families() -> Iterable[Any]:
                family = InfoMetricFamily("phrasestream_shadow_head", "The shadow head run beside each live head.",
                                          labels=["region", "model"])
                for (region, model), (_head, spec) in sorted(shadows().items()):
                    family.add_metric([region, model], {"version": str(spec.version), "percent": f"{spec.percent:g}"})
                    self.shadow_predictions.labels(region, model, str(spec.version))  # the series, from 0
                yield family
            self.registry.register(CallbackCollector(shadow_families))

    def phrases_read(self, count: int) -> None:
        """Count ``count`` messages read from the input topic."""
        if count:
            self.phrases_in.inc(count)

    def dead_letter(self, kind: ErrorKind | str) -> None:
        """Count one dead letter of ``kind``."""
        self.dead_letters.labels(kind.value if isinstance(kind, ErrorKind) else kind).inc()

    def batch_served(self, size: int, served: Any) -> None:
        """Record one embed-and-classify batch: its size, its timings and its predictions per head.

        ``served`` is a ``streams.pipeline.Served``; its predictions are counted from its head
        runs (rows per head), not one by one.
        """
        self.batch_size.observe(size)
        for seconds in served.embed_seconds:
            self.embed_seconds.observe(seconds)
        for run in served.head_runs:  # one prediction per row of each head run
            self.head_seconds.labels(run.region, run.model).observe(run.seconds)
            self.predictions.labels(run.region, run.model).inc(run.rows)
        extra = getattr(served, "extra", None)
        if extra is not None:
            self.expert_counts(extra)

    def expert_counts(self, extra: Any) -> None:
        """Count a batch's review items, budget drops and shadow answers (a ``streams.routing.ExpertOut``)."""
        for (region, model, reason), n in extra.routed.items():
            self.review_routed.labels(region, model, reason).inc(n)
        for (region, model, kind), n in extra.dropped.items():
            self.review_dropped.labels(region, model, kind).inc(n)
        for (region, model, version), n in extra.shadow_counts.items():
            self.shadow_predictions.labels(region, model, version).inc(n)
        for (region, model, version), n in extra.shadow_failures.items():
            self.shadow_failures.labels(region, model, version).inc(n)
        if extra.evidence_rows:
            self.evidence_rows.inc(extra.evidence_rows)

    def published(self, predictions: Sequence[Any], now: float | None = None) -> None:
        """Observe the end-to-end latency of predictions the broker has acknowledged.

        From each prediction's ``ts`` (the producer's time) when given, else from
        ``received_at``; a ``ts`` in the future (clock skew) counts as 0. A
        ``streams.pipeline.Published`` is read through its ``sent`` records (no model parsed).
        """
        if not predictions:
            return
        now = time.time() if now is None else now
        records = getattr(predictions, "sent", predictions)
        starts = np.fromiter(((p.ts or p.received_at).timestamp() for p in records), dtype=np.float64,
                             count=len(records))
        self.latency.observe_many(np.maximum(now - starts, 0.0))

    def summary(self) -> dict[str, float]:
        """Return the totals that the worker logs every minute, read from the metrics."""
        found = {name: 0.0 for name in ("phrases_in", "predictions", "dead_letters", "cache_hits", "cache_misses")}
        for family in self.registry.collect():
            key = family.name.removeprefix("phrasestream_")
            if key in found:
                found[key] = sum(s.value for s in family.samples if s.name.endswith("_total"))
        return found


class SinkMetrics:
    """The sink's metrics (``phrasestream sink``); ``registry`` is what ``/metrics`` serves.

    Rows, retries and dead letters are read from the runner's ``SinkStats`` at scrape time
    (:meth:`watch`); :meth:`timed` wraps the sink to time its writes; :meth:`on_kafka_stats`
    is the consumer's ``stats_cb`` and sets the consumer lag per partition.
    """

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.write_seconds = Histogram("phrasestream_sink_write_seconds",
                                       "Time of one successful batch write to PostgreSQL (one transaction).",
                                       buckets=SECONDS_BUCKETS, registry=r)
        self.lag = Gauge("phrasestream_sink_consumer_lag",
                         "Messages of the predictions topic not yet committed by the sink, per partition "
                         "(from librdkafka's statistics).", ["topic", "partition"], registry=r)

    def watch(self, stats: Callable[[], Any]) -> None:
        """Expose the counts of ``stats()`` (a ``streams.sinks.base.SinkStats``) at scrape time."""
        def families() -> Iterable[Any]:
            s = stats()
            yield CounterMetricFamily("phrasestream_sink_rows_written", "Rows inserted into the inferences table.",
                                      value=s.stored)
            yield CounterMetricFamily("phrasestream_sink_rows_duplicate",
                                      "Predictions already stored (delivered twice), not inserted again.",
                                      value=s.duplicates)
            yield CounterMetricFamily("phrasestream_sink_batches", "Batches stored and committed.", value=s.batches)
            yield CounterMetricFamily("phrasestream_sink_retries", "Database writes retried after a failure.",
                                      value=s.retries)
            yield CounterMetricFamily("phrasestream_sink_rewinds",
                                      "Batches read again after the database kept failing.", value=s.rewinds)
            letters = CounterMetricFamily("phrasestream_sink_dead_letters",
                                          "Records the sink sent to the dead-letter topic, by error kind.",
                                          labels=["kind"])
            letters.add_metric([ErrorKind.WRONG_TYPE.value], s.invalid)
            letters.add_metric([ErrorKind.REJECTED_BY_DATABASE.value], s.refused)
            yield letters
        self.registry.register(CallbackCollector(families))

    def timed(self, sink: Any) -> TimedSink:
        """Return ``sink`` with each successful ``write`` timed into ``phrasestream_sink_write_seconds``."""
        return TimedSink(sink, self.write_seconds)

    def on_kafka_stats(self, stats_json: str) -> None:
        """Set the lag gauges from librdkafka's statistics (``statistics.interval.ms``, ``stats_cb``).

        A partition's ``consumer_lag`` is its high watermark minus the group's committed
        offset; librdkafka says -1 while it does not know both, and then the gauge keeps its
        last value.
        """
        try:
            stats = json.loads(stats_json)
            for topic, t in stats.get("topics", {}).items():
                for partition, p in t.get("partitions", {}).items():
                    lag = p.get("consumer_lag", -1)
                    if partition != "-1" and lag is not None and lag >= 0:
                        self.lag.labels(topic, partition).set(lag)
        except (ValueError, AttributeError, TypeError):
            log.warning("unreadable librdkafka statistics; consumer lag not updated", exc_info=True)


class TimedSink:
    """A ``streams.sinks.base.Sink`` whose successful writes are timed; everything else passes through."""

    def __init__(self, sink: Any, histogram: Histogram) -> None:
        self._sink = sink
        self._histogram = histogram

    def prepare(self, batch: Sequence[Any]) -> Sequence[Any]:
        return self._sink.prepare(batch)

    def write(self, batch: Sequence[Any]) -> int:
        start = time.perf_counter()
        new = self._sink.write(batch)
        self._histogram.observe(time.perf_counter() - start)
        return new

    def close(self) -> None:
        self._sink.close()


def serve_metrics(registry: CollectorRegistry, host: str, port: int, who: str) -> bool:
    """Serve ``registry`` on ``http://host:port/metrics`` in a daemon thread; say whether it serves.

    Port 0 disables it. A port in use (another worker on this machine) is logged once and the
    process goes on without metrics: give each process its own port.
    """
    if port == 0:
        log.info("%s metrics disabled (port 0)", who)
        return False
    # No `*_created` gauge beside every counter and histogram: the text format has no use for
    # them but one more series each (prometheus-client's own switch, process-wide).
    disable_created_metrics()
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("%s metrics: cannot listen on %s:%d (%s); going on without /metrics. Give each %s its "
                    "own port (PHRASESTREAM_%s_METRICS_PORT), or 0 to disable", who, host, port,
                    exc.strerror or exc, who, who.upper())
        return False
    log.info("%s metrics on http://%s:%d/metrics", who, host, port)
    return True
