"""Wire the stream: the one place that builds the Faust app and everything its agents use.

``build_app(settings)`` builds, once: the shared embedder, the head set (active heads of
every region, re-read when the registry changes), the embedding cache (a Faust table), the
topics, and the two agents:

1. ``validate_and_clean`` reads raw bytes from ``phrases.in``; each message becomes either a
   cleaned phrase on the internal topic ``<app_id>-phrases.cleaned`` or a dead letter on
   ``phrases.dlq``. It never raises for input.
2. ``embed_and_classify`` takes cleaned phrases in micro-batches (``take(max, within)``),
   embeds the cache misses in one call to the shared embedder (in a worker thread, so the
   event loop keeps heart-beating), runs every requested head on the one embedding, and
   publishes one prediction per (phrase, model) to ``predictions.out``.

Start order (Faust's): producer, then table recovery of the cache, then the consumers and
agents; at stop the agents and consumer stop first and the producer last, so every
prediction in flight is flushed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import faust

from models.heads import Head
from models.registry import Registry
from schemas.messages import DeadLetter, ErrorKind
from schemas.settings import Settings
from streams.cache import LRUCache, MappingBackend
from streams.decode import Limits, Source, decode_phrase
from streams.pipeline import Embedder, serve_batch

log = logging.getLogger("phrasestream.worker")


class HeadSet:
    """Hold the active heads of every region; re-read them when the registry file changes."""

    def __init__(self, registry: Registry, embedder_version: str) -> None:
        self._registry = registry
        self._embedder_version = embedder_version
        self._stamp: float | None = None
        self.heads: dict[str, dict[str, Head]] = {}
        self.reload()

    @property
    def known(self) -> dict[str, list[str]]:
        """Map each region to the names of its active heads."""
        return {region: sorted(models) for region, models in self.heads.items()}

    def _registry_stamp(self) -> float | None:
        path = self._registry.path
        return path.stat().st_mtime if path.exists() else None

    def reload(self) -> bool:
        """Load the active heads again if the registry changed; say whether it did."""
        stamp = self._registry_stamp()
        if stamp == self._stamp and self.heads:
            return False
        heads = self._registry.load_active(embedder_version=self._embedder_version)
        if not heads:
            msg = f"no active heads under {self._registry.path}; run `phrasestream train` first"
            raise RuntimeError(msg)
        self.heads, self._stamp = heads, stamp
        log.info("active heads: %s", {r: {m: str(h.ref) for m, h in ms.items()} for r, ms in heads.items()})
        return True


def faust_broker_url(bootstrap: str) -> str:
    """Return Faust's broker URL for comma-separated ``host:port`` servers."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip())


async def changelog_metadata(app: faust.App, topic: str) -> None:
    """Wait until the producer knows the partitions of the cache's changelog topic.

    The cache table routes keys with the producer's partitioner (``use_partitioner``), and
    aiokafka's partitioner reads partitions from cached metadata without fetching it: the
    first write to a changelog the producer has not seen yet fails. Faust has no public
    call for this, so we ask its aiokafka producer directly.
    """
    producer = app.producer._ensure_producer()  # faust's aiokafka driver; no public equivalent
    await producer.partitions_for(topic)


