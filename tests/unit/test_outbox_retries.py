"""Outbox: a full local queue, a failed delivery and a broker that is away all end in every message delivered once."""

from __future__ import annotations

import logging

from fakes import FakeProducer

from schemas.settings import Settings
from streams.kafka.outbox import FLUSH_WAIT_S, Outbox


def outbox(producer: FakeProducer) -> Outbox:
    return Outbox(Settings(_env_file=None), "test", producer=producer)


def test_put_waits_out_a_full_local_queue_and_loses_nothing() -> None:
    producer = FakeProducer(queue_max=2)
    box = outbox(producer)
    for i in range(5):
        box.put("t", None, b"%d" % i)
    box.flush()
    assert producer.full > 0, "the queue was full at times"
    assert [value for _, _, value in producer.delivered] == [b"0", b"1", b"2", b"3", b"4"]


def test_flush_produces_a_failed_message_again_and_returns_once_every_one_is_delivered(caplog) -> None:
    producer = FakeProducer(fail_once={b"b"})
    box = outbox(producer)
    for value in (b"a", b"b", b"c"):
        box.put("t", b"k", value)
    with caplog.at_level(logging.WARNING, "phrasestream.worker"):
        box.flush()
    assert sorted(value for _, _, value in producer.delivered) == [b"a", b"b", b"c"] and not producer.queue
    assert [r.getMessage() for r in caplog.records] == [
        "test: 1 message(s) failed to reach the broker; producing them again"]


def test_flush_waits_while_the_broker_is_away_and_says_so_once(caplog) -> None:
    producer = FakeProducer(away_flushes=2)
    box = outbox(producer)
    box.put("t", None, b"x")
    with caplog.at_level(logging.INFO, "phrasestream.worker"):
        box.flush()
    assert producer.delivered == [("t", None, b"x")]
    assert [r.getMessage() for r in caplog.records] == [
        "test: 1 message(s) wait for the broker; the stream waits with them",
        f"test: the broker took the waiting messages after {2 * FLUSH_WAIT_S:.0f} s"]
