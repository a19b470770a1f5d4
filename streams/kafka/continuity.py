"""Catch a partition whose offsets jump, and serve the skipped messages.

Why: after a worker is killed and started again, the restarted worker sometimes loses a
fetch's worth of one partition's messages. We saw it in the worker-killed fault test in about
half the runs: the offsets of a partition of the cleaned topic went 377, then 412. The 34
messages in between were never served, and since they were never acknowledged, Faust never
committed that partition again. The cause is a race in Faust's table recovery. It seeks the
stream partitions to their committed offsets, and only then resumes the flow. Resuming
clears the stream buffers, and with them the records the fetcher has read since the seek.
Its read offset has already moved past those records, so Faust drops them when they come
again.

A partition can also stop arriving altogether after a rebalance, with messages left in it
(seen in the two-worker fault test). A timer (:meth:`OffsetGuard.quiet`) finds a partition that
has had no event for a while although it has messages after its next offset, and seeks it
there again (Faust's seek also resets its read offset, so nothing is dropped again).

Within one assignment, the offsets of a partition we read arrive one by one. Our topics have
no compaction and our producers no transactions, so a jump means messages were skipped.
:class:`OffsetGuard` watches every batch and reports each hole. The agent then reads the
hole itself (:func:`read_hole`, a plain consumer on that one partition, bounded) and serves
it with the batch. It also tells Faust's offset bookkeeping that the hole is done, so commits
go on. A user's producer may be transactional: its commit markers leave real holes in
``phrases.in``. Reading such a hole returns only the messages that exist, which costs one
short read.

The agents use the guard through the functions at the end: :func:`fill_holes` and
:func:`holes_done` before a batch and, on a timer, :func:`restart_stalled`.

Why the guard stays with the pipelined cycle (``streams.kafka.outbox``): both faults are
Faust's, in how it fetches and resumes partitions, not in when we commit. A commit still
stops at a hole, because Faust commits only contiguous acked offsets, so without the guard a
hole would be served by nobody and stall its partition's commits until the next restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.types import TP

from ops.kafka.clients import client_config
from ops.kafka.offsets import probe, read_committed, read_end_offsets
from schemas.settings import Settings
from streams.kafka.faust_compat import EventLike, add_gap, direct_event
from streams.pipeline import Offload

log = logging.getLogger("phrasestream.worker")


@dataclass(frozen=True)
class Hole:
    """Offsets ``start`` .. ``end - 1`` of partition ``tp`` were skipped."""

    tp: TP
    start: int
    end: int


class OffsetGuard:
    """Track the next expected offset of each partition of one agent; report the holes.

    ``check(events)`` takes the batch's events (each with ``.message.tp`` and
    ``.message.offset``) and returns the :class:`Hole` s it shows. ``reset()`` forgets the
    offsets, for a new assignment (its first offsets are wherever the commits were).
    """

    def __init__(self, name: str, topic: str = "") -> None:
        self.name = name
        self.topic = topic  # the topic whose partitions it watches
        self._expected: dict[Any, int] = {}
        self._seen: dict[Any, float] = {}  # partition -> monotonic time of its last event (or assignment)
        self.assignment: frozenset = frozenset()  # the assignment the offsets belong to
        self.holes = 0  # holes found (for the log and the tests)
        self.stalls = 0  # stalled partitions sent back to their next offset
        self.repeats = 0  # messages delivered again within an assignment, not served twice
        self._began = 0.0
        self.busy = False  # the agent is inside a batch (e.g. waiting for the broker to take its outputs)
        self.unbased = False  # the assignment's committed offsets could not be read yet: ask again next batch

    def reset(self) -> None:
        self._expected.clear()
        self._seen.clear()

    def follow(self, assigned: frozenset, now: float) -> bool:
        """Start afresh when the assignment changed (its partitions count as just seen); say if it did."""
        if assigned != self.assignment:
            self.reset()
            self.assignment = assigned
            self._seen.update({tp: now for tp in assigned})
            return True
        return False

    def baseline(self, committed: dict[Any, int | None]) -> None:
        """Expect each partition's first message at its committed offset (a new assignment).

        Without it a hole at the very start of an assignment, the first message after the
        commit never delivered, would go unseen.
        """
        for tp, offset in committed.items():
            if offset is not None and tp not in self._expected:
                self._expected[tp] = offset

    def next_offset(self, tp: Any) -> int | None:
        """Return the next offset expected from ``tp``, if an event of it came in this assignment."""
        return self._expected.get(tp)

    def quiet(self, tps: Iterable[Any], now: float, after: float) -> list[Any]:
        """Return the partitions of ``tps`` with no event for ``after`` seconds.

        None while the agent is inside a batch: then the partitions wait for the agent (say,
        for a broker that is down to take its outputs), not the other way round; seeking them
        would only read their buffered messages twice.
        """
        if self.busy:
            return []
        return [tp for tp in tps if now - self._seen.get(tp, now) >= after]

    def begin(self, now: float) -> None:
        """The agent starts a batch."""
        self.busy = True
        self._began = now

    def end(self, now: float, long: float) -> None:
        """The agent is done with a batch. After a long one (the broker was away, say) every
        partition counts as just seen: they waited for the agent, not the other way round."""
        self.busy = False
        if now - self._began >= long:
            self._seen.update({tp: now for tp in self.assignment})

    def restarted(self, tp: Any, now: float) -> None:
        """Count a stalled partition sent back to its next offset; give it time to deliver."""
        self.stalls += 1
        self._seen[tp] = now

    def check(self, events: Iterable[EventLike]) -> list[Hole]:
        """Return the holes ``events`` (a batch, each with ``.message.tp`` and ``.message.offset``) show."""
        return self.split(events)[0]

    def split(self, events: Iterable[EventLike]) -> tuple[list[Hole], list[EventLike]]:
        """Return the holes ``events`` show, and the events to serve: those not served before in this assignment.

        An offset below the next one expected was read before in this assignment: Faust sought
        the partition back (a table recovery seeks to the committed offsets while earlier
        messages may still be in the agent's batch). Serving it again would only repeat its
        predictions; its first copy's outputs are already in the outbox, in an earlier batch,
        and this copy is acked with its own batch, which settles after that one.
        """
        holes: list[Hole] = []
        fresh: list[EventLike] = []
        repeated: dict[Any, list[int]] = {}
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            self._seen[tp] = time.monotonic()
            expected = self._expected.get(tp)
            if expected is not None and offset < expected:
                repeated.setdefault(tp, []).append(offset)
                continue
            fresh.append(event)
            if expected is not None and offset > expected:
                self.holes += 1
                log.warning("%s: %s jumped from offset %d to %d; serving the %d skipped message(s)",
                            self.name, tp, expected, offset, offset - expected)
                holes.append(Hole(tp, expected, offset))
            self._expected[tp] = offset + 1
        for tp, offsets in repeated.items():
            self.repeats += len(offsets)
            log.warning("%s: %s delivered %d message(s) again (offsets %d..%d), served before in this assignment; "
                        "not serving them twice", self.name, tp, len(offsets), min(offsets), max(offsets))
        return holes, fresh


def read_hole(config: dict[str, Any], hole: Hole, timeout: float = 30.0) -> list[EventLike]:
    """Read the messages of ``hole`` with a consumer of its own; return them as events.

    The events carry what the agents read of Faust's (``faust_compat.direct_event``).
    Bounded by ``timeout``: what could not be read in time is logged and left (it stays in
    the topic).
    """
    from confluent_kafka import Consumer, TopicPartition

    topic, partition = hole.tp.topic, hole.tp.partition
    consumer = Consumer({**config, "group.id": "phrasestream-hole-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    found: list[EventLike] = []
    try:
        consumer.assign([TopicPartition(topic, partition, hole.start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            offset = msg.offset()
            if offset is None or offset >= hole.end:
                break
            found.append(direct_event(hole.tp, offset, msg.value()))
            if offset == hole.end - 1:
                break
        else:
            log.error("could not read offsets %d..%d of %s within %.0f s; read %d", hole.start, hole.end - 1,
                      hole.tp, timeout, len(found))
    finally:
        consumer.close()
    return found


def lag_and_committed(config: dict[str, Any], group: str, tps: Iterable[TP]) -> dict[TP, tuple[int, int | None]]:
    """Return, per partition, its end offset and the group's committed offset (None: none yet)."""
    by_topic: dict[str, list[TP]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp)
    consumer = probe(config, group)
    try:
        out: dict[TP, tuple[int, int | None]] = {}
        for topic, parts in by_topic.items():
            numbers = [tp.partition for tp in parts]
            ends = read_end_offsets(consumer, topic, numbers)
            committed = read_committed(consumer, topic, numbers)
            out.update({tp: (ends[tp.partition], committed.get(tp.partition)) for tp in parts})
        return out
    finally:
        consumer.close()


# --- the glue between the guard and a Faust app (the agents call these) -------------------


async def follow_assignment(app: faust.App, guard: OffsetGuard, settings: Settings, offload: Offload,
                            now: float) -> None:
    """Point ``guard`` at the current assignment of its topic; a new one starts at the committed offsets."""
    changed = guard.follow(frozenset(tp for tp in app.consumer.assignment() if tp.topic == guard.topic), now)
    if not (changed or guard.unbased):
        return
    try:
        ends = await offload(lag_and_committed, client_config(settings), settings.app_id, list(guard.assignment))
    except KafkaException as exc:
        # A slow broker (a busy machine, a SCRAM login per new client) must not end the agent's batch:
        # its events would be lost with it. The baseline waits for the next batch; the offsets the
        # batches show meanwhile are tracked as usual.
        guard.unbased = True
        log.warning("%s: cannot read the committed offsets of its new assignment yet (%s); asking again at the "
                    "next batch", guard.name, exc)
        return
    guard.unbased = False
    guard.baseline({tp: committed for tp, (_, committed) in ends.items()})


async def fill_holes(app: faust.App, guard: OffsetGuard, events: Sequence[EventLike], settings: Settings,
                     offload: Offload) -> tuple[list[EventLike], list[Hole]]:
    """Return what to serve of a batch, the messages of any hole first (read directly), and the holes.

    What to serve leaves out the events served before in this assignment
    (:meth:`OffsetGuard.split`). A new assignment starts the guard afresh: its first offsets
    are where the commits were.
    """
    await follow_assignment(app, guard, settings, offload, time.monotonic())
    holes, fresh = guard.split(events)
    extra: list[EventLike] = []
    for hole in holes:
        extra.extend(await offload(read_hole, client_config(settings), hole))
    return [*extra, *fresh], holes


async def restart_stalled(app: faust.App, guard: OffsetGuard, settings: Settings, offload: Offload,
                          after: float) -> None:
    """Seek a partition that stopped delivering, with messages left in it, to its next offset.

    The next offset is the one after the last event this worker read from it, or the group's
    committed offset when it read none since the assignment.
    """
    if app.rebalancing:  # a rebalance moves partitions on purpose; look again next time
        return
    now = time.monotonic()
    await follow_assignment(app, guard, settings, offload, now)
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


async def holes_done(app: faust.App, holes: Iterable[Hole]) -> None:
    """Tell Faust's offset bookkeeping that the holes are served, so commits pass them.

    Faust commits a partition only up to its first offset not acknowledged; the messages of a
    hole were never delivered to it, so it would wait for them for ever (``faust_compat.add_gap``).
    Called as soon as the hole is read, before its messages are served: that is safe because
    the commit passes a hole only together with the event right after it, which is in the same
    batch as the hole's messages and acked with them, once the broker has all their outputs.
    """
    for hole in holes:
        await add_gap(app, hole.tp, hole.start, hole.end - 1)
