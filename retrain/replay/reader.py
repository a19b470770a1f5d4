"""Read a time window of ``phrases.labeled`` from Kafka and select one head's examples.

:func:`read_window` uses confluent-kafka with ``assign()`` and no group commits: on every
partition it starts at the offset ``offsets_for_times(start)`` gives and reads up to the high
watermark captured when the replay starts (``ops.kafka.offsets``), so records produced later
are not read. The start offset is exact (the earliest offset with a timestamp at or after the
window start); the end is found by reading to the watermark, and every record is filtered on
its Kafka timestamp by ``retrain.replay.select.select``. A partition whose oldest records were
deleted (its low watermark is past the window start) gives a warning, not an error.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ops.kafka.clients import client_config
from ops.kafka.offsets import read_watermarks
from retrain.replay.select import KafkaRecord, Selection, select
from retrain.replay.windows import Window, from_ms, iso
from schemas.settings import Settings


class ReplayError(RuntimeError):
    """The labelled topic cannot be read (no such topic, broker unreachable, reading stalled)."""


@dataclass(frozen=True)
class PartitionPlan:
    """What one partition holds and what of it a replay reads: offsets ``[start, high)``.

    ``start`` is ``offsets_for_times(window start)``; ``None`` when no record at or after the
    window start exists (nothing to read).
    """

    partition: int
    low: int
    high: int
    start: int | None

    @property
    def to_read(self) -> int:
        return 0 if self.start is None else max(0, self.high - self.start)


@dataclass
class Replay:
    """The result of :func:`read_window`: the selection, the plan per partition, and warnings."""

    window: Window
    topic: str
    selection: Selection
    plans: list[PartitionPlan]
    first_held_ms: dict[int, int | None] = field(default_factory=dict)
    """Partitions whose older records were deleted and whose first held record is at or after
    the window start: partition -> that record's timestamp (None: the partition holds nothing)."""
    warnings: list[str] = field(default_factory=list)


def truncation_warning(window: Window, topic: str, first_held_ms: dict[int, int | None],
                       plans: Sequence[PartitionPlan]) -> str | None:
    """Return the warning for a window that starts before the oldest records still held, or None."""
    if not first_held_ms:
        return None
    lows = {p.partition: p.low for p in plans}
    parts = ", ".join(f"{p} (from offset {lows[p]})" for p in sorted(first_held_ms))
    known = [ms for ms in first_held_ms.values() if ms is not None]
    real = f"the data read starts at {iso(from_ms(max(known)))}" if known else "no record of them is left"
    return (f"the window starts at {iso(window.start)} but {topic} no longer holds its oldest records on "
            f"partition(s) {parts}: {real}; examples older than that are missing")


