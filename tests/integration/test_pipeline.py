"""End to end on the live broker and database: phrases in, predictions out, rows stored."""

from __future__ import annotations

import base64
import json
import re

import psycopg2
import pytest
from bounds import BOUND_S
from psycopg2 import sql

from models.registry.lifecycle import active_heads
from streams.app import READY_LINE

pytestmark = pytest.mark.integration

WORKER_READY = READY_LINE
SINK_READY = "sink started"


@pytest.fixture(scope="module")
def heads(base_settings) -> dict[str, list[str]]:
    heads = active_heads(base_settings)
    if not heads:
        pytest.fail("no active heads: run `make train` (the test set-up does)")
    return heads


def answers(st, topic: str, ids: set[str], count: int) -> list[dict]:
    """Read ``topic`` from its start until ``count`` messages of ``ids`` are there; return those."""
    def mine(found: list[dict]) -> list[dict]:
        return [m for m in found if m.get("id") in ids]

    return mine(st.read(topic, until=lambda found: len(mine(found)) >= count))


def test_a_phrase_yields_one_prediction_per_head_and_the_same_rows_in_postgres(live, heads):
    live.produce(json.dumps({"id": "42", "text": "how do I reset my PIN?", "region": "global"}).encode())

    predictions = answers(live, live.settings.topic_out, {"42"}, len(heads["global"]))
    assert sorted(p["model"] for p in predictions) == heads["global"]
    intent = next(p for p in predictions if p["model"] == "intent")
    assert intent["label"] == "pin_change"
    assert intent["clean_text"] == "how do i reset my pin?"
    assert len(intent["top_k"]) == live.settings.top_k

    rows = live.wait_rows(len(predictions), ids={"42"})
    assert [(r["id"], r["model"], r["model_version"], r["label"]) for r in rows] == sorted(
        (p["id"], p["model"], p["model_version"], p["label"]) for p in predictions
    )
    # a new worker created its internal topics before Faust's first assignment looked for them
    assert "not found in cluster metadata" not in (live.logs / "worker.log").read_text()


def test_each_invalid_input_lands_on_the_dlq_with_its_reason_and_the_worker_goes_on(live, heads):
    bad = {
        "invalid_json": b'{"text": "unterminated',
        "not_utf8": b'{"text": "caf\xe9", "region": "global"}',
        "empty_text": json.dumps({"text": "  \n ", "region": "global"}).encode(),
        "text_too_long": json.dumps({"text": "a" * (live.settings.max_text_chars + 1), "region": "global"}).encode(),
        "wrong_type": json.dumps({"text": ["a list"], "region": "global"}).encode(),
        "unknown_region": json.dumps({"text": "what is my balance", "region": "atlantis"}).encode(),
        "missing_field": json.dumps({"region": "global"}).encode(),
        "not_an_object": b'"just a string"',
        "unknown_model": json.dumps({"text": "hello", "region": "global", "models": ["nope"]}).encode(),
    }
    live.produce(*bad.values())
    live.produce(json.dumps({"id": "after-the-bad-ones", "text": "what's my balance", "region": "global"}).encode())

    letters = live.read(live.settings.topic_dlq, len(bad))  # only this test sends invalid input
    by_kind = {letter["error_kind"]: letter for letter in letters}
    assert sorted(by_kind) == sorted(bad)
    for kind, raw in bad.items():
        assert base64.b64decode(by_kind[kind]["original_b64"]) == raw
        assert by_kind[kind]["source_topic"] == live.settings.topic_in
        assert by_kind[kind]["reason"]
    assert "global" in by_kind["unknown_region"]["reason"]

    after = answers(live, live.settings.topic_out, {"after-the-bad-ones"}, len(heads["global"]))
    assert sorted(p["model"] for p in after) == heads["global"]
    assert live.procs["worker"].poll() is None