def build_app(settings: Settings, embedder: Embedder | None = None, registry: Registry | None = None) -> faust.App:
    """Build the Faust app with its embedder, heads, cache and agents (see the module doc)."""
    if embedder is None:
        from models.embedder import load_embedder

        embedder = load_embedder(settings)
    registry = registry or Registry(settings.models_root)
    head_set = HeadSet(registry, embedder.version)
    limits = Limits(settings.max_text_chars, settings.max_message_bytes)

    datadir = Path(settings.home).expanduser().resolve() / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.bootstrap),
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
    )
    topic_in = app.topic(settings.topic_in, key_type=bytes, value_type=bytes)
    topic_out = app.topic(settings.topic_out, key_type=bytes, value_type=bytes)
    topic_dlq = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes)
    topic_cleaned = app.topic(
        f"{settings.app_id}-phrases.cleaned",
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions_in,
        internal=True,
    )
    table = app.Table(
        "embedding-cache",
        default=None,
        partitions=settings.partitions_in,
        use_partitioner=True,
        key_type=bytes,
        value_type=bytes,
    )
    cache_backend = MappingBackend(table, bytes_keys=True)
    cache = LRUCache(cache_backend, embedder.version, embedder.feature_dim, settings.cache_max_entries)
    counts = {"phrases": 0, "dlq": 0, "predictions": 0}

    async def dead_letter(letter: DeadLetter) -> None:
        counts["dlq"] += 1
        key = letter.id.encode() if letter.id else None
        log.info("dead letter %s: %s", letter.error_kind.value, letter.reason)
        await topic_dlq.send(key=key, value=letter.to_bytes())

    @app.agent(topic_in)
    async def validate_and_clean(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            message = event.message
            source = Source(message.topic, message.partition, message.offset)
            try:
                result = decode_phrase(event.value, head_set.known, source, limits)
            except Exception as exc:  # a bug, not bad input: keep the message and go on
                log.exception("decode failed")
                result = DeadLetter.of(ErrorKind.INTERNAL, f"internal error while decoding: {exc!r}",
                                       event.value, source.topic, source.partition, source.offset)
            if isinstance(result, DeadLetter):
                await dead_letter(result)
            else:
                counts["phrases"] += 1
                await topic_cleaned.send(key=result.id.encode(), value=result.to_bytes())

    @app.agent(topic_cleaned)
    async def embed_and_classify(stream):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()

        def offload(fn, *args):  # type: ignore[no-untyped-def]
            return loop.run_in_executor(None, fn, *args)

        within = settings.embed_batch_within_ms / 1000.0
        cleaned_topic = topic_cleaned.get_topic_name()
        await changelog_metadata(app, table.changelog_topic.get_topic_name())
        adopted = False
        async for values in stream.take(settings.embed_batch_max, within=within):
            if not adopted:  # the table is recovered before the first event flows
                adopted = True
                evicted = cache.adopt(cache_backend.keys())
                log.info("embedding cache: %d entries recovered, %d evicted", len(cache), evicted)
            served = await serve_batch(values, embedder, cache, head_set.heads, settings.top_k, offload)
            for failure in served.failures:
                await dead_letter(DeadLetter.of(failure.kind, failure.reason, failure.raw, cleaned_topic, id=failure.id))
            for prediction in served.predictions:
                await topic_out.send(key=prediction.id.encode(), value=prediction.to_bytes())
            counts["predictions"] += len(served.predictions)

    @app.timer(interval=10.0)
    async def reload_heads() -> None:
        try:  # loading heads reads and hashes files: keep it off the event loop
            await asyncio.get_running_loop().run_in_executor(None, head_set.reload)
        except Exception:  # a broken new version must not stop serving the old one
            log.exception("could not reload heads; serving the previous ones")

    @app.timer(interval=60.0)
    async def report() -> None:
        log.info(
            "phrases=%d predictions=%d dlq=%d cache_hits=%d cache_misses=%d",
            counts["phrases"], counts["predictions"], counts["dlq"], cache.hits, cache.misses,
        )

    app.phrasestream = {"embedder": embedder, "heads": head_set, "cache": cache, "counts": counts}  # type: ignore[attr-defined]
    return app


READY_LINE = "phrasestream worker ready"
"""Printed (whatever the log level) once the worker has recovered its table and consumes."""


class Worker(faust.Worker):
    """Faust's worker, saying :data:`READY_LINE` on standard output when it is ready."""

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        # Faust sends sys.stdout to its logger; the real stdout shows this at any log level.
        print(READY_LINE, file=sys.__stdout__, flush=True)


def run_worker(settings: Settings) -> None:
    """Build the app and run its worker until SIGINT/SIGTERM."""
    app = build_app(settings)
    Worker(app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()

