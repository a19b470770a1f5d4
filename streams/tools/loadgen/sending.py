"""Send generated messages to Kafka, stamped with their send time, paced or as fast as possible."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ops.kafka.clients import client_config
from ops.kafka.produce import produce_retrying
from schemas.settings import Settings
from streams.tools.loadgen.checks import MAX_COUNT, LoadgenError, check_bootstrap, check_sending

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message

# Measured on the local broker (2 cores, 5 x 300,000 messages): no compression with a 20 ms linger
# and 1 MB batches had the best median; lz4 was not faster (the CPU, not the bytes, is the limit).
PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "enable.idempotence": True,
}


class Stamp:
    """Return the tail ``,"ts":"2026-01-02T03:04:05.678Z"}`` for now (UTC, milliseconds).

    ``value[:-1] + stamp()`` puts the send time into a compact JSON object; the text is
    rebuilt once per millisecond, so stamping costs next to nothing at any rate.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._ms = -1
        self._tail = b""

    def __call__(self) -> bytes:
        ms = int(self._now() * 1000)
        if ms != self._ms:
            self._ms = ms
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
            self._tail = f',"ts":"{stamp}.{ms % 1000:03d}Z"}}'.encode()
        return self._tail


def pump(messages: Sequence[tuple[str, bytes]], emit: Callable[[bytes], None], rate: float | None, duration: float, *,
         stamp: Callable[[], bytes] | None = None, after_chunk: Callable[[], object] = lambda: None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """Hand each value, stamped with ``ts``, to ``emit``, paced to ``rate``; return how many were handed over.

    ``rate=None``: as fast as possible. Otherwise message i is due ``i / rate`` s after the
    start; when ``emit`` was slow, the messages that fell due meanwhile go out at once (catch
    up), so the average rate holds. Stops after ``duration`` s (checked between chunks: every
    2,048 messages at full speed, every due batch when paced). ``after_chunk`` runs after
    each chunk (the producer's ``poll``).
    """
    stamp = stamp or Stamp()
    total = len(messages)
    start = clock()
    deadline = start + duration
    sent = 0
    while sent < total:
        now = clock()
        if now >= deadline:
            break
        if rate is None:
            due = min(total, sent + 2048)
        else:
            due = min(total, int((now - start) * rate + 1e-6) + 1)  # message i is due at start + i / rate
            if due <= sent:  # ahead of schedule: sleep until the next message is due
                sleep(min(start + sent / rate - now, deadline - now))
                continue
        for _, value in messages[sent:due]:
            emit(value[:-1] + stamp())
        sent = due
        after_chunk()
    return sent


def _connect(producer: Any, bootstrap: str, topic: str) -> None:
    """Fetch the topic's metadata before the clock starts: connects, and fails early on a missing topic."""
    from confluent_kafka import KafkaException

    try:
        found = producer.list_topics(topic, timeout=15).topics.get(topic)
    except KafkaException as exc:
        msg = f"no Kafka broker answers at {bootstrap} ({exc}); start the local one with `phrasestream up`"
        raise LoadgenError(msg) from None
    if found is None or found.error is not None:
        reason = found.error.str() if found is not None and found.error is not None else "not found"
        msg = f"topic {topic!r} is not usable on {bootstrap} ({reason}); `phrasestream up` creates phrases.in"
        raise LoadgenError(msg)


def send(settings: Settings, messages: Sequence[tuple[str, bytes]], rate: float | None = None,
         duration: float = 60.0, *, topic: str | None = None, allow_remote: bool = False,
         producer_config: dict[str, Any] | None = None, flush_timeout: float = 60.0) -> dict[str, Any]:
    """Produce ``messages`` to ``topic`` (default ``settings.topic_in``) and return the figures.

    Each value (compact JSON ending in ``}``) gets ``"ts"`` (ISO 8601 UTC with milliseconds,
    the send time) spliced in. ``rate=None`` sends as fast as possible, else ``rate``
    messages/s with catch-up (:func:`pump`), each handed to the broker at once (1 ms linger,
    not the 20 ms of a burst). Sending stops after the last message or after
    ``duration`` seconds, whichever comes first; then the producer is flushed (at most
    ``flush_timeout`` s). Raises :class:`LoadgenError` for a bootstrap off this machine
    (unless ``allow_remote``), or a rate, duration or count out of bounds, before connecting;
    and for a broker that does not answer or a topic it does not have, before sending.

    Figures: ``sent`` (handed to the producer), ``delivered``, ``failed`` (refused or not
    acknowledged within the flush), ``send_s`` (until the last was handed over),
    ``duration_s`` (until all were acknowledged), ``rate`` (delivered / duration_s),
    ``stopped_by`` (``count`` or ``duration``).
    """
    from confluent_kafka import Producer

    check_bootstrap(settings.bootstrap, allow_remote)
    check_sending(rate, duration)
    if len(messages) > MAX_COUNT:
        raise LoadgenError(f"at most {MAX_COUNT:,} messages per run, got {len(messages):,}")
    target = topic or settings.topic_in
    failures: list[str] = []

    def on_failure(err: KafkaError, _msg: Message) -> None:
        failures.append(err.str())

    # paced, each due message goes out at once: the 20 ms linger would add up to 20 ms to every latency measured
    paced = {"linger.ms": 1} if rate is not None else {}
    config = client_config(settings, {**PRODUCER_CONFIG, **paced, **(producer_config or {}),
                                      "delivery.report.only.error": True, "on_delivery": on_failure})
    producer = Producer(config)
    _connect(producer, settings.bootstrap, target)
    emit = partial(produce_retrying, producer, target, wait_s=0.01)  # a full local queue: let it drain

    start = time.monotonic()
    sent = pump(messages, emit, rate, duration, after_chunk=lambda: producer.poll(0))
    send_s = time.monotonic() - start
    left = producer.flush(flush_timeout)
    duration_s = time.monotonic() - start
    delivered = sent - left - len(failures)
    return {
        "topic": target,
        "sent": sent,
        "delivered": delivered,
        "failed": len(failures) + left,
        "first_failure": failures[0] if failures else None,
        "send_s": round(send_s, 3),
        "duration_s": round(duration_s, 3),
        "rate": round(delivered / duration_s, 1) if duration_s > 0 else 0.0,
        "target_rate": rate,
        "stopped_by": "count" if sent == len(messages) else "duration",
    }