def read_window(settings: Settings, topic: str, window: Window, region: str, model: str, *,
                timeout_s: float = 30.0, progress: bool = True) -> Replay:
    """Read ``window`` of ``topic`` and select the examples of (region, model); raise :class:`ReplayError`.

    Each partition is read from ``offsets_for_times(window.start)`` to the high watermark taken
    before reading (records produced later are not read). The consumer is ``assign()``-ed and
    commits nothing. ``timeout_s`` bounds each metadata call and any stretch without progress.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(client_config(settings, {
        "group.id": f"phrasestream-replay-{uuid.uuid4().hex}",  # never joined nor committed: assign() only
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }))
    try:
        try:
            plans = _plan(consumer, topic, window, timeout_s)
        except KafkaException as exc:
            raise ReplayError(f"cannot read the offsets of {topic} at {settings.bootstrap}: {exc}; is Kafka up "
                              "(`phrasestream up`)?") from None
        replay = Replay(window, topic, Selection(), plans)
        todo = [p for p in plans if p.to_read]
        if todo:
            # (a plan with records to read has a start; the filter only tells the type checker so)
            consumer.assign([TopicPartition(topic, p.partition, p.start) for p in todo if p.start is not None])
            records = _consume(consumer, topic, todo, timeout_s, progress)
            select(_watch_first(records, plans, window, replay.first_held_ms), region, model, window,
                   into=replay.selection)
        for p in plans:
            if p.low > 0 and p.low == p.high:  # every record of the partition was deleted
                replay.first_held_ms[p.partition] = None
        warning = truncation_warning(window, topic, replay.first_held_ms, plans)
        if warning:
            replay.warnings.append(warning)
        sel = replay.selection
        if sel.n_invalid:
            reasons = ", ".join(f"{n} {r}" for r, n in sel.invalid_reasons.most_common())
            replay.warnings.append(f"skipped {sel.n_invalid} invalid record(s) in the window ({reasons}); "
                                   f"e.g. {'; '.join(sel.invalid_where)}")
        return replay
    finally:
        consumer.close()


def _plan(consumer: Any, topic: str, window: Window, timeout_s: float) -> list[PartitionPlan]:
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        why = f" ({meta.error})" if meta is not None and meta.error is not None else ""
        raise ReplayError(f"topic {topic} cannot be read{why}: create it with `phrasestream up`, or check "
                          "PHRASESTREAM_TOPIC_LABELED")
    partitions = sorted(meta.partitions)
    marks = read_watermarks(consumer, topic, partitions, timeout_s)
    found = consumer.offsets_for_times([TopicPartition(topic, p, window.start_ms) for p in partitions],
                                       timeout=timeout_s)
    plans = []
    for tp in sorted(found, key=lambda t: t.partition):
        if tp.error is not None:
            raise ReplayError(f"offsets_for_times on {topic} partition {tp.partition}: {tp.error}")
        low, high = marks[tp.partition]
        start = tp.offset if 0 <= tp.offset < high else None  # -1: no record at or after the start
        plans.append(PartitionPlan(tp.partition, low, high, start))
    return plans


def _watch_first(records: Iterable[KafkaRecord], plans: Sequence[PartitionPlan], window: Window,
                 first_held: dict[int, int | None]) -> Iterator[KafkaRecord]:
    """Pass records through; note partitions whose first held record starts after the window start.

    Only a partition whose replay starts at its low watermark (> 0) can have lost records of
    the window: its first record is then the first with a timestamp at or after the start.
    """
    watch = {p.partition: p.low for p in plans if p.low > 0 and p.start == p.low}
    for record in records:
        if watch.get(record.partition) == record.offset:
            del watch[record.partition]
            if record.timestamp_ms is not None and window.start_ms < record.timestamp_ms:
                first_held[record.partition] = record.timestamp_ms
        yield record


def _consume(consumer: Any, topic: str, todo: Sequence[PartitionPlan], timeout_s: float,
             progress: bool) -> Iterator[KafkaRecord]:
    """Yield the records of ``todo`` up to each partition's captured high watermark."""
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError
    from tqdm.auto import tqdm

    high = {p.partition: p.high for p in todo}
    remaining = set(high)
    last_progress = time.monotonic()
    with tqdm(total=sum(p.to_read for p in todo), desc=f"reading {topic}", unit="record",
              disable=not progress, file=sys.stderr) as bar:
        while remaining:
            batch = consumer.consume(500, timeout=1.0)
            if not batch and time.monotonic() - last_progress > timeout_s:
                where = ", ".join(f"{p} (ends at {high[p]})" for p in sorted(remaining))
                raise ReplayError(f"reading {topic} stalled for {timeout_s:.0f}s on partition(s) {where}; "
                                  "is Kafka up (`phrasestream status`)?")
            for msg in batch:
                err = msg.error()
                part = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if part in remaining and msg.offset() >= high[part]:
                            remaining.discard(part)
                        continue
                    if err.fatal():
                        raise ReplayError(f"reading {topic}: {err.str()}")
                    continue  # transient: the client retries, the stall timeout bounds it
                offset = msg.offset()
                if part not in remaining or offset >= high[part]:
                    continue
                last_progress = time.monotonic()
                bar.update(1)
                ts_type, ts = msg.timestamp()
                yield KafkaRecord(part, offset, None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
                                  msg.key(), msg.value())
                if offset >= high[part] - 1:
                    remaining.discard(part)
