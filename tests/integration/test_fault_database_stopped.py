"""Fault injection: the real PostgreSQL server stopped in the middle of a stream, then started.

The sink writes to a PostgreSQL server of this test's own (so that stopping it does not
stop the suite's shared server under the tests beside it). Predictions must keep flowing
while the server is down, and once it is back every row arrives exactly once.
"""

from __future__ import annotations

import threading
import time

import pytest
from bounds import BOUND_S
from faults import Stream, Watch, figures, pid_alive, private_postgres, size, stress, wait_db_rows

from models.registry.lifecycle import active_heads
from ops.paths import Paths
from ops.postgres.local import ensure_postgres, stop_postgres
from streams.app import READY_LINE

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SINK_READY = "sink started"


def test_predictions_flow_while_the_database_is_down_and_every_row_arrives_once(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings
    outage_s = 30.0 if stress() else 12.0
    count = size(2_000, 20_000)
    stream = Stream.of(settings, active_heads(settings), count, seed=31)
    worker = stack.start("worker", READY_LINE, PHRASESTREAM_WORKER_METRICS_PORT="0")
    with private_postgres(settings, tmp_path, settings.pg_schema) as db, Watch(settings, stream.run) as watch:
        sink = stack.start("sink", SINK_READY, PHRASESTREAM_HOME=str(db.home), PHRASESTREAM_PG_PORT=str(db.pg_port),
                           PHRASESTREAM_SINK_METRICS_PORT="0")
        # paced, so that the stream runs before, during and after the outage
        pace = count / (outage_s * 2.5)
        producing = threading.Thread(target=stream.produce, args=(settings,), kwargs={"pace_per_s": pace},
                                     daemon=True)
        producing.start()
        first = max(1, len(stream.expected) // 10)
        assert watch.wait_count(first) >= first, f"the stream was not answered before the outage\n{stack.tails()}"
        stop_postgres(Paths.of(db))
        down_at = time.monotonic()
        at_stop = len(watch.predictions)
        # the server stays down until a prediction has come meanwhile (the signal: however slow the
        # machine, the outage covers some serving), and for outage_s at least (the fault's length)
        watch.wait_count(at_stop + 1)
        time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        during = len(watch.predictions) - at_stop
        ensure_postgres(db)
        up_at = time.monotonic()
        producing.join(BOUND_S)
        complete = watch.wait_for(stream)
        rows = wait_db_rows(db, stream.run, len(stream.expected))
        caught_up_at = time.monotonic()
        out = figures("database_stopped", stream, watch, rows, outage_s=round(up_at - down_at, 1),
                      predicted_while_down=during,
                      rows_complete_after_restart_s=round(caught_up_at - up_at, 1),
                      worker_alive=pid_alive(worker.pid), sink_alive=pid_alive(sink.pid))
    assert during > 0, "predictions must keep flowing while the database is down"
    assert complete and out["missing"] == 0, out
    assert rows == (len(stream.expected), len(stream.expected)), "every row once, after the restart"
    assert out["worker_alive"] and out["sink_alive"], "neither the worker nor the sink may die of the outage"
