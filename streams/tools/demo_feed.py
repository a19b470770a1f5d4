"""Feed a bounded demo stream from the CLINC150 test split and measure what comes back.

``run_demo`` produces ``count`` messages to ``phrases.in`` (about 5% of them invalid, one
of each kind in turn), then reads ``predictions.out`` and ``phrases.dlq`` until every
answer is in (or a deadline passes) and counts the rows in PostgreSQL. Every message of a
run carries the run's id, so answers of other runs or users are ignored.

With a :class:`Shift` (``phrasestream demo --drift``) the label mix changes part way: from
message ``shift.start(count)`` on, the phrases come from a few CLINC150 domains only (by
default :data:`DRIFT_DOMAINS`), so a drift report over the run sees the predicted labels move.
The messages before the shift are those of the same run without it.

The test split is never used for training (``retrain.train.demo_heads`` trains on train/val only).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg2
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg2 import sql

from models.datasets import OOS, load_clinc150, load_domain_lists
from ops.kafka.clients import client_config
from ops.kafka.offsets import read_end_offsets
from ops.measure import percentile
from schemas.settings import Settings

log = logging.getLogger("phrasestream.demo")

INVALID_EVERY = 20  # one message in 20 is invalid: 5%

DRIFT_DOMAINS: tuple[str, ...] = ("travel", "kitchen_and_dining", "small_talk")
"""The domains of the shifted part of ``demo --drift``: 3 of CLINC150's 10, so 45 of its 150
intents (and no ``oos``) after the shift, against all 151 labels before it."""


@dataclass(frozen=True)
class Shift:
    """From message ``start(count)`` on (the share ``at`` of the stream), draw test phrases of ``domains`` only."""

    domains: tuple[str, ...] = DRIFT_DOMAINS
    at: float = 0.5

    def __post_init__(self) -> None:
        known = sorted(load_domain_lists())
        unknown = [d for d in self.domains if d not in known]
        if not self.domains or unknown:
            raise ValueError(f"unknown CLINC150 domain(s) {unknown or '(none given)'}; known: {', '.join(known)}")
        if not 0.0 <= self.at < 1.0:
            raise ValueError(f"the shift starts at a share of the stream in [0, 1), got {self.at}")

    def start(self, count: int) -> int:
        """Return the index of the first shifted message in a stream of ``count``."""
        return int(count * self.at)

    def figures(self, count: int) -> dict:
        """Return what the demo's figures say about the shift."""
        return {"starts_at_message": self.start(count), "of": count, "domains": list(self.domains)}


@dataclass(frozen=True)
class DemoMessage:
    """One message the demo produces, with what it expects back."""

    key: str
    value: bytes
    valid: bool
    region: str = ""
    models: tuple[str, ...] = ()
    intent: str | None = None


