"""The sink's bookkeeping, with stand-ins for Kafka and the database (no services).

The integration tests run the same code against the live broker and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import fakes
import psycopg2
import pytest
from confluent_kafka import Message
from fakes import FakeConsumer, FakeLetterBox
from fakes import kafka_message as Msg

from schemas.messages import ErrorKind, Prediction
from schemas.settings import Settings
from streams.sinks.base import SinkRunner

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def prediction(pid: str, label: str = "balance") -> bytes:
    return fakes.prediction(pid, label, at=T0)


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

    def prepare(self, batch: list[Prediction]) -> list[Prediction]:
        return batch

    def close(self) -> None:
        pass


def runner(batches: list[list[Message]], db: Database,
           undelivered: int = 0) -> tuple[SinkRunner, FakeConsumer, FakeLetterBox]:
    consumer, producer = FakeConsumer(batches), FakeLetterBox(undelivered)
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


def test_a_stop_during_a_database_outage_ends_the_retries_at_once_without_a_commit():
    class StoppedWhileDown(Database):
        """Down; at its second refused write the sink is told to stop, as SIGTERM would."""

        sink: SinkRunner
        writes = 0

        def write(self, batch: list[Prediction]) -> int:
            self.writes += 1
            if self.writes == 2:
                self.sink.stop()
            return super().write(batch)

    consumer, producer = FakeConsumer([[Msg(prediction("a"), 5)]]), FakeLetterBox()
    db = StoppedWhileDown(down=True)
    db.sink = SinkRunner(Settings(sink_retry_seconds=3600), db, consumer=consumer,  # type: ignore[arg-type]
                         producer=producer)
    assert db.sink.step() == 0  # returns although an hour of retries was allowed
    assert db.writes == 2, "no write is tried after the stop"
    assert consumer.commits == 0
    assert consumer.seeks == [(0, 5)], "the batch is read again at the next start"


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_stored():
    db = Database()
    sink, consumer, producer = runner([[Msg(prediction("a"), 0), Msg(prediction("bad", "nul\x00label"), 1)]], db)
    assert sink.step() == 2
    assert list(k[0] for k in db.rows) == ["a"]
    [letter] = producer.letters
    assert letter.error_kind is ErrorKind.REJECTED_BY_DATABASE
    assert (letter.id, letter.source_offset) == ("bad", 1)
    assert json.loads(letter.original())["id"] == "bad"
    assert consumer.commits == 1


def test_a_record_that_is_not_a_prediction_is_dead_lettered():
    sink, consumer, producer = runner([[Msg(b'{"not": "a prediction"}', 3)]], Database())
    sink.step()
    assert [letter.error_kind for letter in producer.letters] == [ErrorKind.WRONG_TYPE]
    assert producer.letters[0].original() == b'{"not": "a prediction"}'
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


# ---- COPY rows, halving a refused batch, explicit offsets --------------------------------------

AWKWARD = [
    "tab\there", "new\nline", "carriage\rreturn", "crlf\r\n", "back\\slash", "trailing\\", 'a "quote"', '"',
    "it's", "semi;colon, comma", "\\.", "\\N", "NULL", "", " spaced ", "café ☕ 日本語 😀", "\\t not a tab",
]


def typed(pid: str, clean_text: str = "x", label: str = "balance") -> Prediction:
    return Prediction.model_validate_json(prediction(pid, label)).model_copy(update={"clean_text": clean_text})


@pytest.mark.parametrize("text", AWKWARD)
def test_copy_csv_reads_back_as_the_same_row_whatever_the_text(text: str):
    import csv
    import io

    from streams.sinks.postgres import COLUMNS, copy_csv

    p = Prediction.model_validate_json(prediction("a\\b", label=text)).model_copy(update={"clean_text": text})
    [row] = list(csv.reader(io.StringIO(copy_csv([p]).decode("utf-8"), newline="")))
    got = dict(zip(COLUMNS, row))
    assert (got["id"], got["label"], got["clean_text"]) == ("a\\b", text, text)
    assert json.loads(got["top_k"]) == [[text, 0.9]]
    assert (got["cache_hit"], got["received_at"]) == ("False", "2026-11-27 12:00:00+00:00")


def test_copy_csv_quotes_every_field_so_that_no_value_reads_as_null():
    import re

    from streams.sinks.postgres import COLUMNS, copy_csv

    line = copy_csv([typed("a", clean_text="")]).decode("utf-8")
    fields = re.findall(r'"(?:[^"]|"")*"', line)
    assert ",".join(fields) + "\n" == line  # nothing but quoted fields, one line
    assert len(fields) == len(COLUMNS)
    assert fields[COLUMNS.index("clean_text")] == '""'  # the empty clean_text: an empty string, not NULL


def test_copy_csv_refuses_text_that_is_not_unicode_as_a_row_error():
    from streams.sinks.base import ROW_ERRORS
    from streams.sinks.postgres import copy_csv

    with pytest.raises(ROW_ERRORS):
        copy_csv([typed("a", clean_text="lone \ud800 surrogate")])


class CountingDatabase(Database):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, batch: list[Prediction]) -> int:
        self.writes += 1
        return super().write(batch)


def test_refused_rows_of_a_large_batch_are_dead_lettered_and_the_rest_stored_in_few_writes():
    db = CountingDatabase()
    bad = {37, 38, 200}
    messages = [Msg(prediction(f"p{i}", "nul\x00" if i in bad else "balance"), i) for i in range(256)]
    sink, consumer, producer = runner([messages], db)
    assert sink.step() == 256
    assert sorted(letter.source_offset for letter in producer.letters) == sorted(bad)
    assert {letter.error_kind for letter in producer.letters} == {ErrorKind.REJECTED_BY_DATABASE}
    assert sorted(k[0] for k in db.rows) == sorted(f"p{i}" for i in range(256) if i not in bad)
    assert db.writes <= 1 + 2 * 8 * len(bad)  # halving: about 2·log2(256) writes per refused row, not 256
    assert (sink.stats.stored, sink.stats.refused, sink.stats.duplicates) == (253, 3, 0)
    assert consumer.commits == 1


def test_a_prediction_delivered_again_in_a_later_batch_is_stored_once():
    db = Database()
    sink, consumer, _ = runner([[Msg(prediction("a"), 0)], [Msg(prediction("a"), 1), Msg(prediction("b"), 2)]], db)
    assert sink.step() == 1
    assert sink.step() == 2
    assert sorted(k[0] for k in db.rows) == ["a", "b"]
    assert (sink.stats.stored, sink.stats.duplicates, consumer.commits) == (2, 1, 2)


def test_the_commit_names_the_offset_after_the_last_message_of_each_partition():
    sink, consumer, _ = runner([[Msg(prediction("a"), 10, 0), Msg(prediction("b"), 4, 1), Msg(prediction("c"), 11, 0)]],
                               Database())
    sink.step()
    assert consumer.offsets == [[(0, 12), (1, 5)]]
    assert sink.committed == {("predictions.out", 0): 12, ("predictions.out", 1): 5}


class GroupConsumer(FakeConsumer):
    """A consumer for ``serve``: subscribes, can revoke its partitions at a given consume, closes."""

    def __init__(self, batches: list[list[Message]], revoke_at: int | None = None) -> None:
        super().__init__(batches)
        self.closed, self.revoke_at, self.consumes, self.revoked_after_commits = False, revoke_at, 0, -1

    def subscribe(self, topics: list[str], on_revoke=None) -> None:  # type: ignore[no-untyped-def]
        self.on_revoke = on_revoke

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self.consumes += 1
        if self.consumes == self.revoke_at:
            self.on_revoke(self, [])
            self.revoked_after_commits = self.commits
        return super().consume(num_messages, timeout)

    def close(self) -> None:
        self.closed = True


class SlowDatabase(Database):
    """Takes a while per write, and says which batches overlapped a read (for the pipeline)."""

    def __init__(self, fail_ids: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.fail_ids, self.batches = fail_ids, []

    def write(self, batch: list[Prediction]) -> int:
        import time

        time.sleep(0.02)
        self.batches.append([p.id for p in batch])
        if self.fail_ids & {p.id for p in batch}:
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        return super().write(batch)


def serve(consumer: GroupConsumer, db: Database, until) -> SinkRunner:  # type: ignore[no-untyped-def]
    letters = FakeLetterBox()
    sink = SinkRunner(Settings(sink_retry_seconds=0.3), db, consumer=consumer, producer=letters)  # type: ignore[arg-type]
    sink.serve(until=until)
    return sink


def test_serve_commits_each_batch_after_its_rows_and_finishes_the_batch_in_flight_at_stop():
    consumer = GroupConsumer([[Msg(prediction("a"), 0)], [Msg(prediction("b"), 1), Msg(prediction("c"), 2)],
                              [Msg(prediction("d"), 3)], [Msg(prediction("e"), 4)]])
    db = SlowDatabase()
    sink = serve(consumer, db, until=lambda r: r.committed.get(("predictions.out", 0), 0) >= 3)
    # a, then b+c committed: the loop stops; d was being written meanwhile and is committed before leaving
    assert db.batches == [["a"], ["b", "c"], ["d"]]
    assert consumer.offsets == [[(0, 1)], [(0, 3)], [(0, 4)]]
    assert sorted(k[0] for k in db.rows) == ["a", "b", "c", "d"]
    assert consumer.closed and [[m.offset() for m in b] for b in consumer.batches] == [[4]]  # e: never read
    assert sink.first_message_at is not None and sink.stats.stored == 4


def test_serve_rewinds_to_a_batch_that_cannot_be_written_dropping_the_one_read_meanwhile():
    consumer = GroupConsumer([[Msg(prediction("a"), 0, 0)], [Msg(prediction("b"), 1, 0), Msg(prediction("x"), 0, 1)],
                              [Msg(prediction("c"), 2, 0), Msg(prediction("y"), 1, 1), Msg(prediction("z"), 0, 2)]])
    db = SlowDatabase(fail_ids={"b"})
    sink = serve(consumer, db, until=lambda r: r.stats.rewinds == 1)
    assert consumer.offsets == [[(0, 1)]]  # only a's batch: neither b's nor the one read meanwhile
    assert sorted(consumer.seeks) == [(0, 1), (1, 0), (2, 0)]  # b, x, and z (read meanwhile, partition 2)
    assert ["c", "y", "z"] not in db.batches
    assert sink.stats.retries >= 1


def test_serve_finishes_and_commits_the_batch_in_flight_before_its_partitions_are_revoked():
    consumer = GroupConsumer([[Msg(prediction("a"), 0)], [], [Msg(prediction("b"), 1)]], revoke_at=2)
    db = SlowDatabase()
    serve(consumer, db, until=lambda r: r.committed.get(("predictions.out", 0), 0) >= 2)
    assert consumer.revoked_after_commits == 1  # a was committed inside the revocation
    assert consumer.offsets == [[(0, 1)], [(0, 2)]]


def test_the_bench_refuses_a_broker_that_is_not_on_this_machine():
    from streams.tools.sink_bench import BenchError, check_local

    check_local(Settings(kafka_bootstrap="127.0.0.1:9092,localhost:9093"))
    with pytest.raises(BenchError, match="local broker"):
        check_local(Settings(kafka_bootstrap="127.0.0.1:9092,kafka.example.com:9092"))


def test_the_sink_process_imports_no_worker_training_or_model_code():
    from imports import loaded

    assert loaded("streams.sinks.run", ("retrain", "models", "faust", "tensorflow"),
                  ("streams.app", "streams.pipeline")) == [], \
        "the sink stores what the worker published; it needs none of its code"
