"""Wire the stream: the one place that builds the Faust app and everything its agents use.

``build_app(settings)`` builds, once: the shared embedder, the head set (the live heads of
every region, following the registry topic ``models.registry``), the embedding cache (a Faust table), the
topics, and the two agents:

1. ``validate_and_clean`` reads raw bytes from ``phrases.in``; each message becomes either a
   cleaned phrase on the internal topic ``<app_id>-phrases.cleaned`` or a dead letter on
   ``phrases.dlq``. It never raises for input.
2. ``embed_and_classify`` takes cleaned phrases in micro-batches (``take(max, within)``),
   embeds the cache misses in one call to the shared embedder (in a worker thread, so the
   event loop keeps heart-beating), runs every requested head on the one embedding, and
   publishes one prediction per (phrase, model) to ``predictions.out``.

A timer publishes the serving rollups (``streams.rollups``: per head and hour, the count,
embedding sum and unknown-word-piece rates of what was served, for drift reports) to
``serving.rollups`` every ``PHRASESTREAM_ROLLUP_INTERVAL_SECONDS``, with a producer of its own.

Start order (Faust's): producer, then table recovery of the cache, then the consumers and
agents; at stop the agents and consumer stop first and the producer last, so every
prediction in flight is flushed. The last serving rollups are published after that, once
Faust has stopped (``run_worker``), so they include the last batch.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import faust

from models.heads import Head, HeadError, HeadRef, load_head
from models.registry.pointers import Follower, read_all
from ops.daemons import READY_LINE
from ops.kafka.clients import client_config, faust_credentials
from ops.logs import always
from schemas.messages import DeadLetter, ErrorKind, RegistryPointer
from schemas.settings import Settings
from streams.decode import Limits, Source, decode_phrase
from streams.kafka.continuity import Hole, OffsetGuard, lag_and_committed, read_hole
from streams.metrics import WorkerMetrics, serve_metrics
from streams.pipeline import AnswerMemo, Embedder, serve_batch
from streams.rollups import RollupPublisher, rollups_for
from streams.state.cache import LRUCache, MappingBackend, cache_key

if TYPE_CHECKING:
    from faust.transport.drivers.aiokafka import Producer as FaustKafkaProducer

log = logging.getLogger("phrasestream.worker")

STALL_CHECK_SECONDS = 5.0
STALL_SECONDS = 15.0
"""A partition with messages left that delivered nothing this long is sought again (continuity)."""

T = TypeVar("T")


class HeadSet:
    """The heads every batch is served with, following the registry topic ``models.registry``.

    ``heads`` (region -> model -> :class:`Head`) is replaced whole, never changed in place:
    a batch takes it once and is served by one consistent set, and a swap is one assignment.
    New versions are fetched (from PostgreSQL when this machine lacks their files), verified
    and loaded in the registry follower's thread, off the event loop.

    A version that fails to load or fails its checksums is refused with one log line and is
    not tried again (until it is promoted anew); the previous version keeps serving. A
    version whose bundle cannot be fetched because the database does not answer is tried
    again with a growing pause (up to ``registry_retry_seconds``), logged when it starts
    waiting and when it loads.
    """

    def __init__(self, settings: Settings, embedder_version: str) -> None:
        self._settings = settings
        self._embedder_version = embedder_version
        self._changing = threading.Lock()  # one load at a time (follower thread, retry timer)
        self.heads: dict[str, dict[str, Head]] = {}
        self.pointers: dict[tuple[str, str], RegistryPointer] = {}
        self.refused: dict[tuple[str, str, int], str] = {}
        self._pending: dict[tuple[str, str], tuple[RegistryPointer, float, int]] = {}
        self._follower: Follower | None = None

    @property
    def known(self) -> dict[str, list[str]]:
        """Map each region to the names of its live heads."""
        return {region: sorted(models) for region, models in self.heads.items()}

    def start(self, wait_s: float = 60.0) -> None:
        """Load the live version of every head, then follow the registry topic in a thread."""
        for pointer in read_all(self._settings).values():
            self.offer(pointer)
        deadline = time.monotonic() + wait_s
        while self._pending and not self.heads and time.monotonic() < deadline:
            time.sleep(1.0)
            self.retry_pending(force=True)
        if not self.heads:
            why = "; ".join(self.refused.values()) or "the registry topic names none"
            raise RuntimeError(f"no live head could be loaded from {self._settings.topic_registry} ({why}); "
                               "run `phrasestream train`, or promote a version")
        self._follower = Follower(self._settings, self.offer)
        self._follower.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def _serving(self, key: tuple[str, str]) -> str:
        current = self.pointers.get(key)
        return f"still serving {current.version}" if current else "no version of it is served"

    @property
    def waiting(self) -> bool:
        """Say whether a version waits for the database."""
        return bool(self._pending)

    def offer(self, pointer: RegistryPointer) -> bool:
        """Serve ``pointer``'s version if it is new and loads; say whether the heads changed."""
        with self._changing:
            return self._offer(pointer)

    def _offer(self, pointer: RegistryPointer) -> bool:
        key = (pointer.region, pointer.model)
        current = self.pointers.get(key)
        if current is not None and pointer.seq <= current.seq:
            return False  # a replayed or older pointer
        if (*key, pointer.seq) in self.refused:
            return False
        if current is not None and current.version == pointer.version:
            self.pointers = {**self.pointers, key: pointer}
            return False
        self._pending.pop(key, None)
        return self._load(pointer)

    def _load(self, pointer: RegistryPointer, retries: int = 0) -> bool:
        import psycopg2

        from models.registry.bundles import BundleError
        from models.registry.lifecycle import head_folder

        key = (pointer.region, pointer.model)
        ref = HeadRef(pointer.region, pointer.model, pointer.version)
        try:
            folder = head_folder(self._settings, ref, want_sha256=pointer.bundle_sha256)
            head = load_head(folder, embedder_version=self._embedder_version)
            if head.ref != ref:
                raise HeadError(f"the files of {ref} hold head {head.ref}")
        except psycopg2.Error as exc:
            pause = min(self._settings.registry_retry_seconds, 2.0 * 2 ** retries)
            if retries == 0:
                log.warning("cannot fetch head %s yet: PostgreSQL: %s; %s; trying again every %.0f s at most",
                            ref, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                            self._serving(key), self._settings.registry_retry_seconds)
            self._pending[key] = (pointer, time.monotonic() + pause, retries + 1)
            return False
        except (BundleError, HeadError, OSError, ValueError) as exc:
            reason = f"refused head {ref} ({pointer.action} #{pointer.seq}): {exc}"
            self.refused[(*key, pointer.seq)] = reason
            log.error("%s; %s", reason, self._serving(key))
            return False
        # the swap: a new dict, assigned at once; a batch in flight keeps the one it took
        heads = {region: dict(models) for region, models in self.heads.items()}
        heads.setdefault(pointer.region, {})[pointer.model] = head
        previous = self.pointers.get(key)
        self.heads, self.pointers = heads, {**self.pointers, key: pointer}
        log.info("now serving head %s (%s%s%s)", ref, pointer.action,
                 f", was {previous.version}" if previous else "",
                 f": {pointer.reason}" if pointer.reason else "")
        return True

    def retry_pending(self, force: bool = False) -> None:
        """Try again the versions that waited for the database, when their pause is over."""
        with self._changing:
            for key, (pointer, due, retries) in list(self._pending.items()):
                if force or time.monotonic() >= due:
                    self._pending.pop(key, None)
                    if self._load(pointer, retries):
                        log.info("head %s/%s: fetched after %d tries", *key, retries + 1)


