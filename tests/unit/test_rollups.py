"""Serving rollups: the sums per (head, hour), the deltas, their publishing and their sink (no services)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from fakes import FakeConsumer, FakeHead, FakeLetterBox, FakeProducer, ReadoutEmbedder, kafka_message
from pydantic import ValidationError

from models.heads import BLOCK_DIM, HeadRef, block_columns
from schemas.messages import CleanedPhrase, ErrorKind, Prediction
from schemas.observations import ServingRollup
from schemas.settings import Settings
from streams.pipeline import serve_batch
from streams.rollups import RollupPublisher, Rollups, hour_of, rollups_for, unit_rows
from streams.state.memos import UnknownRates

T0 = datetime(2026, 11, 28, 10, 59, 59, 999_000, tzinfo=UTC)
T1 = datetime(2026, 11, 28, 11, 0, 0, tzinfo=UTC)
DIM = 4
COLUMNS = np.arange(DIM)  # the sentence embedding is the first block of the features


def cleaned(pid: str, text: str) -> CleanedPhrase:
    return CleanedPhrase(id=pid, region="global", models=["intent"], clean_text=text, received_at=T0)


def predicted(phrase: CleanedPhrase, model: str = "intent", version: str = "v1", at: datetime = T0) -> Prediction:
    return Prediction(id=phrase.id, region=phrase.region, model=model, model_version=version, label="x",
                      probability=0.5, top_k=[("x", 0.5)], clean_text=phrase.clean_text, embedder_version="e",
                      cache_hit=False, latency_ms=1.0, received_at=T0, predicted_at=at)


class CountingRates:
    """Unknown-word-piece rates: 0.25 for texts with "zzz", else 0; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([0.25 if "zzz" in t else 0.0 for t in texts])


def by_key(deltas: list[ServingRollup]) -> dict[tuple, ServingRollup]:
    return {(d.region, d.model, d.model_version, d.hour): d for d in deltas}


# --- hour buckets and normalisation -------------------------------------------------------


def test_hour_of_truncates_to_the_utc_hour_like_date_trunc():
    assert hour_of(T0) == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert hour_of(T1) == T1
    plus_two = datetime(2026, 11, 28, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    assert hour_of(plus_two) == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert hour_of(plus_two).utcoffset() == timedelta(0)


def test_hour_of_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="naive"):
        hour_of(datetime(2026, 11, 28, 10))


def test_unit_rows_normalise_each_row_and_keep_a_zero_row_zero():
    out = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=0, atol=1e-15)


# --- sums ---------------------------------------------------------------------------------


def test_observe_sums_normalised_embeddings_and_unknown_rates_per_head_version_and_hour():
    rng = np.random.default_rng(3)
    phrases = [cleaned("a", "hello"), cleaned("b", "zzz what"), cleaned("c", "hello")]  # "hello" twice
    vectors = rng.normal(size=(3, 2 * DIM)).astype(np.float32) * 5  # not unit: normalising matters
    vectors[2] = vectors[0]  # the same text has the same features
    preds = [predicted(phrases[0]), predicted(phrases[1]), predicted(phrases[2]),  # intent v1, hour 10
             predicted(phrases[1], at=T1),                                           # intent v1, hour 11
             predicted(phrases[0], model="domain", version="d3")]                   # domain d3, hour 10
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10, instance="0" * 32)
    rollups.observe(phrases, vectors, preds)
    deltas = by_key(rollups.drain())

    unit = vectors[:, :DIM] / np.linalg.norm(vectors[:, :DIM].astype(np.float64), axis=1, keepdims=True)
    h10, h11 = hour_of(T0), T1
    intent10 = deltas[("global", "intent", "v1", h10)]
    assert (intent10.n, intent10.with_unk) == (3, 1)
    assert intent10.unk_rate_sum == pytest.approx(0.25)
    np.testing.assert_allclose(intent10.embedding_sum, unit[0] + unit[1] + unit[2], rtol=0, atol=1e-12)
    intent11 = deltas[("global", "intent", "v1", h11)]
    assert (intent11.n, intent11.with_unk, intent11.unk_rate_sum) == (1, 1, 0.25)
    np.testing.assert_allclose(intent11.embedding_sum, unit[1], rtol=0, atol=1e-12)
    domain = deltas[("global", "domain", "d3", h10)]
    assert (domain.n, domain.with_unk, domain.unk_rate_sum) == (1, 0, 0.0)
    np.testing.assert_allclose(domain.embedding_sum, unit[0], rtol=0, atol=1e-12)
    assert len(deltas) == 3
    assert all(len(d.embedding_sum) == DIM for d in deltas.values()), "only the sentence-embedding block"


