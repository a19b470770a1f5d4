"""Where a topic ends and where a consumer group stands: the one place that asks the broker.

Benchmarks, the demo feed, the offset guard and the tests all need the same two answers, per
partition: the high watermark (the offset the next message will get) and a group's committed
offset (``None`` when the group has committed nothing there).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

TIMEOUT_S = 10.0

LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})
"""Errors of a broker that is (re)electing a partition's leader, as one does for a while after it
starts: asked again until the timeout, never passed on at once."""


def _partitions(consumer: Consumer, topic: str, partitions: Iterable[int] | None, timeout: float) -> list[int]:
    if partitions is not None:
        return sorted(partitions)
    meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"topic {topic!r}: {meta.error}")
    return sorted(meta.partitions)


def read_watermarks(consumer: Consumer, topic: str, partitions: Iterable[int] | None = None,
                    timeout: float = TIMEOUT_S) -> dict[int, tuple[int, int]]:
    """Return partition -> (low, high) watermarks of ``topic``, asked through an open ``consumer`` (never cached).

    The low watermark is the oldest offset still held (past 0 once retention deleted records).
    """
    deadline = time.monotonic() + timeout
    return {p: _watermarks(consumer, TopicPartition(topic, p), timeout, deadline)
            for p in _partitions(consumer, topic, partitions, timeout)}


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout: float, deadline: float) -> tuple[int, int]:
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        except KafkaException as exc:
            if exc.args[0].code() not in LEADER_MOVING or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_end_offsets(consumer: Consumer, topic: str, partitions: Iterable[int] | None = None,
                     timeout: float = TIMEOUT_S) -> dict[int, int]:
    """Return partition -> high watermark of ``topic``, asked through an open ``consumer`` (never cached)."""
    return {p: high for p, (_low, high) in read_watermarks(consumer, topic, partitions, timeout).items()}


def read_committed(consumer: Consumer, topic: str, partitions: Iterable[int] | None = None,
                   timeout: float = TIMEOUT_S) -> dict[int, int | None]:
    """Return partition -> the committed offset of ``consumer``'s group on ``topic`` (``None``: none yet)."""
    wanted = [TopicPartition(topic, p) for p in _partitions(consumer, topic, partitions, timeout)]
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in consumer.committed(wanted, timeout=timeout)}


def probe(config: dict[str, Any], group: str = "phrasestream-offsets-probe") -> Consumer:
    """Return a consumer that only asks about offsets (it never subscribes, never commits); close it after."""
    return Consumer({**config, "group.id": group, "enable.auto.commit": False})


def end_offsets(config: dict[str, Any], topic: str, partitions: Iterable[int] | None = None,
                timeout: float = TIMEOUT_S) -> dict[int, int]:
    """Return partition -> high watermark of ``topic`` (every partition unless ``partitions`` names some)."""
    consumer = probe(config)
    try:
        return read_end_offsets(consumer, topic, partitions, timeout)
    finally:
        consumer.close()


def committed_offsets(config: dict[str, Any], group: str, topic: str, partitions: Iterable[int] | None = None,
                      timeout: float = TIMEOUT_S) -> dict[int, int | None]:
    """Return partition -> ``group``'s committed offset on ``topic`` (``None`` where it has committed nothing)."""
    consumer = probe(config, group)
    try:
        return read_committed(consumer, topic, partitions, timeout)
    finally:
        consumer.close()


def caught_up(config: dict[str, Any], group: str, topic: str, timeout: float = TIMEOUT_S) -> bool:
    """Return whether ``group`` has committed the end of every partition of ``topic`` (a readiness signal)."""
    consumer = probe(config, group)
    try:
        ends = read_end_offsets(consumer, topic, None, timeout)
        done = read_committed(consumer, topic, ends, timeout)
    finally:
        consumer.close()
    return all((done.get(p) or 0) >= end for p, end in ends.items())
