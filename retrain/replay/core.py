"""Retraining by replay: read a time window of ``phrases.labeled``, dedupe, split by time, gate.

The steps of ``phrasestream retrain``, each a named function (the command is
``retrain.replay.command``):

1. :func:`since_window`, :func:`between_window`, :func:`compare_windows` turn the flags into
   :class:`Window` values: ``[start, end)`` in UTC, the end excluded.
2. :func:`read_window` reads the labelled topic over that window (confluent-kafka, ``assign()``,
   no group commits): on every partition it starts at the offset ``offsets_for_times(start)``
   gives and reads up to the high watermark captured when the replay starts. Record timestamps
   need not grow with offsets (a producer may set any timestamp, and ``produce --labeled`` sets
   each example's ``ts``), so every record is filtered explicitly on its Kafka timestamp
   (:func:`select`), never assumed in order: the start offset is exact (the earliest offset with
   a timestamp at or after ``start``), the end is found by reading to the watermark.
3. :func:`select` keeps the valid examples of one (region, model) whose record timestamp is in
   the window; invalid payloads are counted by reason and skipped, never a crash.
4. :func:`deduplicate` keeps one example per cleaned text: the newest (record timestamp, then
   partition and offset as the tie-break). The same text with the same label counts once; a
   text relabelled later takes its newest label.
5. :func:`time_split` puts the newest ``fraction`` of the examples in the test slice.
6. :func:`score` scores a head on the test slice (weighted F1 and accuracy with scikit-learn,
   ``retrain.train.evaluate.summarise``); :func:`gate` decides whether the candidate goes live.

Nothing here imports TensorFlow or ``streams/``.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from ops.kafka.clients import client_config
from retrain.train.data import Row
from schemas.cleaning import clean
from schemas.settings import Settings

MIN_EXAMPLES = 20
"""The fewest examples (after deduplication) a retraining window must hold."""

MIN_TRAIN_CLASSES = 2
"""The fewest distinct labels the training part of a window must hold."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The start of the ``all`` window (Kafka timestamps are milliseconds since this instant)."""

DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
                  "y": timedelta(days=365)}
"""Units of a history length such as ``90d``: hours, days, weeks, years of 365 days."""

_DURATION = re.compile(r"^(\d+)([hdwy])$")
INVALID_SHOWN = 5
"""How many invalid records a replay names (partition and offset) in its warning."""


class WindowError(ValueError):
    """A window flag that cannot be read; str(exc) is one line that says what to write instead."""


class ReplayError(RuntimeError):
    """The labelled topic cannot be read (no such topic, broker unreachable, reading stalled)."""


class NotEnoughData(ValueError):
    """Too few labelled examples to train and test a candidate; str(exc) says how many and why."""


# --------------------------------------------------------------------------------------------
# Windows


