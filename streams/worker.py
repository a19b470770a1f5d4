"""What the worker's two agents do with each batch, and the Faust worker that runs them.

Both agents go through the same steps around a batch (:meth:`Step.run`): the offset guard
fills any hole first (``streams.kafka.continuity``); the step's own work produces its outputs
through its :class:`~streams.kafka.outbox.Outbox`, and the agent takes its next batch at
once. The outbox acks the batch's input events when the broker has every output of it, in
batch order, and the committer (``streams.kafka.committer``) commits what is acked soon
after: a commit never covers an output the broker does not have. Their own work:

- :class:`Cleaner` (``validate_and_clean``): each raw message becomes a cleaned phrase on the
  internal topic, keyed by its cache key, or a dead letter. It never raises for input.
- :class:`Server` (``embed_and_classify``): the cleaned phrases are embedded and classified
  (``streams.pipeline.serve_batch``); one prediction per (phrase, model), failures dead-lettered.
  The answers the review rule routes go to ``phrases.review`` and the shadow heads' answers to
  ``predictions.shadow`` (``streams.routing``), through the same outbox: a batch is acked once
  the broker has those too.

``streams.app`` builds them and hands them to the agents, which are loops around :meth:`Step.run`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT

from ops.daemons import READY_LINE
from ops.logs import always
from schemas.messages import DeadLetter, ErrorKind, Prediction
from schemas.settings import Settings
from streams.decode import Limits, Source, decode_phrase
from streams.heads import HeadSet
from streams.kafka.committer import Committer
from streams.kafka.continuity import OffsetGuard, fill_holes, holes_done, restart_stalled
from streams.kafka.faust_compat import EventLike, drop_spinner
from streams.kafka.outbox import Outbox
from streams.metrics import WorkerMetrics
from streams.pipeline import Embedder, Observer, Offload, serve_batch
from streams.routing import Expert
from streams.state.cache import EmbeddingCache, MappingBackend, cache_key
from streams.state.memos import AnswerMemo

log = logging.getLogger("phrasestream.worker")

STALL_CHECK_SECONDS = 5.0
"""How often the timer looks for partitions that stopped delivering."""
STALL_SECONDS = 15.0
"""A partition with messages left that delivered nothing this long is sought again (continuity)."""
BATCH_BUDGET_SECONDS = 0.1
"""How long an agent's batch should take: under backlog a batch holds as many phrases as take about
this long to serve, at the last batches' pace, between ``embed_batch_max`` and ``stream_batch_max``.
It also bounds what a worker killed with ``kill -9`` serves again: at most the batch whose
outputs were delivered but not yet committed, per agent (a batch of cache misses is
``embed_batch_max`` phrases, 32)."""
DRAIN_SECONDS = 10.0
"""At stop, how long an agent waits for the broker to take its outputs in flight."""


def _nothing() -> None:
    """What a batch that failed does once its outputs are delivered: nothing (its inputs stay unacked)."""


@dataclass
class Step:
    """One agent's batch: continuity, the agent's own work (:meth:`produce`), one wait for the broker, the commit."""

    app: faust.App
    settings: Settings
    guard: OffsetGuard
    outbox: Outbox
    metrics: WorkerMetrics
    offload: Offload
    committer: Committer | None = field(default=None, kw_only=True)
    """Told when a batch's inputs are acked, to commit them soon."""
    per_phrase: float = field(default=0.0, kw_only=True)
    """Seconds a phrase of the last batches took to serve (a moving average), for :meth:`limit`."""

    def limit(self) -> int:
        """The most events the next batch may hold: about :data:`BATCH_BUDGET_SECONDS` of work."""
        low, high = self.settings.embed_batch_max, self.settings.stream_batch_max
        if self.per_phrase <= 0:
            return high
        return max(min(low, high), min(high, int(BATCH_BUDGET_SECONDS / self.per_phrase)))

    async def run(self, events: Sequence[EventT]) -> None:
        """Serve one batch of Faust events (and the messages of any hole before them); do not wait for the broker.

        The outputs go out in the background; the batch's events are acked once the broker has
        every output (:meth:`Outbox.open`'s ``on_settled``), and Faust's commit timer commits
        what is acked. The agent waits only when too much is in flight (:meth:`Outbox.room`).
        """
        self.guard.begin(time.monotonic())
        serve, holes = await fill_holes(self.app, self.guard, events, self.settings, self.offload)
        await holes_done(self.app, holes)
        await self.outbox.room()
        published: Sequence[Prediction] = ()

        def settled() -> None:  # on the event loop, once the broker has every output of the batch
            for event in events:
                event.ack()
            self.metrics.published(published)
            if self.committer is not None:
                self.committer.wake()

        batch = self.outbox.open(settled)
        started = time.perf_counter()
        try:
            published = await self.produce(serve)
        except BaseException:  # cancelled at stop, or a bug: the inputs are not acked, so served again
            batch.on_settled = _nothing
            raise
        finally:
            self.outbox.seal()
        took = (time.perf_counter() - started) / max(1, len(serve))
        self.per_phrase = took if self.per_phrase <= 0 else 0.7 * self.per_phrase + 0.3 * took
        self.guard.end(time.monotonic(), STALL_SECONDS / 3)

    def drain(self) -> None:
        """At stop: wait (bounded) for the outputs in flight, and ack the inputs of every batch delivered."""
        self.outbox.drain(DRAIN_SECONDS)

    async def produce(self, events: Sequence[EventLike]) -> Sequence[Prediction]:
        """Queue the outputs of ``events`` in the outbox; return the predictions among them (for the latency metric)."""
        raise NotImplementedError

    def dead_letter(self, letter: DeadLetter) -> None:
        """Count, log and queue one dead letter."""
        self.metrics.dead_letter(letter.error_kind)
        log.info("dead letter %s: %s", letter.error_kind.value, letter.reason)
        self.outbox.put(self.settings.topic_dlq, letter.id.encode() if letter.id else None, letter.to_bytes())


