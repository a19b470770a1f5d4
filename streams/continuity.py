"""Catch a partition whose offsets jump, and read the skipped messages again.

Why: after a worker is killed and started again, the restarted worker sometimes receives a
partition's messages with a hole in them. We saw it in the worker-killed fault test, about
one run in three: the offsets of one partition of the cleaned topic went 377, then 412,
skipping 34 messages. Faust's table recovery resumes fetching before it seeks the stream
partitions to their committed offsets, and the records fetched in between are dropped.
Those messages were never served: lost until the next restart. And since they were never
acknowledged, Faust never committed that partition past the hole again.

Within one assignment, the offsets of a partition we read arrive one by one. Our topics have
no compaction and our producers no transactions, so a jump means messages were skipped.
:class:`OffsetGuard` watches every batch. When a partition jumps, it asks for a seek back to
the first skipped offset: the skipped messages are then served, and the ones after them
come again (a few repeats, which at-least-once allows). A user's producer may be
transactional, and its commit markers make real holes in ``phrases.in``. So if a seek reads
past the same hole again, the guard takes the hole as real and does not seek there twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("phrasestream.worker")


@dataclass
class _Partition:
    expected: int | None = None  # the next offset we should see
    seeking: tuple[int, int] | None = None  # (sought offset, offset it had jumped to)
    accepted: set[tuple[int, int]] = field(default_factory=set)  # holes found real: (from, to)


class OffsetGuard:
    """Track the next expected offset of each partition; return the seeks that fill holes.

    ``check(events)`` takes the batch's events (each with ``.message.tp`` and
    ``.message.offset``) and returns ``[(tp, offset)]`` to seek to. ``reset()`` forgets
    everything, for a new assignment (its first offsets are wherever the commits were).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._parts: dict[Any, _Partition] = {}
        self.assignment: frozenset = frozenset()  # the assignment the offsets belong to
        self.holes = 0  # holes found (for the log and the tests)

    def reset(self) -> None:
        self._parts.clear()

    def check(self, events: Iterable[Any]) -> list[tuple[Any, int]]:
        seeks: list[tuple[Any, int]] = []
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            part = self._parts.setdefault(tp, _Partition())
            if part.seeking is not None:
                sought, jumped_to = part.seeking
                if offset == sought:  # the seek worked: the hole is being read
                    part.seeking = None
                elif offset == jumped_to:  # read past the same hole again: it is real
                    part.accepted.add((sought, jumped_to))
                    part.seeking = None
                    log.info("%s: offsets %d..%d of %s do not exist (a real hole, e.g. transaction markers)",
                             self.name, sought, jumped_to - 1, tp)
                else:  # messages fetched before the seek: served, not checked
                    continue
            elif part.expected is not None and offset > part.expected \
                    and (part.expected, offset) not in part.accepted:
                self.holes += 1
                log.warning("%s: %s jumped from offset %d to %d; reading the %d skipped message(s) again",
                            self.name, tp, part.expected, offset, offset - part.expected)
                part.seeking = (part.expected, offset)
                seeks.append((tp, part.expected))
                continue
            if part.expected is None or offset >= part.expected:
                part.expected = offset + 1
        return seeks
