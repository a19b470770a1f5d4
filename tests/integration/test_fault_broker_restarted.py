"""Fault injection: the Kafka broker restarted in the middle of a stream.

The worker and the sink talk to a broker of this test's own (restarting the suite's shared
broker would break the tests beside it). Neither is restarted: they ride the outage out,
and afterwards nothing is lost and PostgreSQL holds each prediction once.
"""

from __future__ import annotations

import threading
import time

import pytest
from bounds import BOUND_S
from faults import REPEAT_BOUND, Stream, Watch, figures, pid_alive, private_broker, size, wait_db_rows

from models.registry.lifecycle import active_heads
from models.registry.pointers import publish, read_all
from ops.kafka.local import ensure_kafka, stop_kafka
from ops.kafka.topics import create_topics
from ops.paths import Paths
from streams.app import READY_LINE

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SINK_READY = "sink started"


def test_a_broker_restart_mid_stream_loses_nothing_and_needs_no_restart_of_worker_or_sink(
        stack, base_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    heads = active_heads(stack.settings)
    with private_broker(stack.settings, tmp_path) as kafka:
        # the stack's topic names and its registry, on the private broker
        settings = stack.settings.model_copy(update={"kafka_port": kafka.kafka_port,
                                                     "kafka_sasl_port": kafka.kafka_sasl_port})
        create_topics(settings)
        for pointer in read_all(base_settings).values():
            publish(settings, pointer)
        env = {"PHRASESTREAM_KAFKA_PORT": str(kafka.kafka_port), "PHRASESTREAM_KAFKA_SASL_PORT": str(kafka.kafka_sasl_port),
               "PHRASESTREAM_WORKER_METRICS_PORT": "0", "PHRASESTREAM_SINK_METRICS_PORT": "0"}
        worker = stack.start("worker", READY_LINE, **env)
        sink = stack.start("sink", SINK_READY, **env)
        count = size(2_000, 20_000)
        stream = Stream.of(settings, heads, count, seed=41)
        with Watch(settings, stream.run) as watch:
            half = len(stream.messages) // 2
            stream.produce(settings, 0, half)
            first = len(stream.expected) // 5
            assert watch.wait_count(first) >= first, f"the stream was not answered before the restart\n{stack.tails()}"
            stop_kafka(Paths.of(kafka))  # SIGTERM, then waits for the broker to exit
            down_at = time.monotonic()
            at_stop = len(watch.predictions)
            ensure_kafka(kafka)  # the same data dir: a restart, not a new broker
            up_at = time.monotonic()
            rest = threading.Thread(target=stream.produce, args=(settings, half), daemon=True)
            rest.start()
            rest.join(BOUND_S)
            complete = watch.wait_for(stream)
            first_after = watch.first_after(up_at)
            rows = wait_db_rows(settings, stream.run, len(stream.expected))
            out = figures("broker_restarted", stream, watch, rows, predicted_before_stop=at_stop,
                          broker_down_s=round(up_at - down_at, 1),
                          broker_up_to_first_prediction_s=round(first_after - up_at, 1) if first_after else None,
                          worker_alive=pid_alive(worker.pid), sink_alive=pid_alive(sink.pid))
        stack.stop("worker")
        stack.stop("sink")
    assert complete and out["missing"] == 0, out
    assert out["duplicates"] <= REPEAT_BOUND * len(stream.expected), out
    assert out["dead_lettered"] == len(stream.invalid)
    assert rows == (len(stream.expected), len(stream.expected)), "each (id, model, version) once in PostgreSQL"
    assert out["worker_alive"] and out["sink_alive"], "the worker and the sink recover without a restart"
