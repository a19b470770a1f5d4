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


def batched(producer: FakeProducer, **kwargs: int) -> Outbox:
    return Outbox(Settings(_env_file=None), "test", producer=producer, threaded=False, **kwargs)


def test_a_batch_settles_once_its_failed_message_is_delivered_on_a_second_try() -> None:
    producer = FakeProducer(fail_once={b"b"})
    box, settled = batched(producer), []
    box.open(lambda: settled.append("batch"))
    for value in (b"a", b"b"):
        box.put("t", None, value)
    box.seal()
    box.poll(0)
    box.poll(0)  # b failed: produced again
    assert settled == [] and box.in_flight == 2
    box.poll(0)
    assert settled == ["batch"] and box.in_flight == 0


def test_an_empty_batch_settles_at_once_and_after_the_batches_before_it() -> None:
    producer = FakeProducer()
    box, settled = batched(producer), []
    box.open(lambda: settled.append(1))
    box.put("t", None, b"a")
    box.seal()
    box.open(lambda: settled.append(2))
    box.seal()
    assert settled == []
    box.poll(0)
    assert settled == [1, 2]


def test_room_waits_while_too_much_is_in_flight_and_says_so_once_the_broker_is_away(caplog, monkeypatch) -> None:
    import asyncio

    import streams.kafka.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "FLUSH_WAIT_S", 0.01)
    producer = FakeProducer()
    box = batched(producer, max_in_flight=1)
    box.open(lambda: None)
    box.put("t", None, b"a")
    box.put("t", None, b"b")
    box.seal()

    async def wait_then_deliver() -> None:
        waiting = asyncio.ensure_future(box.room())
        for _ in range(5):  # longer than FLUSH_WAIT_S: the wait is reported
            await asyncio.sleep(0.01)
        assert not waiting.done(), "two messages in flight, one allowed"
        box.poll(0)
        box.poll(0)
        await asyncio.wait_for(waiting, 5)

    with caplog.at_level(logging.INFO, "phrasestream.worker"):
        asyncio.run(wait_then_deliver())
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "test: 2 message(s) wait for the broker; the stream waits with them"
    assert messages[-1].startswith("test: the broker took the waiting messages after")


def test_drain_settles_what_the_broker_took_and_says_what_it_did_not(caplog) -> None:
    producer = FakeProducer(away_flushes=10**9)
    box, settled = batched(producer), []
    box.open(lambda: settled.append(1))
    box.put("t", None, b"a")
    box.seal()
    with caplog.at_level(logging.WARNING, "phrasestream.worker"):
        left = box.drain(0.05)
    assert left == 1 and settled == []
    assert "not acknowledged at stop" in caplog.records[-1].getMessage()
    producer.away_flushes = 0
    assert box.drain(1.0) == 0 and settled == [1]
