"""The live version of every head, on the compacted Kafka topic ``models.registry``.

One message per change, keyed ``region/model``, holding a :class:`RegistryPointer`.
Compaction keeps at least the newest message of every key, so reading the topic from its
start to its end gives the live version of every head, on any machine that reaches the
broker. Readers never join a consumer group: they assign the partitions themselves and
commit nothing, so any number of workers and commands read the whole topic.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ops.kafka.clients import client_config
from schemas.messages import RegistryPointer

if TYPE_CHECKING:
    from confluent_kafka import Consumer

log = logging.getLogger("phrasestream.registry")

Key = tuple[str, str]


class PointerError(Exception):
    """The registry topic cannot be read or written."""


def _consumer(settings: Any) -> Consumer:
    from confluent_kafka import Consumer

    return Consumer(client_config(settings, {
        # never subscribed and never committed: the id only satisfies the client
        "group.id": f"phrasestream-registry-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }))


def _partitions(consumer: Any, topic: str, timeout: float) -> list[Any]:
    from confluent_kafka import KafkaException, TopicPartition

    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:  # the broker does not answer
        raise PointerError(f"cannot read the registry topic {topic}: {exc}") from None
    if meta is None or meta.error is not None or not meta.partitions:
        raise PointerError(f"the registry topic {topic} does not exist; run `phrasestream up`")
    return [TopicPartition(topic, p) for p in sorted(meta.partitions)]


def decode(value: bytes | None) -> RegistryPointer | None:
    """Return the pointer in a message value, or None for a tombstone or an unreadable value."""
    if value is None:
        return None
    try:
        return RegistryPointer.model_validate_json(value)
    except ValidationError as exc:
        log.warning("registry: skipped an unreadable pointer: %s", exc.errors()[0]["msg"])
        return None


def read_all(settings: Any, timeout: float = 30.0) -> dict[Key, RegistryPointer]:
    """Read the registry topic from its start to its current end; return the newest pointer per key."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException

    from ops.kafka.offsets import read_watermarks

    consumer = _consumer(settings)
    try:
        parts = _partitions(consumer, settings.topic_registry, min(timeout, 15.0))
        try:
            marks = read_watermarks(consumer, settings.topic_registry, [tp.partition for tp in parts],
                                    min(timeout, 15.0))
        except KafkaException as exc:
            raise PointerError(f"cannot read the registry topic {settings.topic_registry}: {exc}") from None
        ends = {partition: high for partition, (low, high) in marks.items() if high > low}
        out: dict[Key, RegistryPointer] = {}
        if not ends:
            return out
        for tp in parts:
            tp.offset = OFFSET_BEGINNING
        consumer.assign([tp for tp in parts if tp.partition in ends])
        deadline = time.monotonic() + timeout
        done: set[int] = set()
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise PointerError(f"reading the registry topic {settings.topic_registry} took over {timeout:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise PointerError(f"reading the registry topic: {error}")
            partition, offset = msg.partition(), msg.offset()
            # a record and a partition-EOF event always have both; confluent-kafka types them optional
            assert partition is not None and offset is not None
            if error is not None:  # the end of the partition
                if offset >= ends[partition]:
                    done.add(partition)
                continue
            pointer = decode(msg.value())
            if pointer is not None:
                out[(pointer.region, pointer.model)] = pointer
            if offset + 1 >= ends[partition]:
                done.add(partition)
        return out
    finally:
        consumer.close()


def publish(settings: Any, pointer: RegistryPointer, timeout: float = 30.0) -> None:
    """Write ``pointer`` to the registry topic and wait until the broker has it (acks=all)."""
    from ops.kafka.topics import produce_acked

    errors = produce_acked(settings, settings.topic_registry, [(pointer.key, pointer.to_bytes())], timeout)
    if errors:
        raise PointerError(f"the registry topic {settings.topic_registry} did not take the pointer of "
                           f"{pointer.region}/{pointer.model}: {errors[0]}")


class Follower:
    """Call ``on_pointer`` (in a thread of its own) for every pointer written to the topic.

    It starts at the topic's start, so the first calls replay the live version of every key.
    A broker outage only delays it: the client reconnects by itself.
    """

    def __init__(self, settings: Any, on_pointer: Callable[[RegistryPointer], object], poll_s: float = 0.5) -> None:
        self._settings = settings
        self._on_pointer = on_pointer
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        consumer = _consumer(self._settings)
        try:
            while not self._stop.is_set():
                try:
                    parts = _partitions(consumer, self._settings.topic_registry, 10.0)
                    break
                except PointerError as exc:
                    log.warning("registry: %s; trying again in 5 s", exc)
                    self._stop.wait(5.0)
            else:
                return
            for tp in parts:
                tp.offset = OFFSET_BEGINNING
            consumer.assign(parts)
            while not self._stop.is_set():
                msg = consumer.poll(self._poll_s)
                if msg is None or msg.error() is not None:
                    continue
                pointer = decode(msg.value())
                if pointer is None:
                    continue
                try:
                    self._on_pointer(pointer)
                except Exception:  # a bug in the handler must not end the follower
                    log.exception("registry: handling the pointer of %s/%s failed", pointer.region, pointer.model)
        finally:
            consumer.close()
