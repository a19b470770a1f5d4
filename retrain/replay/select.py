"""Select, deduplicate and split the labelled examples of one head in a replayed window.

1. :func:`select` keeps the valid examples of one (region, model) whose record timestamp is in
   the window; invalid payloads are counted by reason and skipped, never a crash. Record
   timestamps need not grow with offsets (``produce --labeled`` sets each example's ``ts``), so
   every record is checked, never assumed in order.
   :func:`relabel` gives each label its newest name (the head's label sets, ``models.labelsets``).
2. :func:`deduplicate` keeps one example per cleaned text: the newest (record timestamp, then
   partition and offset as the tie-break). The same text with the same label counts once; a
   text relabelled later takes its newest label.
3. :func:`time_split` puts the newest ``fraction`` of the examples in the test slice (doubtful
   review answers always train: :func:`trains_only`), and
   :func:`check_enough` says whether the window can train and test a candidate at all.

Plain functions on lists: the Kafka read is ``retrain.replay.reader``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from retrain.replay.windows import Window, from_ms, iso
from retrain.train.data import Row
from schemas.cleaning import clean

MIN_EXAMPLES = 20
"""The fewest examples (after deduplication) a retraining window must hold."""

MIN_TRAIN_CLASSES = 2
"""The fewest distinct labels the training part of a window must hold."""

INVALID_SHOWN = 5
"""How many invalid records a replay names (partition and offset) in its warning."""


class NotEnoughData(ValueError):
    """Too few labelled examples to train and test a candidate; str(exc) says how many and why."""


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
    label_set_version: int | None = None
    source: str | None = None
    """Provenance of a review answer (``"review"``; None for examples users produce), its routing
    reason(s) and the random slice's sampling weight: the shadow report keeps the slice apart."""
    reason: str | None = None
    sampling_weight: float | None = None

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
                                    record.partition, record.offset, msg.label_set_version, msg.source, msg.reason,
                                    msg.sampling_weight))
    return out


def relabel(examples: Iterable[Example], newest_name: Callable[[str, int | None], str]) -> tuple[list[Example], int]:
    """Give every example its label's newest name (a label set's map); return them and how many changed.

    ``newest_name(label, label_set_version)`` is ``models.labelsets.LabelSets.relabel``: renames
    and merges made after an answer was given apply to it, so old answers stay usable.
    """
    out: list[Example] = []
    changed = 0
    for ex in examples:
        new = newest_name(ex.label, ex.label_set_version)
        if new != ex.label:
            changed += 1
            ex = replace(ex, label=new)
        out.append(ex)
    return out, changed


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


def trains_only(example: Example) -> bool:
    """Say whether ``example`` is a review answer routed for doubt (not in the random slice).

    Such answers were picked because the live head found them hard: they are what a candidate
    should learn from, and a test slice made of them would judge it on the phrases it was just
    taught to fear, not on traffic. They always train; the random slice's answers are a fair
    sample of traffic and may test (the shadow report scores candidates on both, apart).
    """
    return example.source == "review" and "random" not in (example.reason or "").split(",")


def time_split(examples: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)``: the newest ``round(fraction * n)`` examples (at least 1) that may test
    are the test; ``n`` counts those examples only.

    Doubtful review answers (:func:`trains_only`) always train, whenever they came, so that a
    review round right before ``retrain`` teaches the candidate instead of filling its test slice.
    Ordered by (record timestamp, partition, offset); both parts keep that order. ``fraction``
    must be strictly between 0 and 1.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the test fraction must be between 0 and 1 (exclusive), got {fraction}")
    ordered = sorted(examples, key=lambda e: e.order)
    testable = [e for e in ordered if not trains_only(e)]
    if not testable:
        return ordered, []
    n_test = min(len(testable), max(1, round(fraction * len(testable))))
    test = testable[len(testable) - n_test:]
    tested = {id(e) for e in test}
    return [e for e in ordered if id(e) not in tested], test


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
