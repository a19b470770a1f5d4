"""Wire the stream: the one place that builds the Faust app and everything its agents use.

``build_app(settings)`` builds, once, and returns as a :class:`Wiring`: the shared embedder, the
head set (the live heads of every region, following the registry topic ``models.registry``;
``streams.heads``), the embedding cache (a Faust table; ``streams.state``), the topics, and the
two agents, each a loop around its batch step (``streams.worker``):

1. ``validate_and_clean`` reads raw bytes from ``phrases.in``; each message becomes either a
   cleaned phrase on the internal topic ``<app_id>-phrases.cleaned`` or a dead letter on
   ``phrases.dlq`` (:class:`~streams.worker.Cleaner`). It never raises for input.
2. ``embed_and_classify`` takes cleaned phrases in batches, embeds the cache misses in one
   call to the shared embedder (in a worker thread, so the event loop keeps heart-beating),
   runs every requested head on the one embedding, and publishes one prediction per
   (phrase, model) to ``predictions.out`` (:class:`~streams.worker.Server`); beside them, the
   answers each head's review rule routes to ``phrases.review``, shadow heads' answers to
   ``predictions.shadow``, and evidence for phrases that ask for it (``streams.routing``).

Both agents take what their stream holds at once, up to ``PHRASESTREAM_STREAM_BATCH_MAX``
(``faust_compat.take_batches``): one phrase alone is served without waiting, and batches grow
with the backlog. Neither waits for the broker after a batch: each batch's outputs are
acknowledged in the background, its inputs acked then (``streams.kafka.outbox``), and
committed soon after (``streams.kafka.committer``).

A timer publishes the serving rollups (``streams.rollups``: per head and hour, the count,
embedding sum and unknown-word-piece rates of what was served, for drift reports) to
``serving.rollups`` every ``PHRASESTREAM_ROLLUP_INTERVAL_SECONDS``, with a producer of its own.

Start order: the heads load first (a worker with no head refuses to start), then Faust's:
producer, table recovery of the cache, then the consumers and agents. At stop the agents and
consumer stop first and the producer last, so every prediction in flight is flushed. Then,
once Faust has stopped (``run_worker``), the last serving rollups are published, so they
include the last batch, and the head set stops following the registry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import faust
from confluent_kafka import KafkaException

from ops.daemons import READY_LINE
from ops.kafka.clients import faust_credentials
from ops.kafka.topics import create_topic
from schemas.settings import Settings
from streams.decode import Limits
from streams.heads import HeadSet
from streams.kafka.committer import Committer
from streams.kafka.continuity import OffsetGuard
from streams.kafka.faust_compat import changelog_metadata, set_fetch_wait, take_batches
from streams.kafka.membership import faust_broker_url, group_instance_id, worker_group_settings
from streams.kafka.outbox import Outbox
from streams.metrics import WorkerMetrics, serve_metrics
from streams.pipeline import Embedder
from streams.rollups import RollupPublisher, Rollups, rollups_for
from streams.routing import Expert
from streams.state.cache import EmbeddingCache, MappingBackend
from streams.state.memos import AnswerMemo, EvidenceMemo
from streams.worker import STALL_CHECK_SECONDS, Cleaner, Server, Worker, check_stalls, log_totals

log = logging.getLogger("phrasestream.worker")

# The worker was this one module once: these names are still imported from here (the CLI, the tests).
__all__ = ["READY_LINE", "Wiring", "build_app", "group_instance_id", "run_worker"]


@dataclass
class Wiring:
    """What :func:`build_app` built, each part once: the Faust app and what its agents serve with."""

    settings: Settings
    app: faust.App
    embedder: Embedder
    heads: HeadSet
    cache: EmbeddingCache
    memo: AnswerMemo
    rollups: Rollups
    publisher: RollupPublisher
    metrics: WorkerMetrics
    cleaner: Cleaner
    """``validate_and_clean``'s step, with its outbox and offset guard."""
    server: Server
    """``embed_and_classify``'s step, with its outbox and offset guard."""


def faust_app(settings: Settings) -> faust.App:
    """Return the worker's Faust app: raw bytes in and out, the cache table in memory, static membership."""
    datadir = Path(settings.home).expanduser().resolve() / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.bootstrap),
        broker_credentials=faust_credentials(settings),  # None for PLAINTEXT; see ops.kafka.clients
        # The cache table lives in memory and is rebuilt from its changelog at start. Faust's
        # rocksdb store cannot serve it: its writes need the current event's partition, and
        # micro-batches (take) have no current event.
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions_in,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
        table_standby_replicas=0,
        # Faust's own producer now carries only the cache's changelog (entries of 3.8 KB):
        # aiokafka's default batch of 16 KB would hold four of them.
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        # Static membership: a restarted worker with the same id takes its partitions back at
        # once, without waiting for its old session to expire; the short session hands a dead
        # worker's partitions to the others within seconds (see worker_group_settings).
        **worker_group_settings(settings),
    )


