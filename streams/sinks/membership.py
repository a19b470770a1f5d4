"""Notice a sink consumer that has fallen out of its group and will not come back by itself.

Seen in the broker-restart fault test (librdkafka 2.16, a single KRaft broker restarted a few
seconds after the sink joined): the sink's consumers lost their session while the broker was
down, the broker then removed them from their groups, and their coordinator connection never
came up again: every minute librdkafka logged ``GroupCoordinator: Timed out 0 in-flight, 0
retry-queued, 1 out-queue``, the consumers held no partitions, and the sink stored nothing more,
although the worker beside it (aiokafka) went on at once.

:class:`GroupWatch` asks, once a consumer has held no partition for ``after_s`` seconds,
whether the broker still sees any member in the group. A group that is empty (or dead) while
our consumer is subscribed to it means that consumer is not coming back: the runner replaces
it with a new one. A sink that simply has no partitions because other sinks hold them all
(more sinks than partitions) sees a group with members, and is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("phrasestream.sink")

GONE_STATES = frozenset({"EMPTY", "DEAD"})


def group_state(config: dict[str, Any], group: str, timeout: float = 10.0) -> str | None:
    """Return the broker's state of consumer group ``group`` (``"STABLE"``, ``"EMPTY"``, …); None if it cannot say."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        found = AdminClient(config).describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    except KafkaException as exc:
        log.warning("cannot describe consumer group %s: %s", group, exc)
        return None
    return str(found.state.name)


class GroupWatch:
    """Say when a subscribed consumer that holds no partition has been left out of its group for good."""

    def __init__(self, group: str, state_of: Callable[[str], str | None], after_s: float) -> None:
        self.group = group
        self._state_of = state_of
        self.after_s = after_s
        self._unassigned_since: float | None = None

    def lost(self, assigned: bool, now: float) -> bool:
        """Return True when the consumer should be replaced; call it once per poll with its assignment."""
        if assigned:
            self._unassigned_since = None
            return False
        if self._unassigned_since is None:
            self._unassigned_since = now
            return False
        if now - self._unassigned_since < self.after_s:
            return False
        self._unassigned_since = now  # ask the broker again one period later, not at every poll
        state = self._state_of(self.group)
        if state in GONE_STATES:
            log.warning("the sink's consumer has held no partition for %.0f s and group %s is %s: "
                        "it has fallen out of its group; joining again with a new consumer",
                        self.after_s, self.group, state.lower())
            return True
        return False
