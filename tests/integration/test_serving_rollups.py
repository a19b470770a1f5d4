"""Serving rollups on the live broker and database: the worker sums, the sink stores each delta once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import psycopg2
import pytest
from bounds import BOUND_S, POLL_S
from confluent_kafka import Producer
from psycopg2 import sql

from models.datasets import load_clinc150
from models.heads import block_columns
from models.registry.lifecycle import active_heads
from ops.kafka.clients import client_config
from schemas.observations import ServingRollup
from streams.app import READY_LINE
from streams.rollups import hour_of, unit_rows

pytestmark = pytest.mark.integration

SINK_READY = "sink started"


@pytest.fixture
def heads(base_settings) -> dict[str, list[str]]:
    heads = active_heads(base_settings)
    if "intent" not in heads.get("global", []):
        pytest.fail("no active global/intent head: run `make train` (the test set-up does)")
    return heads


@pytest.fixture(scope="module")
def embedder():
    """The embedder the worker serves with (the same export, from the shared models folder, in the
    precision ``auto`` chose and remembered for this CPU)."""
    from models.embedder import load_embedder
    from schemas.settings import Settings

    return load_embedder(Settings(), warm=False)


def rollup_rows(settings) -> list[dict]:
    query = sql.SQL("SELECT * FROM {}.serving_rollups ORDER BY delta_id").format(sql.Identifier(settings.pg_schema))
    with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
        cur.execute(query)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def wait_until(check: Callable[[], bool], what: str, timeout: float = BOUND_S) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(POLL_S)


def read_deltas(stack, until: Callable[[list[ServingRollup]], bool]) -> list[ServingRollup]:  # type: ignore[no-untyped-def]
    """Read ``serving.rollups`` from the start until ``until(deltas)`` holds (or the bound is reached)."""
    found = stack.read(stack.settings.topic_rollups,
                       until=lambda got: until([ServingRollup.model_validate(d) for d in got]))
    return [ServingRollup.model_validate(d) for d in found]


def phrases() -> list[str]:
    """Test-split phrases, and two with unknown word pieces."""
    return [t for t, _ in load_clinc150("full").test[:24]] + ["ǂǂǂ balance", "what is my balance ǂ"]


def test_rollup_rows_of_a_head_count_its_predictions_and_hold_the_mean_embedding_of_its_texts(stack, heads, embedder):
    stack.start("worker", READY_LINE, PHRASESTREAM_ROLLUP_INTERVAL_SECONDS="1")
    stack.start("sink", SINK_READY)
    first, again = phrases(), phrases()[:8]  # the second round is served from the cache
    predictions: list[dict] = []
    for round_, texts in enumerate((first, again)):
        stack.produce(*(json.dumps({"id": f"r{round_}-{i}", "text": t, "region": "global"}).encode()
                        for i, t in enumerate(texts)))
        predictions = stack.read(stack.settings.topic_out, (len(first) + len(texts) * round_) * len(heads["global"]))
    texts = first + again
    intent = [p for p in predictions if p["model"] == "intent"]
    assert len(intent) == len(texts)
    assert sum(p["cache_hit"] for p in intent) >= len(again), "the second round was served from the cache"

    def intent_rows() -> list[dict]:
        return [r for r in rollup_rows(stack.settings) if (r["region"], r["model"]) == ("global", "intent")]

    wait_until(lambda: sum(r["n"] for r in intent_rows()) >= len(intent), "the intent rollups did not count "
               "every intent prediction")
    rows = intent_rows()
    assert sum(r["n"] for r in rows) == len(intent)
    assert {r["model_version"] for r in rows} == {p["model_version"] for p in intent}
    assert {r["hour"] for r in rows} == {hour_of(datetime.fromisoformat(p["predicted_at"])) for p in intent}

    clean_texts = [p["clean_text"] for p in intent]
    features = embedder.features_batch(clean_texts)
    expected = unit_rows(features[:, block_columns(embedder.readout, ["mean6"])]).mean(axis=0)
    centroid = np.sum([r["embedding_sum"] for r in rows], axis=0) / sum(r["n"] for r in rows)
    np.testing.assert_allclose(centroid, expected, rtol=0, atol=1e-3)
    rates = embedder.unknown_rates(clean_texts)
    assert sum(r["with_unk"] for r in rows) == int((rates > 0).sum()) == 2
    assert sum(r["unk_rate_sum"] for r in rows) == pytest.approx(float(rates.sum()), abs=1e-9)
    for model in heads["global"]:  # every head counts its own predictions
        got = sum(r["n"] for r in rollup_rows(stack.settings) if (r["region"], r["model"]) == ("global", model))
        assert got == len(texts), model


def test_a_rollup_delivered_twice_is_stored_once(stack):
    stack.start("sink", SINK_READY)
    delta = ServingRollup(delta_id=f"{uuid.uuid4().hex}-7", region="global", model="intent", model_version="v1",
                          hour=datetime(2026, 11, 28, 10, tzinfo=UTC), n=3, embedding_sum=[0.25, -0.5, 1.0],
                          unk_rate_sum=0.5, with_unk=1)
    producer = Producer(client_config(stack.settings))
    for _ in range(2):  # twice in a row: maybe one batch
        producer.produce(stack.settings.topic_rollups, key=delta.delta_id.encode(), value=delta.to_bytes())
    assert producer.flush(30) == 0
    group = f"{stack.settings.sink_group}-rollups"
    stack.wait_caught_up(group, stack.settings.topic_rollups)  # the sink stored and committed both copies
    producer.produce(stack.settings.topic_rollups, key=delta.delta_id.encode(), value=delta.to_bytes())
    assert producer.flush(30) == 0  # and once more, later: another batch
    stack.wait_caught_up(group, stack.settings.topic_rollups)  # and the third
    [row] = rollup_rows(stack.settings)
    assert (row["delta_id"], row["n"], row["embedding_sum"], row["unk_rate_sum"], row["with_unk"]) == \
        (delta.delta_id, 3, [0.25, -0.5, 1.0], 0.5, 1)
    assert row["hour"] == delta.hour


def test_the_worker_publishes_the_rollups_it_holds_when_it_stops(stack, heads):
    stack.start("worker", READY_LINE, PHRASESTREAM_ROLLUP_INTERVAL_SECONDS="3600")  # no tick during the test
    texts = phrases()[:10]
    stack.produce(*(json.dumps({"id": f"s{i}", "text": t, "region": "global", "models": ["intent"]}).encode()
                    for i, t in enumerate(texts)))
    assert len(stack.read(stack.settings.topic_out, len(texts))) == len(texts)
    stack.stop("worker")
    deltas = read_deltas(stack, lambda ds: sum(d.n for d in ds) >= len(texts))
    assert sum(d.n for d in deltas) == len(texts)
    assert {(d.region, d.model) for d in deltas} == {("global", "intent")}
