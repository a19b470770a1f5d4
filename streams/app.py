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
from collections.abc import Mapping
from pathlib import Path

import faust
import numpy as np

from models.heads import Head
from models.registry import Registry
from schemas.messages import CleanedPhrase, DeadLetter, ErrorKind
from schemas.settings import Settings
from streams.cache import LRUCache
from streams.decode import Limits, Source, decode_phrase
from streams.pipeline import Embedded, Embedder, classify, embed_misses, lookup, store

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


class TableBackend:
    """Store cache entries in a Faust table with bytes keys and raw values."""

    def __init__(self, table: Mapping[bytes, bytes]) -> None:
        self._table = table

    def get(self, key: str) -> bytes | None:
        return self._table.get(key.encode())

    def put(self, key: str, value: bytes) -> None:
        self._table[key.encode()] = value  # type: ignore[index]

    def delete(self, key: str) -> None:
        self._table.pop(key.encode(), None)  # type: ignore[attr-defined]

    def keys(self) -> list[str]:
        return [key.decode() for key in list(self._table.keys())]


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
        store=settings.cache_store,
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
    cache_backend = TableBackend(table)
    cache = LRUCache(cache_backend, embedder.version, embedder.dim, settings.cache_max_entries)
    counts = {"phrases": 0, "dlq": 0, "predictions": 0}

    def cache_lookup(texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        try:
            return lookup(texts, cache, embedder.dim)
        except Exception:  # the cache is an optimisation: embed everything instead
            log.warning("embedding cache lookup failed; embedding the whole batch", exc_info=True)
            return lookup(texts, None, embedder.dim)

    def cache_store(texts: list[str], vectors: np.ndarray, rows: list[int]) -> None:
        try:
            store(texts, vectors, rows, cache)
        except Exception:  # serving goes on without caching this batch
            log.warning("embedding cache write failed", exc_info=True)

    async def dead_letter(letter: DeadLetter) -> None:
        counts["dlq"] += 1
        key = letter.id.encode() if letter.id else None
        await topic_dlq.send(key=key, value=letter.to_bytes())
        log.info("dead letter %s: %s", letter.error_kind.value, letter.reason)

    @app.agent(topic_in)
    async def validate_and_clean(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            message = event.message
            source = Source(message.topic, message.partition, message.offset)
            try:
                result = decode_phrase(event.value, head_set.known, source, limits)
            except Exception as exc:  # a bug, not bad input: keep the message and go on
                log.exception("decode failed")
                result = DeadLetter(
                    error_kind=ErrorKind.INTERNAL,
                    reason=f"internal error while decoding: {exc!r}",
                    original_b64=DeadLetter.encode_original(event.value),
                    source_topic=source.topic,
                    source_partition=source.partition,
                    source_offset=source.offset,
                )
            if isinstance(result, DeadLetter):
                await dead_letter(result)
            else:
                counts["phrases"] += 1
                await topic_cleaned.send(key=result.id.encode(), value=result.to_bytes())

    @app.agent(topic_cleaned)
    async def embed_and_classify(stream):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        within = settings.embed_batch_within_ms / 1000.0
        await changelog_metadata(app, table.changelog_topic.get_topic_name())
        adopted = False
        async for values in stream.take(settings.embed_batch_max, within=within):
            if not adopted:  # the table is recovered before the first event flows
                adopted = True
                dropped = cache.adopt(cache_backend.keys())
                log.info("embedding cache: %d entries recovered, %d dropped", len(cache), dropped)
            phrases = [CleanedPhrase.model_validate_json(value) for value in values]
            texts = [p.clean_text for p in phrases]
            failures: list[tuple[CleanedPhrase, ErrorKind, str]]
            try:
                vectors, hits = cache_lookup(texts)
                rows = await loop.run_in_executor(None, embed_misses, texts, vectors, hits, embedder)
                cache_store(texts, vectors, rows)
                predictions, gone = classify(
                    phrases, Embedded(vectors, hits), head_set.heads, embedder.version, settings.top_k
                )
                failures = [(p, ErrorKind.UNKNOWN_MODEL, reason) for p, reason in gone]
            except Exception as exc:  # the batch fails, its phrases are kept on the DLQ
                log.exception("embedding or classification failed for a batch of %d", len(phrases))
                predictions = []
                failures = [(p, ErrorKind.INTERNAL, f"internal error: {exc!r}") for p in phrases]
            for phrase, kind, reason in failures:
                await dead_letter(
                    DeadLetter(
                        error_kind=kind,
                        reason=reason,
                        original_b64=DeadLetter.encode_original(phrase.to_bytes()),
                        source_topic=topic_cleaned.get_topic_name(),
                        id=phrase.id,
                    )
                )
            for prediction in predictions:
                await topic_out.send(key=prediction.id.encode(), value=prediction.to_bytes())
            counts["predictions"] += len(predictions)

    @app.timer(interval=10.0)
    async def reload_heads() -> None:
        try:
            head_set.reload()
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


def run_worker(settings: Settings) -> None:
    """Build the app and run its worker until SIGINT/SIGTERM."""
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()

