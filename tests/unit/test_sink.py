"""The sink's bookkeeping, with stand-ins for Kafka and the database (no services).

The integration tests run the same code against the live broker and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg2
import pytest

from schemas.messages import DeadLetter, ErrorKind, Prediction
from schemas.settings import Settings
from streams.sink import SinkRunner

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def prediction(pid: str, label: str = "balance") -> bytes:
    return Prediction(
        id=pid, region="global", model="intent", model_version="v1", label=label, probability=0.9,
        top_k=[(label, 0.9)], clean_text="x", embedder_version="e1", cache_hit=False, latency_ms=1.0,
        received_at=T0, predicted_at=T0,
    ).to_bytes()


class Msg:
    def __init__(self, value: bytes, offset: int, partition: int = 0) -> None:
        self._value, self._offset, self._partition = value, offset, partition

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "predictions.out"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


class Consumer:
    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches, self.commits, self.seeks = batches, 0, []

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, asynchronous: bool) -> None:
        self.commits += 1

    def seek(self, tp) -> None:  # type: ignore[no-untyped-def]
        self.seeks.append((tp.partition, tp.offset))


class Producer:
    def __init__(self, undelivered: int = 0) -> None:
        self.sent: list[DeadLetter] = []
        self.undelivered = undelivered

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append(DeadLetter.model_validate_json(value))

    def flush(self, timeout: float) -> int:
        return self.undelivered


class Database:
    """Stores rows by (id, model, version); refuses labels with a NUL; can be 'down'."""

    def __init__(self, down: bool = False) -> None:
        self.rows: dict[tuple, Prediction] = {}
        self.down = down

    def write(self, batch: list[Prediction]) -> int:
        if self.down:
            raise psycopg2.OperationalError("connection refused")
        if any("\x00" in p.label for p in batch):
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        new = 0
        for p in batch:  # like ON CONFLICT DO NOTHING, also within one statement
            key = (p.id, p.model, p.model_version)
            if key not in self.rows:
                self.rows[key], new = p, new + 1
        return new

    def close(self) -> None:
        pass


def runner(batches: list[list[Msg]], db: Database, undelivered: int = 0) -> tuple[SinkRunner, Consumer, Producer]:
    consumer, producer = Consumer(batches), Producer(undelivered)
    settings = Settings(sink_retry_seconds=0.3)
    return SinkRunner(settings, db, consumer=consumer, producer=producer), consumer, producer  # type: ignore[arg-type]


def test_a_batch_is_committed_after_its_rows_are_stored_and_duplicates_count_once():
    db = Database()
    sink, consumer, _ = runner([[Msg(prediction("a"), 0), Msg(prediction("a"), 1), Msg(prediction("b"), 2)]], db)
    assert sink.step() == 3
    assert consumer.commits == 1
    assert sorted(k[0] for k in db.rows) == ["a", "b"]
    assert (sink.stats.stored, sink.stats.duplicates) == (2, 1)


def test_while_the_database_is_down_nothing_is_committed_and_the_batch_is_read_again():
    sink, consumer, _ = runner([[Msg(prediction("a"), 5), Msg(prediction("b"), 7)]], Database(down=True))
    assert sink.step() == 0
    assert consumer.commits == 0
    assert consumer.seeks == [(0, 5)]
    assert sink.stats.retries >= 1


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_stored():
    db = Database()
    sink, consumer, producer = runner([[Msg(prediction("a"), 0), Msg(prediction("bad", "nul\x00label"), 1)]], db)
    assert sink.step() == 2
    assert list(k[0] for k in db.rows) == ["a"]
    [letter] = producer.sent
    assert letter.error_kind is ErrorKind.REJECTED_BY_DATABASE
    assert (letter.id, letter.source_offset) == ("bad", 1)
    assert json.loads(letter.original())["id"] == "bad"
    assert consumer.commits == 1


def test_a_record_that_is_not_a_prediction_is_dead_lettered():
    sink, consumer, producer = runner([[Msg(b'{"not": "a prediction"}', 3)]], Database())
    sink.step()
    assert [letter.error_kind for letter in producer.sent] == [ErrorKind.WRONG_TYPE]
    assert producer.sent[0].original() == b'{"not": "a prediction"}'
    assert consumer.commits == 1


def test_no_commit_while_a_dead_letter_is_undelivered():
    sink, consumer, _ = runner([[Msg(b"garbage", 4)]], Database(), undelivered=1)
    assert sink.step() == 0
    assert consumer.commits == 0
    assert consumer.seeks == [(0, 4)]


@pytest.mark.parametrize("down", [True, False])
def test_an_empty_poll_does_nothing(down: bool):
    sink, consumer, _ = runner([], Database(down=down))
    assert sink.step() == 0
    assert consumer.commits == 0
