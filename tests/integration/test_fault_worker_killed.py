"""Fault injection: ``kill -9`` of the worker in the middle of a stream, then a new one.

Nothing may be lost, PostgreSQL must hold each (id, model, version) once, and the consumers
of ``predictions.out`` may see at most the work since the last commit again (at-least-once).
The agents' inputs are acked once the broker has their outputs and committed within
``PHRASESTREAM_COMMIT_INTERVAL_MS`` (20 ms) after that, so what is served again is at most
what each agent had in flight (``streams.kafka.committer``): below 2%. The restarted worker is the same
static group member, so it takes its partitions back without waiting for the dead
member's session to expire.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from bounds import BOUND_S
from confluent_kafka.admin import AdminClient
from faults import REPEAT_BOUND, Stream, Watch, figures, size, wait_db_rows

from models.registry.lifecycle import active_heads
from streams.app import READY_LINE, group_instance_id

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SINK_READY = "sink started"


def group_members(settings, group: str) -> list:  # type: ignore[no-untyped-def]
    """Return the members of a consumer group, as the broker describes them."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return list(description.members)


def test_a_worker_killed_mid_stream_loses_nothing_and_repeats_under_2_percent(stack) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings
    stream = Stream.of(settings, active_heads(settings), size(3_000, 20_000))
    expected = stream.expected
    worker = stack.start("worker", READY_LINE)
    stack.start("sink", SINK_READY)
    with Watch(settings, stream.run) as watch:
        producing = threading.Thread(target=stream.produce, args=(settings,), daemon=True)
        producing.start()
        # kill once about 40% of the predictions are out: both agents are mid-stream then
        target = int(len(expected) * 0.4)
        seen = watch.wait_count(target)
        assert seen >= target, f"the stream was not answered before the kill\n{stack.tails()}"
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.wait(30)
        at_kill = len(watch.predictions)
        stack.procs.pop("worker", None)
        restarted_at = time.monotonic()
        stack.start("worker", READY_LINE, label="worker-restarted")
        ready_at = time.monotonic()
        producing.join(BOUND_S)
        complete = watch.wait_for(stream)
        first = watch.first_after(restarted_at + 1.0)
        rows = wait_db_rows(settings, stream.run, len(expected))
        members = group_members(settings, settings.app_id)
        out = figures(
            "worker_killed", stream, watch, rows,
            seen_before_kill=seen, predicted_at_kill=at_kill,
            restart_to_ready_s=round(ready_at - restarted_at, 1),
            ready_to_first_prediction_s=round(first - ready_at, 1) if first else None,
            kill_to_first_prediction_s=round(first - killed_at, 1) if first else None,
            group_members=[m.group_instance_id for m in members],
        )
    assert complete, f"not every phrase was answered after the restart: {out}"
    assert out["missing"] == 0
    assert out["dead_lettered"] == len(stream.invalid)
    assert rows == (len(expected), len(expected)), "PostgreSQL must hold each (id, model, version) exactly once"
    assert out["duplicates"] <= REPEAT_BOUND * len(expected), out
    # the restarted worker took the dead one's place as the same static member: one member, the same id
    assert [m.group_instance_id for m in members] == [group_instance_id(settings)]
