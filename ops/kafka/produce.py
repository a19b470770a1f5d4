"""Produce through confluent-kafka without losing a message to a full local queue."""

from __future__ import annotations

from typing import Any


def produce_retrying(producer: Any, topic: str, value: bytes | None, key: bytes | str | None = None,
                     *, wait_s: float = 0.05, **kwargs: Any) -> None:
    """``producer.produce(topic, value, key, **kwargs)``, serving delivery reports while the local queue is full.

    confluent-kafka raises ``BufferError`` when ``queue.buffering.max.messages`` (or ``.kbytes``) is
    reached; polling for ``wait_s`` lets delivered messages leave the queue, then the produce is tried
    again. It blocks for as long as the broker takes to drain the queue: the caller bounds its run by
    the number of messages it produces, and by ``flush``'s timeout at the end.
    """
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(wait_s)
