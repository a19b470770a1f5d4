"""The bench's stages that go through Kafka: the passthrough ceiling, a burst through a worker, and more."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ops.kafka.clients import client_config
from ops.kafka.offsets import read_end_offsets
from ops.kafka.produce import produce_retrying
from schemas.settings import Settings
from streams.tools.bench.scratch import delete_topics


def source_and_sink(settings: Settings, stage: str, messages: list[tuple[str, bytes]]) -> tuple[str, str, str]:
    """Create a one-partition scratch topic holding ``messages`` (keyed by id) and an empty one for the output.

    Return the run's tag and the two topic names (``bench-<tag>-<stage>.in`` and ``.out``).
    """
    from confluent_kafka import Producer

    from ops.kafka.topics import create_topic

    tag = uuid.uuid4().hex[:8]
    src, dst = f"bench-{tag}-{stage}.in", f"bench-{tag}-{stage}.out"
    for name in (src, dst):
        create_topic(settings, name, 1, {"retention.ms": str(3_600_000)})
    producer = Producer(client_config(settings, {"linger.ms": 5, "batch.num.messages": 10000,
                                                 "queue.buffering.max.messages": 1_000_000}))
    for key, value in messages:
        producer.produce(src, value, key.encode())
    producer.flush(60)
    return tag, src, dst


def passthrough(settings: Settings, messages: list[tuple[str, bytes]]) -> float:
    """Consume → parse → produce ``messages`` in one process; return messages/s."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    tag, src, dst = source_and_sink(settings, "pass", messages)
    consumer = Consumer(client_config(settings, {"group.id": f"bench-{tag}",
                                                 "enable.auto.commit": False, "fetch.min.bytes": 1}))
    consumer.assign([TopicPartition(src, 0, 0)])
    out = Producer(client_config(settings, {"linger.ms": 5, "batch.num.messages": 10000,
                                            "queue.buffering.max.messages": 1_000_000}))
    done, start = 0, None
    deadline = time.monotonic() + 120
    while done < len(messages) and time.monotonic() < deadline:
        batch = consumer.consume(1000, timeout=1.0)
        if start is None and batch:
            start = time.perf_counter()
        for msg in batch:
            payload = msg.value()
            if msg.error() is None and payload is not None:  # None: a tombstone, which we never write
                body = json.loads(payload)
                out.produce(dst, json.dumps(body).encode(), msg.key())
                done += 1
        out.poll(0)
    out.flush(60)
    seconds = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    delete_topics(settings, [src, dst])
    return done / seconds if seconds > 0 else 0.0


@dataclass
class Run:
    """What one burst of traffic through a worker gave."""

    phrases: int
    seconds: float
    hit_rate: float
    latencies_ms: list[float]

    @property
    def phrases_s(self) -> float:
        return self.phrases / self.seconds if self.seconds > 0 else 0.0


def through_worker(settings: Settings, messages: list[tuple[str, bytes]], heads_per_phrase: int,
                   rate: float | None = None, timeout_s: float = 600.0) -> Run:
    """Send ``messages`` (at ``rate``/s, or as fast as possible) and read every prediction."""
    from datetime import datetime

    from confluent_kafka import Consumer, TopicPartition

    from streams.tools.loadgen import send

    consumer = Consumer(client_config(settings, {"group.id": f"bench-read-{uuid.uuid4().hex}",
                                                 "enable.auto.commit": False}))
    topic = settings.topic_out
    consumer.assign([TopicPartition(topic, p, end) for p, end in read_end_offsets(consumer, topic).items()])
    ids = {pid for pid, _ in messages}
    seen: dict[str, int] = {}
    hits = total = 0
    latencies: list[float] = []
    figures: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: figures.update(send(settings, messages, rate=rate, duration=timeout_s)))
    start_wall = time.time()
    sender.start()
    complete, last_ms = 0, start_wall * 1000.0
    deadline = time.monotonic() + timeout_s
    while complete < len(ids) and time.monotonic() < deadline:
        # the first message as soon as it comes, then what is there: a consumer that waits to fill
        # its batch (consume(n, timeout)) would add its wait to every latency
        first = consumer.poll(0.05)
        if first is None:
            continue
        batch = [first, *consumer.consume(2000, timeout=0)]
        read_ms = time.time() * 1000.0
        for msg in batch:
            value = msg.value()
            if msg.error() is not None or value is None:  # value None: a tombstone, which we never write
                continue
            p = json.loads(value)
            if p["id"] not in ids:
                continue
            published_ms = float(msg.timestamp()[1])  # the record's time: when the worker produced it
            total += 1
            hits += bool(p["cache_hit"])
            if p.get("ts"):  # end to end: from the producer's time to the prediction read here
                latencies.append(read_ms - datetime.fromisoformat(p["ts"]).timestamp() * 1000.0)
            seen[p["id"]] = seen.get(p["id"], 0) + 1
            if seen[p["id"]] == heads_per_phrase:
                complete += 1
                last_ms = max(last_ms, published_ms)
    sender.join()
    consumer.close()
    if complete < len(ids):
        raise RuntimeError(f"only {complete} of {len(ids)} phrases were answered within {timeout_s:.0f} s")
    return Run(complete, last_ms / 1000.0 - start_wall, hits / total if total else 0.0, latencies)


def fill_cache_changelog(settings: Settings, embedder_version: str, dim: int, entries: int) -> None:
    """Write ``entries`` cache entries to the app's changelog before its worker starts.

    ``embedder_version`` is what the worker's cache keys start with: the embedder's ``features_id``.
    """
    from confluent_kafka import Producer

    from ops.kafka.topics import create_topic

    topic = f"{settings.app_id}-embedding-cache-changelog"
    create_topic(settings, topic, settings.partitions_in, {"cleanup.policy": "compact"})
    producer = Producer(client_config(settings, {"linger.ms": 20, "partitioner": "murmur2_random",
                                                 "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576}))
    from streams.state.cache import encode_entries, key_prefix

    rng = np.random.default_rng(7)
    entry = encode_entries(rng.standard_normal((1, dim)))[0]  # the cache's own entry format and key prefix
    prefix = key_prefix(embedder_version)
    for i in range(entries):
        produce_retrying(producer, topic, entry, f"{prefix}{i:032x}".encode(), wait_s=0.1)
    producer.flush(300)


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6