def build_app(settings: Settings, embedder: Embedder | None = None) -> Wiring:
    """Build the Faust app with its embedder, heads, cache and agents (see the module doc)."""
    if embedder is None:
        from models.embedder import load_embedder

        embedder = load_embedder(settings)
    heads = HeadSet(settings, embedder.version, embedder.precision)  # refuses heads of another version or precision
    heads.start()

    cleaned_name = f"{settings.app_id}-phrases.cleaned"
    app = faust_app(settings)
    topic_in = app.topic(settings.topic_in, key_type=bytes, value_type=bytes)
    topic_cleaned = app.topic(cleaned_name, key_type=bytes, value_type=bytes,
                              partitions=settings.partitions_in, internal=True)
    table = app.Table("embedding-cache", default=None, partitions=settings.partitions_in, use_partitioner=True,
                      key_type=bytes, value_type=bytes)
    # Faust creates its internal topics at start, but its first partition assignment can run
    # before the broker's metadata shows them ("Ignoring missing topic"); the agent then gets no
    # partition of the cleaned topic until the next metadata refresh, 5 minutes later, and the
    # table's recovery logs "not found in cluster metadata" errors meanwhile. Created here first,
    # and waited for until every partition has a leader, they are there for the first assignment.
    for name, config in ((cleaned_name, {}), (table.changelog_topic.get_topic_name(), {"cleanup.policy": "compact"})):
        try:
            create_topic(settings, name, settings.partitions_in, config)
        except KafkaException as exc:
            log.warning("cannot create %s before the start (%s); Faust creates it", name, exc)
    cache_backend = MappingBackend(table, bytes_keys=True)
    # keyed by the features' id (the version, and the precision unless fp32): precisions never share entries
    cache = EmbeddingCache(cache_backend, embedder.features_id, embedder.feature_dim, settings.cache_max_entries)
    metrics = WorkerMetrics()
    metrics.watch(cache=cache, heads=lambda: heads.heads, shadows=lambda: heads.shadows)
    memo = AnswerMemo(settings.answer_memo_entries)
    # The unknown-word-piece memo has the embedding cache's bound: see streams.state.memos.UnknownRates.
    rollups = rollups_for(embedder, settings.cache_max_entries)
    publisher = RollupPublisher(settings, rollups)
    cleaned_topic = topic_cleaned.get_topic_name()
    # Each agent produces its outputs with a producer of its own and goes on to its next batch;
    # a batch's input events are acked once the broker has every output of it (see Outbox),
    # so a commit never gets ahead of the outputs. Blocking steps (embedding, heads) run in
    # threads: asyncio.to_thread.
    committer = Committer(app, settings.commit_interval_ms / 1000.0)
    cleaner = Cleaner(app=app, committer=committer, settings=settings, guard=OffsetGuard("validate_and_clean", topic_in.get_topic_name()),
                      outbox=Outbox(settings, "clean"), metrics=metrics, offload=asyncio.to_thread, heads=heads,
                      limits=Limits(settings.max_text_chars, settings.max_message_bytes),
                      cleaned_topic=cleaned_topic, embedder_version=embedder.features_id)
    server = Server(app=app, committer=committer, settings=settings, guard=OffsetGuard("embed_and_classify", cleaned_topic),
                    outbox=Outbox(settings, "serve"), metrics=metrics, offload=asyncio.to_thread,
                    embedder=embedder, heads=heads, cache=cache, cache_backend=cache_backend, memo=memo,
                    observe=rollups.observe, cleaned_topic=cleaned_topic,
                    expert=Expert(heads, memo=EvidenceMemo(settings.answer_memo_entries // 10)))


    @app.agent(topic_in)
    async def validate_and_clean(stream: faust.StreamT[bytes]) -> None:
        if not set_fetch_wait(app, settings.fetch_wait_ms / 1000.0):
            log.warning("the consumer's fetch wait stays Faust's 1.5 s: its consumer has not started")
        try:
            async for events in take_batches(stream, cleaner.limit):
                await cleaner.run(events)
        finally:  # at stop, before Faust's last commit: ack what the broker has
            cleaner.drain()

    @app.agent(topic_cleaned)
    async def embed_and_classify(stream: faust.StreamT[bytes]) -> None:
        await changelog_metadata(app, table.changelog_topic.get_topic_name())
        try:
            async for events in take_batches(stream, server.limit):
                await server.run(events)
        finally:
            server.drain()

    @app.task
    async def commit_acked() -> None:
        await committer.run()

    @app.timer(interval=STALL_CHECK_SECONDS)
    async def restart_stalled_partitions() -> None:
        await check_stalls((cleaner, server))

    @app.timer(interval=settings.rollup_interval_seconds)
    async def publish_rollups() -> None:
        # produces and waits for the broker (not past the next tick): off the event loop; never raises
        await asyncio.to_thread(publisher.publish, min(5.0, settings.rollup_interval_seconds))

    @app.timer(interval=60.0)
    async def report() -> None:
        log_totals(metrics)

    return Wiring(settings, app, embedder, heads, cache, memo, rollups, publisher, metrics, cleaner, server)


def run_worker(settings: Settings) -> None:
    """Build the app, serve its metrics, and run its worker until SIGINT/SIGTERM; then publish
    the last serving rollups and stop following the registry.

    Logging is the caller's (``ops.logs.configure_logging``): ``override_logging=False`` keeps
    Faust from replacing the root handler with its own, so Faust's, mode's and aiokafka's
    records go through our formatter (text or JSON) like ours, and standard output stays ours.
    """
    wiring = build_app(settings)
    port = settings.worker_metrics_port + settings.worker_index - 1 if settings.worker_metrics_port else 0
    serve_metrics(wiring.metrics.registry, settings.metrics_host, port, "worker")
    try:
        Worker(wiring.app, loglevel=settings.log_level.lower(), quiet=True,
               override_logging=False).execute_from_commandline()
    finally:  # after Faust's stop: the agents are done, so the last deltas hold every batch
        wiring.publisher.close()
        wiring.heads.stop()