def test_a_prediction_delivered_twice_is_stored_once(live, heads):
    live.produce(json.dumps({"id": "twice", "text": "book a table for two", "region": "global",
                             "models": ["intent"]}).encode())
    [prediction] = answers(live, live.settings.topic_out, {"twice"}, 1)
    live.produce(json.dumps(prediction).encode(), topic=live.settings.topic_out)  # the same prediction again

    assert len(answers(live, live.settings.topic_out, {"twice"}, 2)) == 2
    live.wait_sink_caught_up()  # both copies are read and committed: nothing more will come
    rows = [r for r in live.rows() if r["id"] == "twice"]
    assert [(r["id"], r["model"]) for r in rows] == [("twice", "intent")]


def test_the_same_text_twice_is_served_from_the_embedding_cache(live, heads):
    body = {"text": "  Transfer $100 to my savings account  ", "region": "global", "models": ["intent"]}
    live.produce(json.dumps({**body, "id": "first"}).encode())
    [first] = answers(live, live.settings.topic_out, {"first"}, 1)
    live.produce(json.dumps({**body, "id": "second", "text": "transfer $100 to my SAVINGS account"}).encode())
    [second] = answers(live, live.settings.topic_out, {"second"}, 1)
    assert first["cache_hit"] is False
    assert second["cache_hit"] is True
    assert second["label"] == first["label"]


def test_a_restarted_worker_gets_its_embedding_cache_back_from_the_changelog(stack, heads):
    body = {"text": "what is the exchange rate for euros", "region": "global", "models": ["intent"]}
    stack.start("worker", WORKER_READY)
    stack.produce(json.dumps({**body, "id": "before-restart"}).encode())
    [before] = stack.read(stack.settings.topic_out, 1)
    stack.stop("worker")

    stack.start("worker", WORKER_READY)
    stack.produce(json.dumps({**body, "id": "after-restart"}).encode())
    both = stack.read(stack.settings.topic_out, 2)
    after = next(p for p in both if p["id"] == "after-restart")
    assert before["cache_hit"] is False
    assert after["cache_hit"] is True
    assert re.search(r"\b1 entries held", (stack.logs / "worker.log").read_text())


def test_a_demo_stream_cold_then_cached_is_stored_exactly_once_with_the_demos_counts(stack, heads):
    """After the batching changes (take() batches, the outbox, the answer memo), every valid demo
    phrase still gets one prediction per requested head, each invalid one one dead letter, and
    PostgreSQL holds each (id, model, version) once: first with every phrase new, then with the
    same phrases again, all served from the cache."""
    from streams.tools.demo_feed import demo_messages, run_demo

    stack.start("worker", WORKER_READY)
    stack.start("sink", SINK_READY)
    count = 400  # 20 invalid, one of each kind in turn
    runs = [run_demo(stack.settings, heads, count, timeout_s=BOUND_S, seed=11) for _ in range(2)]

    query = sql.SQL("SELECT id, model, model_version, count(*) FROM {}.inferences WHERE id LIKE %s "
                    "GROUP BY id, model, model_version").format(sql.Identifier(stack.settings.pg_schema))
    for figures in runs:
        messages = list(demo_messages(figures["run"], count, heads, stack.settings.max_text_chars, seed=11))
        wanted = {(m.key, model) for m in messages if m.valid for model in m.models}
        invalid = sum(1 for m in messages if not m.valid)
        assert figures["complete"], figures
        assert (figures["predictions"], figures["dlq"]) == (len(wanted), invalid) == (figures["expected_predictions"], 20)
        assert figures["db_rows"] == len(wanted)
        with psycopg2.connect(stack.settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(query, (f"{figures['run']}-%",))
            stored = cur.fetchall()
        assert [row for row in stored if row[3] != 1] == []
        assert {(row[0], row[1]) for row in stored} == wanted
    cold, cached = runs
    assert cached["cache_hits"] == cached["predictions"]  # the second run met only phrases the first one embedded
    assert cold["cache_hits"] < cold["predictions"]