class Outbox:
    """Produce messages with confluent-kafka; :meth:`flush` returns once the broker has them all.

    Why not Faust's ``topic.send``: it awaits every message through Faust's producer buffer
    (which blocks all streams beyond 100 waiting messages) and aiokafka; librdkafka queues a
    message in about a microsecond and batches in its own thread. At-least-once holds because
    an agent calls :meth:`flush` after each batch, before it takes the next one (which is when
    Faust acks the batch's input events): a message that failed is produced again, and
    ``flush`` does not return until every message is acknowledged (acks=all, idempotent).
    While the broker is away it waits, and says so once.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        from confluent_kafka import Producer

        self.name = name
        self._failed: list[tuple[str, bytes | None, bytes]] = []
        self._producer = Producer(client_config(settings, {
            "client.id": f"{settings.app_id}-{name}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,  # a batch arrives at once; a short linger fills Kafka batches
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            "message.timeout.ms": 0,  # never give a message up; flush waits for the broker
            "delivery.report.only.error": True,  # only failures come back (to be produced again)
            # the Java clients' (and aiokafka's, so Faust's table's) partitioner: murmur2 of the key
            "partitioner": "murmur2_random",
        }))

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append((msg.topic(), msg.key(), msg.value()))

    def put(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one message (blocks only while librdkafka's own queue is full)."""
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def flush(self) -> None:
        """Block until every queued message is acknowledged, producing failed ones again."""
        waited = 0.0
        while True:
            left = self._producer.flush(5.0)
            if self._failed:
                failed, self._failed = self._failed, []
                log.warning("%s: %d message(s) failed to reach the broker; producing them again", self.name,
                            len(failed))
                for topic, key, value in failed:
                    self.put(topic, key, value)
                continue
            if left == 0:
                if waited:
                    log.info("%s: the broker took the waiting messages after %.0f s", self.name, waited)
                return
            if not waited:
                log.warning("%s: %d message(s) wait for the broker; the stream waits with them", self.name, left)
            waited += 5.0


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
    # faust's aiokafka driver (the only transport we configure); no public equivalent
    producer = cast("FaustKafkaProducer", app.producer)._ensure_producer()
    await producer.partitions_for(topic)


