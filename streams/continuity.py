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

Within one assignment, the offsets of a partition we read arrive one by one. Our topics have
no compaction and our producers no transactions, so a jump means messages were skipped.
:class:`OffsetGuard` watches every batch and reports each hole. The agent then reads the
hole itself (:func:`read_hole`, a plain consumer on that one partition, bounded) and serves
it with the batch. It also tells Faust's offset bookkeeping that the hole is done, so commits
go on. A user's producer may be transactional: its commit markers leave real holes in
``phrases.in``. Reading such a hole returns only the messages that exist, which costs one
short read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("phrasestream.worker")


@dataclass(frozen=True)
class Hole:
    """Offsets ``start`` .. ``end - 1`` of partition ``tp`` were skipped."""

    tp: Any
    start: int
    end: int


class OffsetGuard:
    """Track the next expected offset of each partition of one agent; report the holes.

    ``check(events)`` takes the batch's events (each with ``.message.tp`` and
    ``.message.offset``) and returns the :class:`Hole` s it shows. ``reset()`` forgets the
    offsets, for a new assignment (its first offsets are wherever the commits were).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._expected: dict[Any, int] = {}
        self.assignment: frozenset = frozenset()  # the assignment the offsets belong to
        self.holes = 0  # holes found (for the log and the tests)

    def reset(self) -> None:
        self._expected.clear()

    def check(self, events: Iterable[Any]) -> list[Hole]:
        holes: list[Hole] = []
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            expected = self._expected.get(tp)
            if expected is not None and offset > expected:
                self.holes += 1
                log.warning("%s: %s jumped from offset %d to %d; serving the %d skipped message(s)",
                            self.name, tp, expected, offset, offset - expected)
                holes.append(Hole(tp, expected, offset))
            if expected is None or offset >= expected:
                self._expected[tp] = offset + 1
        return holes


def read_hole(config: dict[str, Any], hole: Hole, timeout: float = 30.0) -> list[Any]:
    """Read the messages of ``hole`` with a consumer of its own; return them as events.

    The events carry ``value`` and ``message`` (topic, partition, offset, tp) like Faust's,
    which is all the agents read. Bounded by ``timeout``: what could not be read in time is
    logged and left (it stays in the topic).
    """
    from confluent_kafka import Consumer, TopicPartition

    topic, partition = hole.tp.topic, hole.tp.partition
    consumer = Consumer({**config, "group.id": "phrasestream-hole-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    found: list[Any] = []
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
            found.append(SimpleNamespace(value=msg.value(), message=SimpleNamespace(
                topic=topic, partition=partition, offset=offset, tp=hole.tp)))
            if offset == hole.end - 1:
                break
        else:
            log.error("could not read offsets %d..%d of %s within %.0f s; read %d", hole.start, hole.end - 1,
                      hole.tp, timeout, len(found))
    finally:
        consumer.close()
    return found
