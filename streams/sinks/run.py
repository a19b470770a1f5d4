"""The sink process (``phrasestream sink``): predictions in the main thread, rollups and shadows in others.

Three :class:`~streams.sinks.base.SinkRunner` s share the process, each with its own consumer
group, so none sits in another's batches or rebalances:

- predictions from ``predictions.out`` into ``inferences`` (:class:`~streams.sinks.postgres.PostgresSink`),
  in group ``PHRASESTREAM_SINK_GROUP``, with the ``/metrics`` endpoint;
- serving rollups from ``serving.rollups`` into ``serving_rollups``
  (:class:`~streams.sinks.rollups.PostgresRollupSink`), in group ``<PHRASESTREAM_SINK_GROUP>-rollups``;
- shadow predictions from ``predictions.shadow`` into ``shadow_inferences``
  (:func:`~streams.sinks.shadow.shadow_sink`), in group ``<PHRASESTREAM_SINK_GROUP>-shadow``.

Each applies the SQL migrations before its first connection, so a new database gets its tables
before the first write. The order at stop: the predictions' runner finishes and commits its last
batch, then the rollups' and the shadows' runners are stopped and joined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer

from schemas.messages import ShadowPrediction
from schemas.observations import ServingRollup
from schemas.settings import Settings
from streams.sinks.base import SinkRunner, consumer_config
from streams.sinks.postgres import PostgresSink
from streams.sinks.rollups import PostgresRollupSink
from streams.sinks.shadow import shadow_sink


def rollup_runner(settings: Settings, on_connect: Callable[[], object] | None = None, sink: Any = None,
                  consumer: Consumer | None = None, producer: Producer | None = None) -> SinkRunner:
    """Return the runner that stores ``serving.rollups`` in ``serving_rollups`` (see the module docstring)."""
    if sink is None:
        sink = PostgresRollupSink(settings.dsn, settings.pg_schema, on_connect=on_connect)
    return SinkRunner(settings, sink, consumer, producer, topic=settings.topic_rollups,
                      group=f"{settings.sink_group}-rollups", parse=ServingRollup.model_validate_json,
                      what="serving rollup")


def shadow_runner(settings: Settings, on_connect: Callable[[], object] | None = None, sink: Any = None,
                  consumer: Consumer | None = None, producer: Producer | None = None) -> SinkRunner:
    """Return the runner that stores ``predictions.shadow`` in ``shadow_inferences`` (see the module docstring)."""
    if sink is None:
        sink = shadow_sink(settings.dsn, settings.pg_schema, on_connect=on_connect)
    return SinkRunner(settings, sink, consumer, producer, topic=settings.topic_shadow,
                      group=f"{settings.sink_group}-shadow", parse=ShadowPrediction.model_validate_json,
                      what="shadow prediction")


def run_sink(settings: Settings) -> None:
    """Run the PostgreSQL sink until SIGINT/SIGTERM: predictions here, rollups and shadows in threads.

    The other runners stop after the predictions' runner has finished its last batch. Its
    ``/metrics`` (``streams.metrics.SinkMetrics``) count the predictions' runner only.
    """
    from ops.postgres.migrations import apply_migrations
    from streams.metrics import SinkMetrics, serve_metrics

    metrics = SinkMetrics()
    sink = PostgresSink(settings.dsn, settings.pg_schema, on_connect=lambda: apply_migrations(settings))
    # librdkafka's statistics (every 5 s, from within consume()) carry each partition's lag
    consumer = Consumer({**consumer_config(settings), "statistics.interval.ms": 5000,
                         "stats_cb": metrics.on_kafka_stats})
    runner = SinkRunner(settings, metrics.timed(sink), consumer=consumer)
    metrics.watch(lambda: runner.stats)
    serve_metrics(metrics.registry, settings.metrics_host, settings.sink_metrics_port, "sink")
    others = [rollup_runner(settings, on_connect=lambda: apply_migrations(settings)),
              shadow_runner(settings, on_connect=lambda: apply_migrations(settings))]
    threads = [threading.Thread(target=other.serve, name=f"sink-{name}", daemon=True)
               for other, name in zip(others, ("rollups", "shadow"), strict=True)]
    for thread in threads:
        thread.start()
    try:
        runner.run()
    finally:
        for other in others:
            other.stop()
        for thread in threads:
            thread.join(timeout=settings.sink_retry_seconds + 30.0)