def group_instance_id(settings: Settings) -> str | None:
    """Return this worker's static group member id, or None for dynamic membership.

    The id must be unique in the group and the same across restarts of one worker: by
    default ``<app_id>-<host>-<worker_index>`` (``phrasestream start --workers N`` numbers
    its workers 1..N; two machines differ by host name).
    """
    chosen = settings.group_instance_id.strip()
    if chosen.lower() == "none":
        return None
    return chosen or f"{settings.app_id}-{socket.gethostname()}-{settings.worker_index}"


def worker_group_settings(settings: Settings) -> dict[str, Any]:
    """Return the Faust settings for group membership and offset commits.

    - ``consumer_group_instance_id``: static membership (KIP-345). A worker killed and
      started again rejoins as the same member and gets its partitions back without a
      rebalance; before, the group waited for the dead member's session to expire (a minute).
    - ``broker_session_timeout``: how long a silent member keeps its partitions. Short, so
      that a dead worker's partitions move to the others quickly; the price is that a worker
      whose event loop stalls that long is taken out of the group (the embedder runs off the
      loop, so heartbeats go on during a batch). A static member that stops cleanly does not
      leave the group either: its partitions wait this long before they move.
    """
    session = settings.session_timeout_seconds
    return {
        "consumer_group_instance_id": group_instance_id(settings),
        "broker_session_timeout": session,
        "broker_heartbeat_interval": min(3.0, session / 3.0),
    }


async def fill_holes(app: faust.App, guard: OffsetGuard, events: list[Any], settings: Settings,
                     offload: Any) -> tuple[list[Any], list[Hole]]:
    """Return the messages of any hole in the batch's partitions, read directly, and the holes.

    See ``streams.kafka.continuity``. A new assignment starts the guard afresh: its first offsets are
    where the commits were.
    """
    if guard.follow(frozenset(tp for tp in app.consumer.assignment() if tp.topic == guard.topic), time.monotonic()):
        ends = await offload(lag_and_committed, client_config(settings), settings.app_id, list(guard.assignment))
        guard.baseline({tp: committed for tp, (_, committed) in ends.items()})
    holes = guard.check(events)
    extra: list[Any] = []
    for hole in holes:
        extra.extend(await offload(read_hole, client_config(settings), hole))
    return extra, holes


async def restart_stalled(app: faust.App, guard: OffsetGuard, settings: Settings, offload: Any,
                          after: float) -> None:
    """Seek a partition that stopped delivering, with messages left in it, to its next offset.

    See ``streams.kafka.continuity``. The next offset is the one after the last event this worker
    read from it, or the group's committed offset when it read none since the assignment.
    """
    if app.rebalancing:  # a rebalance moves partitions on purpose; look again next time
        return
    now = time.monotonic()
    if guard.follow(frozenset(tp for tp in app.consumer.assignment() if tp.topic == guard.topic), now):
        ends = await offload(lag_and_committed, client_config(settings), settings.app_id, list(guard.assignment))
        guard.baseline({tp: committed for tp, (_, committed) in ends.items()})
    quiet = guard.quiet(guard.assignment, now, after)
    if not quiet:
        return
    ends = await offload(lag_and_committed, client_config(settings), settings.app_id, quiet)
    for tp in quiet:
        high, committed = ends[tp]
        start = guard.next_offset(tp)
        start = start if start is not None else committed
        if start is not None and high > start:
            log.warning("%s: %s delivered nothing for %.0f s with %d message(s) left after offset %d; "
                        "seeking there again", guard.name, tp, after, high - start, start)
            await app.consumer.seek(tp, start)
            guard.restarted(tp, now)