def epoch_ms(instant: datetime) -> int:
    """Return a timezone-aware datetime as whole milliseconds since the epoch (Kafka timestamps).

    Exact (integer arithmetic, rounded down), so ``epoch_ms(from_ms(t)) == t``.
    """
    if instant.tzinfo is None:
        raise ValueError(f"{instant.isoformat()} has no time zone; give a timezone-aware datetime")
    return (instant - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """Return milliseconds since the epoch as a UTC datetime."""
    return EPOCH + timedelta(milliseconds=ms)


def iso(instant: datetime) -> str:
    """Return ``instant`` in UTC as ISO 8601 with a ``Z`` (milliseconds only when not zero)."""
    instant = instant.astimezone(UTC)
    spec = "milliseconds" if instant.microsecond else "seconds"
    return instant.isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """A time window ``[start, end)`` of record timestamps, both UTC; ``label`` is how it was asked.

    >>> w = since_window("30d", now=datetime(2026, 11, 28, tzinfo=UTC))
    >>> (iso(w.start), iso(w.end), w.label)
    ('2026-10-29T00:00:00Z', '2026-11-28T00:00:00Z', '30d')
    """

    start: datetime
    end: datetime
    label: str

    @property
    def start_ms(self) -> int:
        return epoch_ms(self.start)

    @property
    def end_ms(self) -> int:
        return epoch_ms(self.end)

    def contains(self, timestamp_ms: int) -> bool:
        """Say whether a record timestamp (ms) is in ``[start, end)``."""
        return self.start_ms <= timestamp_ms < self.end_ms

    def to_json(self) -> dict[str, str]:
        return {"start": iso(self.start), "end": iso(self.end), "label": self.label}

    def describe(self) -> str:
        """Return ``window 30d (start .. end)``, or ``window start .. end`` when asked by dates."""
        span = f"{iso(self.start)} .. {iso(self.end)}"
        return f"window {span}" if self.label == f"{iso(self.start)}..{iso(self.end)}" else f"window {self.label} ({span})"


def parse_duration(text: str) -> timedelta | None:
    """Return the length of ``90d``-style history (units h, d, w, y = 365 days); None for ``all``.

    Raise :class:`WindowError` for anything else (``0d``, ``3m``, ``-1d``).
    """
    spec = text.strip().lower()
    if spec == "all":
        return None
    match = _DURATION.match(spec)
    if not match or int(match.group(1)) == 0:
        raise WindowError(f"bad history length {text!r}: write a positive number and a unit, "
                          "h (hours), d (days), w (weeks) or y (365 days), like 90d; or 'all'")
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_instant(text: str, flag: str) -> datetime:
    """Return an ISO 8601 date or date-time as an aware UTC datetime.

    A date (``2026-01-01``) is its midnight; a date-time without an offset is read as UTC
    (``2026-01-01T12:00`` is 12:00 UTC); ``Z`` or ``+01:00`` is honoured. ``flag`` names the
    option in the :class:`WindowError` message.
    """
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindowError(f"bad {flag} {text!r}: write an ISO 8601 date or date-time, like 2026-01-31 or "
                          "2026-01-31T12:00:00Z (no offset means UTC)") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def since_window(since: str, now: datetime) -> Window:
    """Return ``[now - since, now)``; ``all`` starts at the epoch."""
    length = parse_duration(since)
    start = EPOCH if length is None or now - length < EPOCH else now - length
    return Window(start, now, since.strip().lower())


def between_window(date_from: str, date_to: str | None, now: datetime) -> Window:
    """Return ``[date_from, date_to)`` (``date_to`` defaults to ``now``); the start must come first."""
    start = parse_instant(date_from, "--from")
    end = parse_instant(date_to, "--to") if date_to else now
    if start < EPOCH:
        raise WindowError(f"--from {date_from!r} is before 1970-01-01: Kafka timestamps start there")
    if end <= start:
        raise WindowError(f"the window is empty: --to {iso(end)} is not after --from {iso(start)} "
                          "(the end is excluded)")
    return Window(start, end, f"{iso(start)}..{iso(end)}")


def compare_windows(spec: str, now: datetime) -> list[Window]:
    """Return the windows of ``30d,90d,1y,all``, all ending at ``now``, widest last.

    Raise :class:`WindowError` for a bad or repeated entry, or fewer than one.
    """
    labels = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not labels:
        raise WindowError("--compare-windows needs a comma-separated list of history lengths, like 30d,90d,1y,all")
    repeated = sorted(label for label, n in Counter(labels).items() if n > 1)
    if repeated:
        raise WindowError(f"--compare-windows names {', '.join(repeated)} twice")
    windows = [since_window(label, now) for label in labels]
    starts = Counter(w.start for w in windows)
    same = [w.label for w in windows if starts[w.start] > 1]
    if same:
        raise WindowError(f"--compare-windows: {', '.join(same)} are the same window")
    return sorted(windows, key=lambda w: w.start, reverse=True)


# --------------------------------------------------------------------------------------------
# Records and examples


@dataclass(frozen=True)
class KafkaRecord:
    """One record as read from Kafka: where, its record timestamp (ms; None if it has none), bytes."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Example:
    """One valid labelled example of the head being retrained, with its record's place and time."""

    text: str
    clean_text: str
    label: str
    timestamp_ms: int
    partition: int
    offset: int

    @property
    def order(self) -> tuple[int, int, int]:
        """Sort key, oldest first: record timestamp, then partition and offset (the tie-break)."""
        return (self.timestamp_ms, self.partition, self.offset)

    def to_row(self, region: str | None = None) -> Row:
        """Return the training row (``ts``: the record timestamp, ISO 8601 UTC)."""
        return Row(self.text, self.clean_text, self.label, ts=iso(from_ms(self.timestamp_ms)), region=region,
                   line=self.offset)


@dataclass
class Selection:
    """What :func:`select` kept and why it skipped the rest (counts by reason)."""

    examples: list[Example] = field(default_factory=list)
    n_scanned: int = 0
    n_outside_window: int = 0
    n_other_heads: int = 0
    n_invalid: int = 0
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    invalid_where: list[str] = field(default_factory=list)

    def note_invalid(self, record: KafkaRecord, reason: str) -> None:
        self.n_invalid += 1
        self.invalid_reasons[reason] += 1
        if len(self.invalid_where) < INVALID_SHOWN:
            self.invalid_where.append(f"partition {record.partition} offset {record.offset}: {reason}")


def head_key(region: str, model: str) -> bytes:
    """Return the record key ``produce --labeled`` gives the examples of one head: ``b"region/model"``."""
    return f"{region}/{model}".encode()


def select(records: Iterable[KafkaRecord], region: str, model: str, window: Window,
           into: Selection | None = None) -> Selection:
    """Keep the valid examples of (region, model) whose record timestamp is in ``window``.

    A record outside the window, or keyed for another head, is skipped uncounted as invalid.
    Otherwise the payload must be a :class:`schemas.messages.LabeledPhrase`; the payload's
    region and model decide (a record without a key is kept when they match). Invalid payloads
    (not JSON, missing fields, a text empty once cleaned, no record timestamp) are counted by
    reason. The record timestamp, not the payload's ``ts``, places an example in time.
    """
    from pydantic import ValidationError

    from schemas.messages import LabeledPhrase

    out = into if into is not None else Selection()
    ours = head_key(region, model)
    for record in records:
        out.n_scanned += 1
        if record.timestamp_ms is not None and not window.contains(record.timestamp_ms):
            out.n_outside_window += 1
            continue
        if record.key is not None and record.key != ours and b"/" in record.key:
            out.n_other_heads += 1
            continue
        if record.timestamp_ms is None:
            out.note_invalid(record, "no record timestamp")
            continue
        try:
            msg = LabeledPhrase.model_validate_json(record.value or b"")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            out.note_invalid(record, f"{first['type']}{f' at {where}' if where else ''}")
            continue
        if (msg.region, msg.model) != (region, model):
            out.n_other_heads += 1
            continue
        cleaned = clean(msg.text)
        if not cleaned:
            out.note_invalid(record, "text empty once cleaned")
            continue
        out.examples.append(Example(msg.text, cleaned, msg.label.strip(), record.timestamp_ms,
                                    record.partition, record.offset))
    return out


@dataclass(frozen=True)
class Deduped:
    """The examples left after :func:`deduplicate` (oldest first) and how many were dropped why."""

    examples: list[Example]
    n_same_label: int
    n_relabelled: int

    @property
    def n_dropped(self) -> int:
        return self.n_same_label + self.n_relabelled


def deduplicate(examples: Iterable[Example]) -> Deduped:
    """Keep the newest example of each cleaned text; return them oldest first.

    "Newest" is the largest (record timestamp, partition, offset). A dropped copy with the
    label of the kept one counts in ``n_same_label``; one with another label (the text was
    relabelled later) in ``n_relabelled``.
    """
    newest: dict[str, Example] = {}
    everything = list(examples)
    for ex in everything:
        kept = newest.get(ex.clean_text)
        if kept is None or ex.order > kept.order:
            newest[ex.clean_text] = ex
    same = relabelled = 0
    for ex in everything:
        kept = newest[ex.clean_text]
        if ex is kept:
            continue
        if ex.label == kept.label:
            same += 1
        else:
            relabelled += 1
    return Deduped(sorted(newest.values(), key=lambda e: e.order), same, relabelled)


def time_split(examples: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)``: the newest ``round(fraction * n)`` examples (at least 1) are the test.

    Ordered by (record timestamp, partition, offset); both parts keep that order. ``fraction``
    must be strictly between 0 and 1.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the test fraction must be between 0 and 1 (exclusive), got {fraction}")
    ordered = sorted(examples, key=lambda e: e.order)
    if not ordered:
        return [], []
    n_test = min(len(ordered), max(1, round(fraction * len(ordered))))
    return ordered[: len(ordered) - n_test], ordered[len(ordered) - n_test :]


def check_enough(n_examples: int, train: Sequence[Example], test: Sequence[Example], window: Window) -> None:
    """Raise :class:`NotEnoughData` unless the window can train and test a candidate.

    The minimum: :data:`MIN_EXAMPLES` examples after deduplication, :data:`MIN_TRAIN_CLASSES`
    labels among the training examples, and a non-empty test slice.
    """
    where = window.describe()
    if n_examples < MIN_EXAMPLES:
        raise NotEnoughData(f"{where} holds {n_examples} labelled example(s) after deduplication; retraining needs "
                            f"at least {MIN_EXAMPLES}: widen the window or produce more with `produce --labeled`")
    n_classes = len({e.label for e in train})
    if n_classes < MIN_TRAIN_CLASSES:
        raise NotEnoughData(f"{where}: the training part has {n_classes} label(s); retraining needs at least "
                            f"{MIN_TRAIN_CLASSES}: widen the window or add examples of other labels")
    if not test:
        raise NotEnoughData(f"{where}: the test slice is empty; raise --test-fraction")


# --------------------------------------------------------------------------------------------
# Scoring and the gate


class Predictor(Protocol):
    """What scoring needs of a head (``models.heads.Head``)."""

    def predict(self, features: np.ndarray, top_k: int = 3, texts: Sequence[str] | None = None) -> list[Any]: ...


@dataclass(frozen=True)
class Score:
    """A head's figures on the test slice."""

    version: str
    weighted_f1: float
    accuracy: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "weighted_f1": self.weighted_f1, "accuracy": self.accuracy, "n": self.n}


