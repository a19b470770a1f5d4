"""Outbox: a full local queue, a failed delivery and a broker that is away all end in every message delivered once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from schemas.settings import Settings
from streams.kafka.outbox import FLUSH_WAIT_S, Outbox


class FakeProducer:
    """confluent-kafka's Producer as the outbox uses it: a bounded local queue, delivery reports on poll/flush."""

    def __init__(self, queue_max: int = 100, fail_once: set[bytes] = frozenset(), away_flushes: int = 0) -> None:
        self.queue: list[tuple[Message, Callable[[Any, Any], None]]] = []
        self.queue_max, self.fail_once, self.away_flushes = queue_max, set(fail_once), away_flushes
        self.delivered: list[bytes] = []
        self.full = 0

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        if len(self.queue) >= self.queue_max:
            self.full += 1
            raise BufferError("Local: Queue full")
        self.queue.append((Message(topic=topic, key=key, value=value), on_delivery))

    def poll(self, timeout: float) -> int:
        return self._deliver(1)

    def flush(self, timeout: float) -> int:
        if self.away_flushes:
            self.away_flushes -= 1
            return len(self.queue)
        self._deliver(len(self.queue))
        return len(self.queue)

    def _deliver(self, count: int) -> int:
        done, self.queue = self.queue[:count], self.queue[count:]
        for msg, report in done:
            if msg.value() in self.fail_once:
                self.fail_once.discard(msg.value())
                report("Broker: Not enough in-sync replicas", msg)
            else:
                self.delivered.append(msg.value())
        return len(done)


def outbox(producer: FakeProducer) -> Outbox:
    return Outbox(Settings(_env_file=None), "test", producer=producer)


def test_put_waits_out_a_full_local_queue_and_loses_nothing() -> None:
    producer = FakeProducer(queue_max=2)
    box = outbox(producer)
    for i in range(5):
        box.put("t", None, b"%d" % i)
    box.flush()
    assert producer.full > 0, "the queue was full at times"
    assert producer.delivered == [b"0", b"1", b"2", b"3", b"4"]


def test_flush_produces_a_failed_message_again_and_returns_once_every_one_is_delivered(caplog) -> None:
    producer = FakeProducer(fail_once={b"b"})
    box = outbox(producer)
    for value in (b"a", b"b", b"c"):
        box.put("t", b"k", value)
    with caplog.at_level(logging.WARNING, "phrasestream.worker"):
        box.flush()
    assert sorted(producer.delivered) == [b"a", b"b", b"c"] and not producer.queue
    assert [r.getMessage() for r in caplog.records] == [
        "test: 1 message(s) failed to reach the broker; producing them again"]


def test_flush_waits_while_the_broker_is_away_and_says_so_once(caplog) -> None:
    producer = FakeProducer(away_flushes=2)
    box = outbox(producer)
    box.put("t", None, b"x")
    with caplog.at_level(logging.INFO, "phrasestream.worker"):
        box.flush()
    assert producer.delivered == [b"x"]
    assert [r.getMessage() for r in caplog.records] == [
        "test: 1 message(s) wait for the broker; the stream waits with them",
        f"test: the broker took the waiting messages after {2 * FLUSH_WAIT_S:.0f} s"]