def _invalid(run: str, i: int, max_chars: int) -> bytes:
    """Return the i-th invalid message of a run; each kind in turn, each carrying the run id."""
    pid = f"{run}-{i}"
    kinds: list[Callable[[], bytes]] = [
        lambda: f'{{"id": "{pid}", "text": "broken json'.encode(),
        lambda: b'{"id": "' + pid.encode() + b'", "text": "caf\xe9 latte", "region": "global"}',
        lambda: json.dumps({"id": pid, "text": "   \t ", "region": "global"}).encode(),
        lambda: json.dumps({"id": pid, "text": "x" * (max_chars + 1), "region": "global"}).encode(),
        lambda: json.dumps({"id": pid, "text": 12345, "region": "global"}).encode(),
        lambda: json.dumps({"id": pid, "text": "what is my balance", "region": "atlantis"}).encode(),
        lambda: json.dumps({"id": pid, "text": "no region here"}).encode(),
        lambda: json.dumps([pid, "not an object"]).encode(),
        lambda: json.dumps({"id": pid, "text": "<br><p></p>", "region": "global"}).encode(),
        lambda: json.dumps({"id": pid, "text": "hello", "region": "global", "models": ["sentiment"]}).encode(),
    ]
    return kinds[(i // INVALID_EVERY) % len(kinds)]()


def demo_messages(run: str, count: int, heads: dict[str, list[str]], max_chars: int, seed: int = 7,
                  shift: Shift | None = None) -> Iterator[DemoMessage]:
    """Yield ``count`` demo messages: test-split phrases over every region, 5% invalid.

    With ``shift``, the valid messages from ``shift.start(count)`` on are test phrases of
    ``shift.domains`` only; the ones before are those of the same call without ``shift``.
    """
    data = load_clinc150("full")
    pool = data.test + data.oos_test
    rng = random.Random(seed)
    rng.shuffle(pool)
    start, shifted = count, []
    if shift is not None:
        start = shift.start(count)
        wanted = set(shift.domains)
        shifted = [(t, intent) for t, intent in data.test if data.domain_of(intent) in wanted]
        random.Random(seed + 1).shuffle(shifted)  # its own generator: the part before stays as it was
    regions = sorted(heads)
    for i in range(count):
        key = f"{run}-{i}"
        if i % INVALID_EVERY == INVALID_EVERY - 1:
            yield DemoMessage(key, _invalid(run, i, max_chars), valid=False)
            continue
        text, intent = pool[i % len(pool)] if i < start else shifted[(i - start) % len(shifted)]
        region = regions[i % len(regions)]
        models = tuple(heads[region])
        body: dict = {"id": key, "text": text, "region": region}
        if i % 10 == 3 and len(models) > 1:  # some phrases ask for one head only
            models = models[:1]
            body["models"] = list(models)
        yield DemoMessage(key, json.dumps(body).encode(), True, region, models, intent)


@dataclass
class Tally:
    """What came back for one demo run."""

    predictions: dict[tuple[str, str], dict] = field(default_factory=dict)
    dlq: dict[str, dict] = field(default_factory=dict)
    arrival: dict[str, float] = field(default_factory=dict)


def _end_offsets(consumer: Consumer, topic: str) -> list[TopicPartition]:
    """Return the end of every partition of ``topic``: where a reader of what comes next starts."""
    return [TopicPartition(topic, p, end) for p, end in read_end_offsets(consumer, topic).items()]


def count_db_rows(settings: Settings, run: str) -> int | None:
    """Count the inference rows of one demo run; None while the database does not answer.

    The demo waits out a database outage like the sink does, instead of dying of it: the
    predictions keep flowing meanwhile, and the sink writes the rows once the server is back.
    """
    query = sql.SQL("SELECT count(*) FROM {}.inferences WHERE id LIKE %s").format(sql.Identifier(settings.pg_schema))
    try:
        with psycopg2.connect(settings.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(query, (f"{run}-%",))
            row = cur.fetchone()
    except psycopg2.OperationalError:  # refused, shutting down, starting up: all "not now"
        return None
    assert row is not None  # count(*) always returns one row
    return int(row[0])


def wait_for_rows(settings: Settings, run: str, rows: int, until: float) -> int | None:
    """Return the run's row count once it reaches ``rows``, or at ``until`` (``time.monotonic()``) what it is then.

    ``None``: the database never answered. An outage is logged once, when the wait for it starts.
    """
    found = count_db_rows(settings, run)
    warned = False
    while (found is None or found < rows) and time.monotonic() < until:
        if found is None and not warned:
            log.warning("PostgreSQL does not answer; the demo waits for it (up to %.0f s more)",
                        until - time.monotonic())
            warned = True
        time.sleep(1.0)
        found = count_db_rows(settings, run)
    return found


def run_demo(
    settings: Settings,
    heads: dict[str, list[str]],
    count: int,
    timeout_s: float | None = None,
    on_prediction: Callable[[dict], None] | None = None,
    seed: int = 7,
    shift: Shift | None = None,
) -> dict:
    """Produce ``count`` demo phrases, wait for every answer, and return the figures.

    With ``shift`` (see :func:`demo_messages`) the figures say where it starts and which
    domains follow (``shift``: null without one).
    """
    run = f"demo-{uuid.uuid4().hex[:8]}"
    messages = list(demo_messages(run, count, heads, settings.max_text_chars, seed, shift))
    expected = sum(len(m.models) for m in messages if m.valid)
    invalid = sum(1 for m in messages if not m.valid)
    truth = {m.key: m for m in messages}
    deadline_s = timeout_s if timeout_s is not None else 120.0 + count * 0.25

    consumer = Consumer(client_config(settings, {
        "group.id": f"{run}-reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }))
    consumer.assign(_end_offsets(consumer, settings.topic_out) + _end_offsets(consumer, settings.topic_dlq))
    producer = Producer(client_config(settings, {"linger.ms": 5, "enable.idempotence": True}))
    sent_at: dict[str, float] = {}
    start = time.monotonic()
    for m in messages:
        producer.produce(settings.topic_in, key=m.key.encode(), value=m.value)
        sent_at[m.key] = time.monotonic()
        producer.poll(0)
    producer.flush(30)

    tally = Tally()
    marker = run.encode()
    while (len(tally.predictions) < expected or len(tally.dlq) < invalid) and time.monotonic() - start < deadline_s:
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            value = msg.value()
            if msg.error() is not None or value is None:  # value None: a tombstone, which we never write
                continue
            now = time.monotonic()
            if msg.topic() == settings.topic_out:
                pred = json.loads(value)
                if pred["id"].startswith(f"{run}-"):
                    tally.predictions[(pred["id"], pred["model"])] = pred
                    tally.arrival[f"{pred['id']}/{pred['model']}"] = now - sent_at.get(pred["id"], start)
                    if on_prediction is not None:
                        on_prediction(pred)
            else:
                letter = json.loads(value)
                if marker in base64.b64decode(letter["original_b64"]):
                    tally.dlq[f"{letter['source_topic']}/{letter['source_partition']}/{letter['source_offset']}"] = letter
    seconds = time.monotonic() - start
    consumer.close()

    db_rows = wait_for_rows(settings, run, len(tally.predictions), until=start + deadline_s + 60)

    in_scope = [
        (p, truth[p["id"]].intent) for p in tally.predictions.values()
        if p["model"] == "intent" and truth[p["id"]].intent not in (None, OOS)
    ]
    correct = sum(1 for p, intent in in_scope if p["label"] == intent)
    by_region: dict[str, list[bool]] = {}
    for p, intent in in_scope:
        by_region.setdefault(p["region"], []).append(p["label"] == intent)
    latencies = [p["latency_ms"] for p in tally.predictions.values()]
    e2e = [s * 1000.0 for s in tally.arrival.values()]
    return {
        "run": run,
        "produced": len(messages),
        "invalid": invalid,
        "expected_predictions": expected,
        "predictions": len(tally.predictions),
        "dlq": len(tally.dlq),
        "dlq_kinds": dict(sorted(Counter(letter["error_kind"] for letter in tally.dlq.values()).items())),
        "db_rows": db_rows,
        "intent_accuracy": round(correct / len(in_scope), 4) if in_scope else None,
        "intent_accuracy_by_region": {r: round(sum(v) / len(v), 4) for r, v in sorted(by_region.items())},
        "cache_hits": sum(1 for p in tally.predictions.values() if p["cache_hit"]),
        "p50_ms": percentile(latencies, 50, digits=1),
        "p99_ms": percentile(latencies, 99, digits=1),
        "e2e_p50_ms": percentile(e2e, 50, digits=1),
        "e2e_p99_ms": percentile(e2e, 99, digits=1),
        "seconds": round(seconds, 2),
        "shift": shift.figures(count) if shift is not None else None,
        "complete": len(tally.predictions) == expected and len(tally.dlq) == invalid,
    }