def score(head: Predictor, version: str, features: np.ndarray, examples: Sequence[Example]) -> Score:
    """Score ``head`` on ``examples`` (features row i for example i) with ``retrain.train.evaluate.summarise``.

    Weighted F1 over the true labels (a label the head does not know counts as an error) and
    accuracy, rounded to 6 places. Candidate and live head go through this one function.
    """
    from retrain.train.evaluate import summarise

    if not examples:
        raise ValueError("cannot score on an empty test slice")
    texts = [e.clean_text for e in examples]
    y_true = [e.label for e in examples]
    y_pred = [p.label for p in head.predict(features, 1, texts=texts)]
    summary = summarise(y_true, y_pred, sorted(set(y_true) | set(y_pred))).summary
    return Score(version, float(summary["weighted_f1"] or 0.0), float(summary["accuracy"] or 0.0), len(examples))


@dataclass(frozen=True)
class Decision:
    """Whether the candidate should go live, and why (one line)."""

    promote: bool
    reason: str


def gate(candidate: Score, live: Score | None, tolerance: float, no_live_reason: str = "no live head") -> Decision:
    """Promote when the candidate's weighted F1 >= the live head's - ``tolerance`` (equal counts as passing).

    With no score of the live head (none is live, or it cannot be scored) the candidate is
    promoted, and ``no_live_reason`` says why in the decision.

    >>> gate(Score("new", 0.90, 0.9, 50), Score("old", 0.92, 0.92, 50), 0.005).promote
    False
    """
    if tolerance < 0:
        raise ValueError(f"the tolerance must be >= 0, got {tolerance}")
    if live is None:
        return Decision(True, f"{no_live_reason}: nothing to compare with, the candidate goes live")
    c, v = candidate.weighted_f1, live.weighted_f1
    # rounded: 0.900 - 0.005 must not lose to a float representation of 0.895
    if round(c - (v - tolerance), 9) >= 0:
        return Decision(True, f"candidate weighted F1 {c:.4f} >= live {v:.4f} - tolerance {tolerance:g}")
    return Decision(False, f"candidate weighted F1 {c:.4f} < live {v:.4f} - tolerance {tolerance:g}")


# --------------------------------------------------------------------------------------------
# Reading Kafka


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
    marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
             for p in partitions}
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

