"""The agents' producer: batched, idempotent, and a flush that returns once the broker has everything."""

from __future__ import annotations

import logging
from typing import Any

from ops.kafka.clients import client_config
from ops.kafka.produce import produce_retrying
from schemas.settings import Settings

log = logging.getLogger("phrasestream.worker")

FLUSH_WAIT_S = 5.0
"""How long one ``flush`` call of librdkafka waits before the outbox looks at failures again."""


class Outbox:
    """Produce messages with confluent-kafka; :meth:`flush` returns once the broker has them all.

    Why not Faust's ``topic.send``: it awaits every message through Faust's producer buffer
    (which blocks all streams beyond 100 waiting messages) and aiokafka; librdkafka queues a
    message in about a microsecond and batches in its own thread. At-least-once holds because
    an agent calls :meth:`flush` after each batch, before it takes the next one (which is when
    Faust acks the batch's input events): a message that failed is produced again, and
    ``flush`` does not return until every message is acknowledged (acks=all, idempotent).
    While the broker is away it waits, and says so once.
    """

    def __init__(self, settings: Settings, name: str, producer: Any | None = None) -> None:
        self.name = name
        self._failed: list[tuple[str, bytes | None, bytes]] = []
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer(client_config(settings, {
                "client.id": f"{settings.app_id}-{name}",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 1,  # a batch arrives at once; a short linger fills Kafka batches
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                "message.timeout.ms": 0,  # never give a message up; flush waits for the broker
                "delivery.report.only.error": True,  # only failures come back (to be produced again)
                # the Java clients' (and aiokafka's, so Faust's table's) partitioner: murmur2 of the key
                "partitioner": "murmur2_random",
            }))
        self._producer = producer

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append((msg.topic(), msg.key(), msg.value()))

    def put(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one message (blocks only while librdkafka's own queue is full)."""
        produce_retrying(self._producer, topic, value, key, on_delivery=self._delivered)

    def flush(self) -> None:
        """Block until every queued message is acknowledged, producing failed ones again."""
        waited = 0.0
        while True:
            left = self._producer.flush(FLUSH_WAIT_S)
            if self._failed:
                failed, self._failed = self._failed, []
                log.warning("%s: %d message(s) failed to reach the broker; producing them again", self.name,
                            len(failed))
                for topic, key, value in failed:
                    self.put(topic, key, value)
                continue
            if left == 0:
                if waited:
                    log.info("%s: the broker took the waiting messages after %.0f s", self.name, waited)
                return
            if not waited:
                log.warning("%s: %d message(s) wait for the broker; the stream waits with them", self.name, left)
            waited += FLUSH_WAIT_S