def test_predictions_of_heads_in_any_order_land_in_their_own_buckets():
    phrases = [cleaned("a", "hello"), cleaned("b", "zzz")]
    vectors = np.eye(2, DIM, dtype=np.float32)
    at = datetime(2026, 11, 28, 10, 5, tzinfo=UTC)
    order = [("intent", 0), ("domain", 1), ("intent", 1), ("domain", 0), ("intent", 0)]
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    rollups.observe(phrases, vectors, [predicted(phrases[i], model=m, at=at) for m, i in order])
    deltas = {d.model: d for d in rollups.drain()}
    assert (deltas["intent"].n, deltas["intent"].with_unk, deltas["domain"].n, deltas["domain"].with_unk) == (3, 1, 2, 1)
    np.testing.assert_allclose(deltas["intent"].embedding_sum, [2, 1, 0, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(deltas["domain"].embedding_sum, [1, 1, 0, 0], rtol=0, atol=1e-12)


def test_sums_of_several_batches_add_up_until_drained_and_start_again_after():
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    p = cleaned("a", "hello")
    v = np.ones((1, DIM), dtype=np.float32)
    for _ in range(3):
        rollups.observe([p], v, [predicted(p)])
    assert rollups.pending == 3
    [delta] = rollups.drain()
    assert delta.n == 3
    np.testing.assert_allclose(delta.embedding_sum, [3 * 0.5] * DIM, rtol=0, atol=1e-12)
    assert rollups.pending == 0 and rollups.drain() == []


def test_each_delta_has_a_unique_id_of_the_instance_and_a_sequence_number():
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10, instance="ab" * 16)
    p = cleaned("a", "hello")
    v = np.ones((1, DIM), dtype=np.float32)
    rollups.observe([p], v, [predicted(p), predicted(p, model="domain")])
    first = [d.delta_id for d in rollups.drain()]
    rollups.observe([p], v, [predicted(p)])
    second = [d.delta_id for d in rollups.drain()]
    assert first + second == [f"{'ab' * 16}-{i}" for i in (1, 2, 3)]


def test_a_delta_survives_its_json_round_trip_exactly():
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    p = cleaned("a", "zzz hello")
    rollups.observe([p], np.random.default_rng(1).normal(size=(1, DIM)).astype(np.float32), [predicted(p)])
    [delta] = rollups.drain()
    again = ServingRollup.model_validate_json(delta.to_bytes())
    assert again == delta


def test_unknown_rates_are_computed_once_per_text_while_the_memo_holds_it():
    rates = CountingRates()
    memo = UnknownRates(rates, max_entries=2)
    np.testing.assert_array_equal(memo.rates(["a", "zzz", "a"]), [0.0, 0.25, 0.0])
    assert rates.calls == [["a", "zzz"]], "the distinct misses, in one call"
    memo.rates(["zzz", "a"])
    assert len(rates.calls) == 1
    memo.rates(["b"])  # evicts the least recently used: "zzz"
    assert len(memo) == 2
    memo.rates(["zzz"])
    assert rates.calls[-1] == ["zzz"]


def test_a_memo_of_zero_entries_computes_every_time_and_keeps_nothing():
    rates = CountingRates()
    memo = UnknownRates(rates, max_entries=0)
    memo.rates(["a"])
    memo.rates(["a"])
    assert len(rates.calls) == 2 and len(memo) == 0


def test_rollups_for_a_readout_embedder_read_the_mean6_block():
    embedder = ReadoutEmbedder()
    rollups = rollups_for(embedder, memo_entries=10)
    texts = ["how are you", "zzz card"]
    phrases = [cleaned(str(i), t) for i, t in enumerate(texts)]
    features = embedder.features_batch(texts)
    rollups.observe(phrases, features, [predicted(p) for p in phrases])
    [delta] = rollups.drain()
    mean6 = features[:, block_columns(embedder.readout, ["mean6"])]
    assert mean6.shape[1] == BLOCK_DIM
    np.testing.assert_allclose(delta.embedding_sum, unit_rows(mean6).sum(axis=0), rtol=0, atol=1e-12)
    assert (delta.with_unk, delta.unk_rate_sum) == (1, 0.5)


# --- the hook in serve_batch --------------------------------------------------------------


def head(model: str) -> FakeHead:
    return FakeHead(HeadRef("global", model, f"{model}-v1"))


class PoisonEmbedder(ReadoutEmbedder):
    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        if "poison" in texts:
            raise RuntimeError("choked")
        return super().features_batch(texts)


def test_serve_batch_tells_the_observer_of_every_prediction_once_even_when_its_batch_is_retried_alone():
    embedder = PoisonEmbedder()
    heads = {"global": {"intent": head("intent"), "domain": head("domain")}}
    rollups = rollups_for(embedder, memo_entries=10)
    values = [CleanedPhrase(id=str(i), region="global", models=["intent", "domain"], clean_text=t,
                            received_at=T0).to_bytes() for i, t in enumerate(["fine", "poison", "good", "fine"])]
    served = asyncio.run(serve_batch(values, embedder, None, heads, 1, observe=rollups.observe))
    assert len(served.predictions) == 6 and len(served.failures) == 1
    deltas = rollups.drain()
    assert sorted((d.model, d.n) for d in deltas) == [("domain", 3), ("intent", 3)]


def test_an_observer_that_fails_costs_no_prediction():
    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    value = CleanedPhrase(id="1", region="global", models=["intent"], clean_text="hi", received_at=T0).to_bytes()
    served = asyncio.run(serve_batch([value], ReadoutEmbedder(), None, {"global": {"intent": head("intent")}}, 1,
                                     observe=broken))
    assert [p.id for p in served.predictions] == ["1"] and served.failures == []


# --- publishing ---------------------------------------------------------------------------


def sent(producer: FakeProducer) -> list[ServingRollup]:
    """Return the deltas the broker took, in order."""
    return [ServingRollup.model_validate_json(value) for _, _, value in producer.delivered]


def observed(rollups: Rollups, count: int = 1, model: str = "intent") -> None:
    p = cleaned("a", "hello")
    for _ in range(count):
        rollups.observe([p], np.ones((1, DIM), dtype=np.float32), [predicted(p, model=model)])


def test_a_delta_that_fails_is_sent_again_with_its_id_and_no_new_delta_is_cut_meanwhile():
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    producer = FakeProducer(fail_first=1)
    publisher = RollupPublisher(Settings(), rollups, producer=producer)
    observed(rollups, 2)
    assert publisher.publish() == 1 and producer.delivered == []
    observed(rollups, 3)  # served meanwhile: stays in the sums
    assert publisher.publish() == 0
    [first] = sent(producer)
    assert first.n == 2 and [key for _, key, _ in producer.produced] == [first.delta_id.encode()] * 2
    assert rollups.pending == 3
    publisher.publish()
    assert [d.n for d in sent(producer)] == [2, 3]
    assert len({d.delta_id for d in sent(producer)}) == 2


def test_a_producer_that_raises_does_not_raise_and_keeps_the_delta():
    class Full(FakeProducer):
        def produce(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            raise BufferError("queue full")

    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    publisher = RollupPublisher(Settings(), rollups, producer=Full())
    observed(rollups)
    assert publisher.publish() == 1
    assert publisher.outstanding == 1


def test_close_sends_the_set_in_flight_then_the_last_sums():
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    producer = FakeProducer(fail_first=1)
    publisher = RollupPublisher(Settings(), rollups, producer=producer)
    observed(rollups, 2)
    publisher.publish()  # fails: stays in flight
    observed(rollups, 5)
    assert publisher.close(timeout=5.0) == 0
    assert sum(d.n for d in sent(producer)) == 7


def test_close_says_how_many_predictions_went_uncounted_when_the_broker_never_answers():
    rollups = Rollups(COLUMNS, CountingRates(), memo_entries=10)
    publisher = RollupPublisher(Settings(), rollups, producer=FakeProducer(fail_first=10**6))
    observed(rollups, 4)
    assert publisher.close(timeout=0.3) == 4


# --- the message and the sink -------------------------------------------------------------


def rollup(**overrides: object) -> dict:
    base = {"delta_id": "f" * 32 + "-1", "region": "global", "model": "intent", "model_version": "v1",
            "hour": "2026-11-28T10:00:00Z", "n": 2, "embedding_sum": [0.5, 0.5], "unk_rate_sum": 0.25,
            "with_unk": 1}
    return {**base, **overrides}


@pytest.mark.parametrize("bad", [
    {"with_unk": 3}, {"n": 0}, {"hour": "2026-11-28T10:30:00Z"}, {"hour": "2026-11-28T10:00:00"},
    {"unk_rate_sum": 2.5}, {"embedding_sum": []}, {"delta_id": "not-an-id"},
])
def test_a_serving_rollup_refuses_inconsistent_values(bad: dict):
    with pytest.raises(ValidationError):
        ServingRollup.model_validate(rollup(**bad))


def test_a_rollup_that_is_not_finite_is_refused():
    raw = json.dumps(rollup()).replace("[0.5, 0.5]", "[NaN, 0.5]").encode()
    with pytest.raises(ValidationError):
        ServingRollup.model_validate_json(raw)


class Table:
    """serving_rollups, keyed by delta_id like ON CONFLICT (delta_id) DO NOTHING."""

    def __init__(self) -> None:
        self.rows: dict[str, ServingRollup] = {}

    def prepare(self, batch: list) -> list:
        return batch

    def write(self, batch: list[ServingRollup]) -> int:
        new = 0
        for d in batch:  # also within one statement
            if d.delta_id not in self.rows:
                self.rows[d.delta_id], new = d, new + 1
        return new

    def close(self) -> None:
        pass


def test_the_rollup_runner_stores_a_redelivered_delta_once_and_dead_letters_what_is_not_a_rollup():
    from streams.sinks.run import rollup_runner

    delta = json.dumps(rollup()).encode()
    batch = [kafka_message(value, offset, topic="serving.rollups") for offset, value in enumerate([delta, delta, b'{"n": 1}'])]
    consumer, letters, table = FakeConsumer([batch]), FakeLetterBox(), Table()
    settings = Settings(sink_group="g", topic_rollups="r.topic")
    runner = rollup_runner(settings, sink=table, consumer=consumer, producer=letters)  # type: ignore[arg-type]
    assert (runner.topic, runner.group) == ("r.topic", "g-rollups")
    assert runner.step() == 3
    assert list(table.rows) == ["f" * 32 + "-1"]
    assert (runner.stats.stored, runner.stats.duplicates) == (1, 1)
    [letter] = letters.letters
    assert letter.error_kind is ErrorKind.WRONG_TYPE and "not a valid serving rollup" in letter.reason
    assert consumer.commits == 1


def test_a_bucket_that_cannot_be_a_delta_is_dropped_alone():
    rollups = Rollups(COLUMNS, lambda texts: np.array([np.nan if t == "broken" else 0.0 for t in texts]),
                      memo_entries=10)
    good, bad = cleaned("a", "hello"), cleaned("b", "broken")
    rollups.observe([good, bad], np.ones((2, DIM), dtype=np.float32), [predicted(good), predicted(bad, model="domain")])
    assert [(d.model, d.n) for d in rollups.drain()] == [("intent", 1)]


def test_while_the_database_is_down_the_rollup_runner_commits_nothing_and_reads_the_batch_again():
    import psycopg2

    from streams.sinks.run import rollup_runner

    class Down(Table):
        def write(self, batch: list[ServingRollup]) -> int:
            raise psycopg2.OperationalError("connection refused")

    consumer = FakeConsumer([[kafka_message(json.dumps(rollup()).encode(), 9, topic="serving.rollups")]])
    runner = rollup_runner(Settings(sink_retry_seconds=0.3), sink=Down(), consumer=consumer,  # type: ignore[arg-type]
                           producer=FakeLetterBox())
    assert runner.step() == 0
    assert (consumer.commits, consumer.seeks) == (0, [(0, 9)])
    assert runner.stats.retries >= 1