@dataclass
class Cleaner(Step):
    """``validate_and_clean``: decode each raw message into a cleaned phrase or a dead letter."""

    heads: HeadSet
    limits: Limits
    cleaned_topic: str
    embedder_version: str

    async def produce(self, events: Sequence[EventLike]) -> Sequence[Prediction]:
        known = self.heads.known
        self.metrics.phrases_read(len(events))
        for event in events:
            message = event.message
            source = Source(message.topic, message.partition, message.offset)
            try:
                result = decode_phrase(event.value, known, source, self.limits)
            except Exception as exc:  # a bug, not bad input: keep the message and go on
                log.exception("decode failed")
                result = DeadLetter.of(ErrorKind.INTERNAL, f"internal error while decoding: {exc!r}",
                                       event.value, source.topic, source.partition, source.offset)
            if isinstance(result, DeadLetter):
                self.dead_letter(result)
            else:
                # Keyed by the cache key of the cleaned text: the phrase lands on the partition
                # whose changelog holds its cache entry (same key bytes, same murmur2
                # partitioner), so with several workers each one serves the phrases it caches.
                self.outbox.put(self.cleaned_topic, cache_key(self.embedder_version, result.clean_text).encode(),
                                result.to_bytes())
        return []


@dataclass
class Server(Step):
    """``embed_and_classify``: embed and classify cleaned phrases; one prediction per (phrase, model)."""

    embedder: Embedder
    heads: HeadSet
    cache: EmbeddingCache
    cache_backend: MappingBackend
    memo: AnswerMemo
    observe: Observer | None
    cleaned_topic: str
    expert: Expert | None = None
    """Review routing, shadow heads and evidence (``streams.routing``); None: none of them."""
    adopted: frozenset[Any] = field(default_factory=frozenset)
    """The assignment whose cache entries the cache tracks."""

    def adopt_assignment(self) -> None:
        """Track the table's entries after a recovery or a rebalance (the first batch of each assignment)."""
        assigned = frozenset(self.app.consumer.assignment())
        if assigned != self.adopted:  # the table is recovered before events flow; again after a rebalance
            self.adopted = assigned
            evicted = self.cache.adopt(self.cache_backend.keys())
            log.info("embedding cache: %d entries held, %d evicted", len(self.cache), evicted)

    async def produce(self, events: Sequence[EventLike]) -> Sequence[Prediction]:
        values = [event.value for event in events]
        self.adopt_assignment()
        served = await serve_batch(values, self.embedder, self.cache, self.heads.heads, self.settings.top_k,
                                   self.offload, self.memo, observe=self.observe, expert=self.expert)
        for failure in served.failures:
            self.dead_letter(DeadLetter.of(failure.kind, failure.reason, failure.raw, self.cleaned_topic,
                                           id=failure.id))
        for key, value in served.payloads:
            self.outbox.put(self.settings.topic_out, key, value)
        for key, value in served.extra.reviews:
            self.outbox.put(self.settings.topic_review, key, value)
        for key, value in served.extra.shadows:
            self.outbox.put(self.settings.topic_shadow, key, value)
        self.metrics.batch_served(len(values), served)
        return served.predictions


async def check_stalls(steps: Iterable[Step]) -> None:
    """Seek again each partition of the steps' topics that stopped delivering (see ``restart_stalled``); never raise."""
    for step in steps:
        try:
            await restart_stalled(step.app, step.guard, step.settings, step.offload, STALL_SECONDS)
        except Exception:  # a check that fails (broker away) is tried again at the next tick
            log.warning("%s: could not check for stalled partitions", step.guard.name, exc_info=True)


def log_totals(metrics: WorkerMetrics) -> None:
    """Log the running totals, read from the ``/metrics`` counters so the log and Prometheus agree."""
    totals = metrics.summary()
    log.info("phrases=%d predictions=%d dlq=%d cache_hits=%d cache_misses=%d", totals["phrases_in"],
             totals["predictions"], totals["dead_letters"], totals["cache_hits"], totals["cache_misses"])


class Worker(faust.Worker):
    """Faust's worker, logging :data:`READY_LINE` when it is ready, without a terminal spinner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drop_spinner(self)

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        always(log, READY_LINE)  # in the configured format (a JSON line too), at any log level

