"""Every call the worker makes into Faust's, mode's or aiokafka's private parts, behind one door.

Each call is a small named function with the reason there is no public one. Each is pinned
by ``tests/unit/test_faust_compat.py``, which fails when faust-streaming (0.15 here) renames,
re-signs or drops what it uses: after an upgrade, run that file first. The same file checks
that no other module of the worker touches an underscore name of another object.

What the agents read of an event is written down here too (:class:`EventLike`): the messages
the offset guard reads itself (:func:`direct_event`) pose as Faust events and must carry the
same attributes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import faust
from faust.types import TP, EventT

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer


class MessageLike(Protocol):
    """What the agents read of an event's message: where it was read."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def tp(self) -> TP: ...


class EventLike(Protocol):
    """What the agents read of an event: its value (raw bytes) and its message (see :class:`MessageLike`)."""

    @property
    def value(self) -> Any: ...
    @property
    def message(self) -> MessageLike: ...


@dataclass(frozen=True)
class DirectMessage:
    """The ``message`` of a :class:`DirectEvent`: the attributes of Faust's ``Message`` the agents read."""

    topic: str
    partition: int
    offset: int
    tp: TP


@dataclass(frozen=True)
class DirectEvent:
    """A message the worker read with a consumer of its own (a hole, ``streams.kafka.continuity``).

    It is served with a batch of Faust events, so it carries what the agents read of one
    (``value`` and ``message``), and nothing else: it is never acked or committed through
    Faust (the hole's offsets are handed to :func:`add_gap` instead).
    """

    value: bytes | None
    message: DirectMessage


def direct_event(tp: TP, offset: int, value: bytes | None) -> DirectEvent:
    """Return the message at ``offset`` of ``tp``, read outside Faust, as the agents read a Faust event."""
    return DirectEvent(value, DirectMessage(tp.topic, tp.partition, offset, tp))


async def add_gap(app: faust.App, tp: TP, first: int, last: int) -> None:
    """Tell the consumer's offset bookkeeping that offsets ``first`` .. ``last`` (inclusive) are done.

    Faust commits a partition only up to its first offset not acknowledged. It records known
    gaps (offsets a compacted topic does not have) with ``Consumer._add_gap``, and commits
    past them; there is no public call to record one. The offset guard uses it for a hole
    it served itself. Upstream: robinhood/faust#401 (commits stop at a gap; ``_add_gap`` came
    with its fix), faust-streaming/faust#378 and #606 (gap handling still changing).
    """
    from faust.transport.consumer import Consumer

    await cast(Consumer, app.consumer)._add_gap(tp, first, last)  # ConsumerT, app.consumer's type, lacks it


def kafka_producer(app: faust.App) -> AIOKafkaProducer:
    """Return the aiokafka producer inside Faust's producer (once Faust has started it).

    Faust exposes no public handle on it; ``Producer._ensure_producer`` of its aiokafka
    driver (the only transport the worker configures) returns it, or raises ``NotReady``.
    """
    from faust.transport.drivers.aiokafka import Producer

    return cast(Producer, app.producer)._ensure_producer()


async def changelog_metadata(app: faust.App, topic: str) -> None:
    """Wait until Faust's producer knows the partitions of the changelog ``topic`` of a table.

    A table with ``use_partitioner=True`` routes keys with the producer's partitioner, and
    aiokafka's partitioner reads partitions from cached metadata without fetching it: the
    first write to a changelog the producer has not seen yet fails. Faust has no public call
    that fetches it, so we ask its aiokafka producer (public ``partitions_for``) directly.
    Upstream: robinhood/faust#499 (stale partition metadata at first boot; Faust's fix
    refreshes it after creating topics, not for the producer's partitioner).
    """
    await kafka_producer(app).partitions_for(topic)


def set_fetch_wait(app: faust.App, seconds: float) -> bool:
    """Make the worker's consumer wait at most ``seconds`` at the broker for new messages; say if it could.

    Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``, hard-coded, with no
    setting. aiokafka sends one fetch per broker for every partition that has nothing left
    to hand out, and none while that fetch waits; a partition still being handed out when the
    fetch went is in none. A message that arrives on it meanwhile waits until the fetch comes
    back: up to 1.5 s, at any load (the p99 latency of light traffic). aiokafka's ``Fetcher``
    reads ``_fetch_max_wait_ms`` for each fetch it sends, so setting it after the start takes
    effect with the next one. ``False`` while Faust's consumer has not started.
    Upstream: faust-streaming's aiokafka driver (``_create_worker_consumer``) passes the 1500.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer

    thread = cast(AIOKafkaConsumerThread, cast(AIOKafkaDriverConsumer, app.consumer)._thread)
    consumer = thread._consumer
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return False
    fetcher._fetch_max_wait_ms = max(1, int(seconds * 1000))
    return True


IDLE_TURNS = 2
"""A batch is taken once the stream added nothing for this many turns of the event loop."""


def take_batches(stream: faust.StreamT, limit: Callable[[], int]) -> AsyncIterator[list[EventT]]:
    """Return batches of the events ``stream`` holds: at once when any is there, at most ``limit()``.

    Faust's ``take_events(max_, within)`` waits up to ``within`` for a batch to fill while a
    message sits waiting, and acks a batch when the next is taken. The agents want neither:
    a batch is served as soon as there is anything, holding what came meanwhile (so batches
    grow with the backlog, up to ``limit()``, asked before each batch), and its events are acked by the agent once the
    broker has their outputs (``streams.kafka.outbox``). This is ``take_events`` with those
    two changes. Like it, it fills its buffer from a processor of the stream, with the stream
    consumed in the background: ``Stream._enable_passive``, which has no public equivalent.
    The stream's own acks are off (``enable_acks``), as ``take_events`` turns them off.
    """
    return _take(cast(faust.Stream, stream), limit)


async def _take(stream: faust.Stream, limit: Callable[[], int]) -> AsyncIterator[list[EventT]]:
    events: list[EventT] = []
    ready = asyncio.Event()  # the buffer holds an event
    room = asyncio.Event()  # the buffer is below the limit
    room.set()
    max_ = limit()

    async def add(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("a batch found no current event")
        events.append(event)
        ready.set()
        if len(events) >= max_:
            room.clear()
            await stream.wait(room)  # type: ignore[arg-type]  # mode types it as its own Event
        return value

    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(cast(faust.ChannelT, aiter(stream.channel)))
    while not stream.should_stop:
        await stream.wait_for_stopped(ready)  # type: ignore[arg-type]
        # The stream hands over what it already holds one event per turn of the event loop:
        # give it turns while it still has some (not waiting for new ones), so a backlog comes
        # as one batch and a lone phrase goes at once.
        max_, idle = limit(), 0
        while idle < IDLE_TURNS and len(events) < max_:
            held = len(events)
            await asyncio.sleep(0)
            idle = idle + 1 if len(events) == held else 0
        if events:
            batch = events[:max_]
            del events[:max_]
            if not events:
                ready.clear()
            if len(events) < max_:
                room.set()
            yield batch


def drop_spinner(worker: faust.Worker) -> None:
    """Keep ``worker`` from drawing Faust's terminal spinner, whose cursor codes would land in the log.

    ``faust.Worker.__init__`` always makes one; Faust itself drops it only when it sets
    logging up, which the worker leaves to us (``override_logging=False``). The attribute is
    ``Optional`` in Faust and every use checks it, so ``None`` is safe, but no setting asks for it.
    """
    worker.spinner = None
