"""Unit tests of streams.metrics: names, counts, histograms and the /metrics endpoint, without Kafka."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.messages import CleanedPhrase, ErrorKind, Prediction
from streams.metrics import BatchHistogram, SinkMetrics, WorkerMetrics, serve_metrics
from streams.pipeline import HeadRun, Served, serve_batch
from streams.sinks.base import SinkStats
from streams.state.cache import EmbeddingCache, MappingBackend

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the registry's exposition text: {(sample name, sorted labels): value}."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry)[(name, tuple(sorted(labels.items())))]


def prediction(pid: str, model: str, region: str = "global", ts: datetime | None = None,
               received_at: datetime = T0) -> Prediction:
    return Prediction(id=pid, region=region, model=model, model_version="v1", label="a", probability=0.5,
                      top_k=[("a", 0.5)], clean_text="hi", embedder_version="e", cache_hit=False, latency_ms=1.0,
                      received_at=received_at, predicted_at=received_at, ts=ts)


# ------------------------------------------------------------------------------------------ worker


def test_worker_counters_count_phrases_predictions_per_head_and_dead_letters_per_kind():
    m = WorkerMetrics(process=False)
    m.phrases_read(5)
    m.phrases_read(0)
    m.dead_letter(ErrorKind.INVALID_JSON)
    m.dead_letter(ErrorKind.INVALID_JSON)
    m.dead_letter("unknown_model")
    served = Served(head_runs=[HeadRun("global", "intent", 2, 0.01), HeadRun("global", "domain", 1, 0.01)])
    m.batch_served(2, served)

    r = m.registry
    assert value(r, "phrasestream_phrases_in_total") == 5
    assert value(r, "phrasestream_predictions_total", region="global", model="intent") == 2
    assert value(r, "phrasestream_predictions_total", region="global", model="domain") == 1
    assert value(r, "phrasestream_dead_letters_total", kind="invalid_json") == 2
    assert value(r, "phrasestream_dead_letters_total", kind="unknown_model") == 1
    assert value(r, "phrasestream_dead_letters_total", kind="empty_text") == 0  # every kind shows, at 0
    assert value(r, "phrasestream_batch_size_count") == 1 and value(r, "phrasestream_batch_size_sum") == 2
    assert m.summary() == {"phrases_in": 5, "predictions": 3, "dead_letters": 3, "cache_hits": 0, "cache_misses": 0}


def test_worker_batch_timings_go_to_the_embed_and_per_head_histograms():
    m = WorkerMetrics(process=False)
    m.batch_served(4, Served(embed_seconds=[0.2], head_runs=[HeadRun("global", "intent", 4, 0.003),
                                                             HeadRun("global", "domain", 4, 0.004)]))
    m.batch_served(4, Served(head_runs=[HeadRun("global", "intent", 4, 0.02)]))  # all cached: no embedder call

    r = m.registry
    assert value(r, "phrasestream_embed_seconds_count") == 1
    assert value(r, "phrasestream_embed_seconds_sum") == pytest.approx(0.2)
    assert value(r, "phrasestream_head_seconds_count", region="global", model="intent") == 2
    assert value(r, "phrasestream_head_seconds_sum", region="global", model="intent") == pytest.approx(0.023)
    assert value(r, "phrasestream_head_seconds_bucket", region="global", model="intent", le="0.005") == 1


def test_worker_reads_cache_counts_and_live_head_versions_when_scraped():
    cache = EmbeddingCache(MappingBackend({}), "e1", 4, max_entries=10)
    heads: dict = {}
    m = WorkerMetrics(process=False)
    m.watch(cache=cache, heads=lambda: heads)
    cache.get("a")
    cache.put("a", np.ones(4, dtype=np.float32))
    cache.get("a")
    cache.get("a")

    @dataclass
    class Ref:
        version: str

    @dataclass
    class FakeHead:
        ref: Ref

    heads["global"] = {"intent": FakeHead(Ref("intent-v3"))}
    r = m.registry
    assert value(r, "phrasestream_cache_hits_total") == 2
    assert value(r, "phrasestream_cache_misses_total") == 1
    assert value(r, "phrasestream_cache_entries") == 1
    assert value(r, "phrasestream_head_info", region="global", model="intent", version="intent-v3") == 1
    heads["global"] = {"intent": FakeHead(Ref("intent-v4"))}  # a promotion: only the new version shows
    infos = [k for k in samples(r) if k[0] == "phrasestream_head_info"]
    assert infos == [("phrasestream_head_info", (("model", "intent"), ("region", "global"), ("version", "intent-v4")))]


def test_latency_is_measured_from_ts_or_else_from_receipt_and_never_negative():
    m = WorkerMetrics(process=False)
    now = (T0 + timedelta(seconds=10)).timestamp()
    m.published([
        prediction("1", "intent", ts=T0 + timedelta(seconds=9, milliseconds=980)),  # 0.02 s
        prediction("2", "intent", received_at=T0 + timedelta(seconds=9)),  # no ts: 1 s from receipt
        prediction("3", "intent", ts=T0 + timedelta(seconds=20)),  # a ts in the future: 0
    ], now=now)
    r = m.registry
    assert value(r, "phrasestream_latency_seconds_count") == 3
    assert value(r, "phrasestream_latency_seconds_sum") == pytest.approx(1.02, abs=1e-6)
    assert value(r, "phrasestream_latency_seconds_bucket", le="0.005") == 1
    assert value(r, "phrasestream_latency_seconds_bucket", le="0.025") == 2
    assert value(r, "phrasestream_latency_seconds_bucket", le="1.0") == 3


def test_batch_histogram_exposes_exactly_what_a_prometheus_histogram_would():
    buckets = (0.1, 0.5, 1.0, 5.0)
    values = [0.0, 0.1, 0.10001, 0.5, 0.7, 1.0, 4.9, 5.0, 5.1, 100.0, 0.3]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "x", buckets)
    ours.register(batch)
    batch.observe_many(values[:4])
    batch.observe_many(np.array(values[4:]))
    batch.observe_many([])
    reference = Histogram("x_seconds", "x", buckets=buckets, registry=theirs)
    for v in values:
        reference.observe(v)
    created = "x_seconds_created"
    assert {k: v for k, v in samples(ours).items() if k[0] != created} == pytest.approx(
        {k: v for k, v in samples(theirs).items() if k[0] != created})


def test_serve_batch_reports_an_embed_time_only_when_it_embeds_and_one_time_per_head():
    class Embedder:
        version, feature_dim = "e", 2

        def features_batch(self, texts):
            return np.ones((len(texts), 2), dtype=np.float32)

    @dataclass
    class Answer:
        label: str = "a"
        probability: float = 1.0
        top_k: tuple = (("a", 1.0),)

    class Head:
        def __init__(self, model: str) -> None:
            self.ref = type("Ref", (), {"region": "g", "model": model, "version": "v1"})()

        def predict(self, features, top_k, texts=None):
            return [Answer() for _ in range(len(features))]

    heads = {"g": {"m1": Head("m1"), "m2": Head("m2")}}
    cache = EmbeddingCache(MappingBackend({}), "e", 2, max_entries=10)
    raw = [CleanedPhrase(id=str(i), region="g", models=["m1", "m2"], clean_text="hi",
                         received_at=T0).to_bytes() for i in range(3)]
    first = asyncio.run(serve_batch(raw, Embedder(), cache, heads, top_k=1))
    again = asyncio.run(serve_batch(raw, Embedder(), cache, heads, top_k=1))
    assert len(first.embed_seconds) == 1 and first.embed_seconds[0] >= 0
    assert again.embed_seconds == []  # every text cached: the embedder was not called
    assert sorted((r.region, r.model, r.rows) for r in first.head_runs) == [("g", "m1", 3), ("g", "m2", 3)]
    assert len(first.predictions) == sum(r.rows for r in first.head_runs)


# ------------------------------------------------------------------------------------------ sink


def test_sink_counts_come_from_its_stats_at_scrape_time():
    stats = SinkStats()
    m = SinkMetrics(process=False)
    m.watch(lambda: stats)
    stats.stored, stats.duplicates, stats.retries, stats.invalid, stats.refused, stats.batches = 7, 2, 3, 1, 4, 5
    r = m.registry
    assert value(r, "phrasestream_sink_rows_written_total") == 7
    assert value(r, "phrasestream_sink_rows_duplicate_total") == 2
    assert value(r, "phrasestream_sink_retries_total") == 3
    assert value(r, "phrasestream_sink_batches_total") == 5
    assert value(r, "phrasestream_sink_dead_letters_total", kind="wrong_type") == 1
    assert value(r, "phrasestream_sink_dead_letters_total", kind="rejected_by_database") == 4


def test_the_timed_sink_times_successful_writes_and_passes_everything_through():
    class Sink:
        closed = False

        def prepare(self, batch):
            return [*batch, "prepared"]

        def write(self, batch):
            if not batch:
                raise ValueError("refused")
            return len(batch)

        def close(self):
            self.closed = True

    m = SinkMetrics(process=False)
    inner = Sink()
    sink = m.timed(inner)
    assert sink.prepare(["a"]) == ["a", "prepared"]
    assert sink.write(["a", "b"]) == 2
    with pytest.raises(ValueError):
        sink.write([])
    sink.close()
    assert inner.closed
    assert value(m.registry, "phrasestream_sink_write_seconds_count") == 1


def test_consumer_lag_per_partition_comes_from_librdkafka_statistics():
    m = SinkMetrics(process=False)
    stats = {"topics": {"predictions.out": {"partitions": {
        "0": {"consumer_lag": 12}, "1": {"consumer_lag": 0}, "2": {"consumer_lag": -1}, "-1": {"consumer_lag": 5}}}}}
    m.on_kafka_stats(json.dumps(stats))
    m.on_kafka_stats("not json")  # logged, not raised
    r = m.registry
    assert value(r, "phrasestream_sink_consumer_lag", topic="predictions.out", partition="0") == 12
    assert value(r, "phrasestream_sink_consumer_lag", topic="predictions.out", partition="1") == 0
    lags = {k for k in samples(r) if k[0] == "phrasestream_sink_consumer_lag"}
    assert len(lags) == 2  # unknown (-1) and the internal "-1" partition are left out


# ------------------------------------------------------------------------------------------ serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_are_served_over_http_and_a_port_in_use_is_logged_not_raised(caplog):
    m = WorkerMetrics(process=False)
    m.phrases_read(3)
    port = free_port()
    assert serve_metrics(m.registry, "127.0.0.1", port, "worker")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "phrasestream_phrases_in_total 3.0" in body

    other = WorkerMetrics(process=False)
    with caplog.at_level("WARNING", logger="phrasestream.metrics"):
        assert not serve_metrics(other.registry, "127.0.0.1", port, "worker")
    [record] = [r for r in caplog.records if "going on without /metrics" in r.getMessage()]
    assert "PHRASESTREAM_WORKER_METRICS_PORT" in record.getMessage()


def test_port_zero_disables_the_endpoint():
    assert not serve_metrics(WorkerMetrics(process=False).registry, "127.0.0.1", 0, "sink")


def test_two_processes_metrics_do_not_share_a_registry():
    a, b = WorkerMetrics(), WorkerMetrics()  # no "duplicated timeseries" error: each has its own
    a.phrases_read(1)
    assert value(b.registry, "phrasestream_phrases_in_total") == 0
    assert ("process_cpu_seconds_total", ()) in samples(a.registry)
