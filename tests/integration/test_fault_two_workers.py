"""Fault injection: two workers in one group over 4 partitions; one is killed, the other takes over.

Both workers get partitions. After ``kill -9`` of one, the survivor is given all of them once
the dead member's session (``PHRASESTREAM_SESSION_TIMEOUT_SECONDS``) expires, recovers the
moved partitions' embedding-cache entries from the changelog, and serves the rest of the
stream: nothing is lost, and phrases cached by the dead worker are hits, not recomputed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from bounds import BOUND_S, POLL_S
from confluent_kafka.admin import AdminClient
from faults import REPEAT_BOUND, Stream, Watch, figures, size, wait_db_rows

from models.registry.lifecycle import active_heads
from ops.kafka.clients import client_config
from streams.app import READY_LINE

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SINK_READY = "sink started"


def assignment(settings) -> dict[str, set[int]]:  # type: ignore[no-untyped-def]
    """Return each member's (by its static id) partitions of the input topic."""
    admin = AdminClient(client_config(settings))
    group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=30)
    return {m.group_instance_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == settings.topic_in}
            for m in group.members}


def wait_assignment(settings, members: int, timeout: float = BOUND_S) -> dict[str, set[int]]:  # type: ignore[no-untyped-def]
    """Wait (bounded) until the group has ``members`` members holding all 4 input partitions."""
    end = time.monotonic() + timeout
    seen = assignment(settings)
    while time.monotonic() < end:
        if len(seen) == members and set().union(*seen.values()) == set(range(settings.partitions_in)):
            return seen
        time.sleep(POLL_S)
        seen = assignment(settings)
    return seen


def test_two_workers_share_the_partitions_and_the_survivor_takes_over_with_the_cache(stack) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings
    heads = active_heads(settings)
    n = size(800, 10_000)
    env = {"PHRASESTREAM_WORKER_METRICS_PORT": "0"}
    stack.start("worker", READY_LINE, label="worker-1", PHRASESTREAM_WORKER_INDEX="1", **env)
    doomed = stack.start("worker", READY_LINE, label="worker-2", PHRASESTREAM_WORKER_INDEX="2", **env)
    stack.start("sink", SINK_READY)
    shared = wait_assignment(settings, 2)
    assert len(shared) == 2 and all(shared.values()), f"both workers must hold input partitions: {shared}"

    # before: a stream of new phrases (cache misses), served by both workers
    before = Stream.of(settings, heads, n, seed=21)
    with Watch(settings, before.run) as watch_before:
        before.produce(settings)
        assert watch_before.wait_for(before), "the first stream was not answered"
    # after: the same phrases again (same seed), under new ids, once worker-2 is dead
    after = Stream.of(settings, heads, n, seed=21)
    with Watch(settings, after.run) as watch_after:
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.wait(30)
        stack.procs.pop("worker-2", None)
        after.produce(settings)
        alone = wait_assignment(settings, 1)
        took_over_at = time.monotonic()
        complete = watch_after.wait_for(after)
        rows = wait_db_rows(settings, after.run, len(after.expected))
        out = figures("two_workers", after, watch_after, rows,
                      assignment_before={k: sorted(v) for k, v in shared.items()},
                      assignment_after={k: sorted(v) for k, v in alone.items()},
                      takeover_s=round(took_over_at - killed_at, 1),
                      hit_rate_before=watch_before.hit_rate(), hit_rate_after=watch_after.hit_rate())
    assert complete and out["missing"] == 0, out
    assert out["duplicates"] <= REPEAT_BOUND * len(after.expected), out
    assert rows == (len(after.expected), len(after.expected)), "each (id, model, version) once in PostgreSQL"
    assert len(alone) == 1 and set().union(*alone.values()) == set(range(settings.partitions_in)), alone
    # the moved partitions' cache entries came from the changelog: the repeated phrases are hits
    assert out["hit_rate_after"] >= 0.95, out