async def holes_done(app: faust.App, holes: list[Hole]) -> None:
    """Tell Faust's offset bookkeeping that the holes are served, so commits pass them.

    Faust commits a partition only up to its first offset not acknowledged; the messages of a
    hole were never delivered to it, so it would wait for them for ever. Faust records such
    known gaps (for compacted topics) with ``_add_gap``; there is no public call for it.
    """
    for hole in holes:
        await app.consumer._add_gap(hole.tp, hole.start, hole.end - 1)  # type: ignore[attr-defined]


async def commit_batch(app: faust.App, events: list[Any]) -> None:
    """Mark a served batch's input events done and commit their offsets now.

    Called once the batch's outputs are acknowledged by the broker (the outbox flushed), so
    a commit never covers an unsent output. Faust would otherwise commit on a timer (every
    2.8 s): the first agent runs far ahead of the second, so a worker killed between two
    commits had tens of thousands of cleaned phrases re-cleaned, and served twice, after its
    restart. With a commit per batch the work done again is at most the batch in flight.
    Acking here is idempotent: the ack ``take`` does after the batch is then a no-op.
    """
    for event in events:
        event.ack()
    await app.consumer.commit({event.message.tp for event in events})


def build_app(settings: Settings, embedder: Embedder | None = None) -> faust.App:
    """Build the Faust app with its embedder, heads, cache and agents (see the module doc)."""
    if embedder is None:
        from models.embedder import load_embedder

        embedder = load_embedder(settings)
    head_set = HeadSet(settings, embedder.version)
    head_set.start()
    limits = Limits(settings.max_text_chars, settings.max_message_bytes)

    datadir = Path(settings.home).expanduser().resolve() / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
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
    topic_in = app.topic(settings.topic_in, key_type=bytes, value_type=bytes)
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
    metrics = WorkerMetrics()
    metrics.watch(cache=cache, heads=lambda: head_set.heads)

    loop_box: dict[str, asyncio.AbstractEventLoop] = {}

    def offload(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run a blocking step (embedding, heads, waiting for the broker) in a thread."""
        return loop_box.setdefault("loop", asyncio.get_running_loop()).run_in_executor(None, fn, *args)

    cleaned_topic = topic_cleaned.get_topic_name()
    memo = AnswerMemo(settings.answer_memo_entries)
    # The unknown-word-piece memo has the embedding cache's bound: see streams.rollups.UnknownRates.
    rollups = rollups_for(embedder, settings.cache_max_entries)
    publisher = RollupPublisher(settings, rollups)
    # Each agent produces its outputs with a producer of its own and waits, after each batch,
    # until the broker has every message of it (see Outbox): only then does the loop go on and
    # Faust ack the batch's input events, so a commit never gets ahead of the outputs.
    clean_out = Outbox(settings, "clean")
    serve_out = Outbox(settings, "serve")

    def dead_letter(outbox: Outbox, letter: DeadLetter) -> None:
        metrics.dead_letter(letter.error_kind)
        log.info("dead letter %s: %s", letter.error_kind.value, letter.reason)
        outbox.put(settings.topic_dlq, letter.id.encode() if letter.id else None, letter.to_bytes())

    within = settings.embed_batch_within_ms / 1000.0
    clean_guard = OffsetGuard("validate_and_clean", topic_in.get_topic_name())
    serve_guard = OffsetGuard("embed_and_classify", cleaned_topic)

    @app.agent(topic_in)
    async def validate_and_clean(stream: faust.StreamT[bytes]) -> None:
        # Batches, not single events: one wait for the broker per batch, and no await per message.
        # faust's StreamT declares take() but not take_events(), which its Stream has.
        batches = stream.take_events(settings.embed_batch_max, within=within)  # type: ignore[attr-defined]
        async for events in batches:
            clean_guard.begin(time.monotonic())
            extra, holes = await fill_holes(app, clean_guard, events, settings, offload)
            known = head_set.known
            metrics.phrases_read(len(events) + len(extra))
            for event in extra + events:
                message = event.message
                source = Source(message.topic, message.partition, message.offset)
                try:
                    result = decode_phrase(event.value, known, source, limits)
                except Exception as exc:  # a bug, not bad input: keep the message and go on
                    log.exception("decode failed")
                    result = DeadLetter.of(ErrorKind.INTERNAL, f"internal error while decoding: {exc!r}",
                                           event.value, source.topic, source.partition, source.offset)
                if isinstance(result, DeadLetter):
                    dead_letter(clean_out, result)
                else:
                    # Keyed by the cache key of the cleaned text: the phrase lands on the partition
                    # whose changelog holds its cache entry (same key bytes, same murmur2
                    # partitioner), so with several workers each one serves the phrases it caches.
                    clean_out.put(cleaned_topic, cache_key(embedder.version, result.clean_text).encode(),
                                  result.to_bytes())
            await offload(clean_out.flush)
            await holes_done(app, holes)
            if settings.commit_every_batch:
                await commit_batch(app, events)
            clean_guard.end(time.monotonic(), STALL_SECONDS / 3)

    @app.agent(topic_cleaned)
    async def embed_and_classify(stream: faust.StreamT[bytes]) -> None:
        await changelog_metadata(app, table.changelog_topic.get_topic_name())
        adopted: set = set()
        async for events in stream.take_events(settings.embed_batch_max, within=within):  # type: ignore[attr-defined]
            serve_guard.begin(time.monotonic())
            extra, holes = await fill_holes(app, serve_guard, events, settings, offload)
            values = [event.value for event in extra + events]
            assigned = frozenset(app.consumer.assignment())
            if assigned != adopted:  # the table is recovered before events flow; again after a rebalance
                adopted = set(assigned)
                evicted = cache.adopt(cache_backend.keys())
                log.info("embedding cache: %d entries held, %d evicted", len(cache), evicted)
            served = await serve_batch(values, embedder, cache, head_set.heads, settings.top_k, offload, memo,
                                       observe=rollups.observe)
            for failure in served.failures:
                dead_letter(serve_out, DeadLetter.of(failure.kind, failure.reason, failure.raw, cleaned_topic,
                                                     id=failure.id))
            for key, value in served.payloads:
                serve_out.put(settings.topic_out, key, value)
            metrics.batch_served(len(values), served)
            await offload(serve_out.flush)
            metrics.published(served.predictions)
            await holes_done(app, holes)
            if settings.commit_every_batch:
                await commit_batch(app, events)
            serve_guard.end(time.monotonic(), STALL_SECONDS / 3)

    @app.timer(interval=STALL_CHECK_SECONDS)
    async def restart_stalled_partitions() -> None:
        for guard in (clean_guard, serve_guard):
            try:
                await restart_stalled(app, guard, settings, offload, STALL_SECONDS)
            except Exception:  # a check that fails (broker away) is tried again at the next tick
                log.warning("%s: could not check for stalled partitions", guard.name, exc_info=True)

    @app.timer(interval=2.0)
    async def fetch_waiting_heads() -> None:
        if head_set.waiting:  # fetching and loading read and hash files: off the event loop
            await asyncio.get_running_loop().run_in_executor(None, head_set.retry_pending)

    @app.timer(interval=settings.rollup_interval_seconds)
    async def publish_rollups() -> None:
        # produces and waits for the broker (not past the next tick): off the event loop; never raises
        await offload(publisher.publish, min(5.0, settings.rollup_interval_seconds))

    @app.timer(interval=60.0)
    async def report() -> None:
        totals = metrics.summary()  # the /metrics counters, so the log and Prometheus agree
        log.info("phrases=%d predictions=%d dlq=%d cache_hits=%d cache_misses=%d", totals["phrases_in"],
                 totals["predictions"], totals["dead_letters"], totals["cache_hits"], totals["cache_misses"])

    app.phrasestream = {"embedder": embedder, "heads": head_set, "cache": cache, "metrics": metrics,  # type: ignore[attr-defined]
                        "rollups": publisher}
    return app


class Worker(faust.Worker):
    """Faust's worker, logging :data:`READY_LINE` when it is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No terminal spinner: its cursor codes would land in the log. (Faust drops it itself only
        # when it sets logging up, which it does not here: see run_worker.)
        self.spinner = None

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        always(log, READY_LINE)  # in the configured format (a JSON line too), at any log level


def run_worker(settings: Settings) -> None:
    """Build the app, serve its metrics, and run its worker until SIGINT/SIGTERM; then publish
    the last serving rollups.

    Logging is the caller's (``ops.logs.configure_logging``): ``override_logging=False`` keeps
    Faust from replacing the root handler with its own, so Faust's, mode's and aiokafka's
    records go through our formatter (text or JSON) like ours, and standard output stays ours.
    """
    app = build_app(settings)
    port = settings.worker_metrics_port + settings.worker_index - 1 if settings.worker_metrics_port else 0
    serve_metrics(app.phrasestream["metrics"].registry, settings.metrics_host,  # type: ignore[attr-defined]
                  port, "worker")
    try:
        Worker(app, loglevel=settings.log_level.lower(), quiet=True, override_logging=False).execute_from_commandline()
    finally:  # after Faust's stop: the agents are done, so the last deltas hold every batch
        app.phrasestream["rollups"].close()  # type: ignore[attr-defined]

