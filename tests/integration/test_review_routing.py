"""A live worker routes the answers its head's review rule picks to phrases.review, with their
reasons, margins and sampling weights, and puts evidence on the predictions of the phrases that
ask ``"explain": true`` (and on no other)."""

from __future__ import annotations

import json
import uuid

import pytest

from models.registry.pointers import publish, read_all
from schemas.review import ReviewItem, ReviewRule, item_id
from streams.app import READY_LINE
from streams.routing import OFF_RULE, in_random_slice

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULE = ReviewRule(margin=0.3, random_rate=0.3, budget_per_hour=1000, random_budget_per_hour=1000)
TEXTS = ["what is my bank balance", "transfer 100 dollars to savings", "book a flight to paris", "tell me a joke",
         "asdf qwer zxcv", "I want to do the thing", "how about that", "can you help", "set an alarm for 7",
         "play some music", "what time is it", "order a pizza", "cancel", "yes", "change", "card", "car", "rain",
         "bank", "my card was stolen what do I do"]


def expected_reasons(prediction: dict) -> list[str]:
    """What RULE says of one published prediction (its top_k holds three labels)."""
    probs = [p for _, p in prediction["top_k"]]
    reasons = []
    if probs[0] - probs[1] < RULE.margin:
        reasons.append("margin")
    if prediction["label"] == "oos":
        reasons.append("oos")
    if in_random_slice(prediction["id"], "global", "intent", RULE.random_rate):
        reasons.append("random")
    return reasons


def test_a_worker_routes_what_its_rule_picks_with_reasons_and_explains_the_phrases_that_ask(stack) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings
    for key, pointer in read_all(settings).items():  # review-rule: a new pointer, same version
        rule = RULE if key == ("global", "intent") else OFF_RULE
        publish(settings, pointer.model_copy(update={"seq": pointer.seq + 1, "review": rule}))
    stack.start("worker", READY_LINE)
    run = uuid.uuid4().hex[:8]
    ids = [f"{run}-{i}" for i in range(len(TEXTS))]
    explain = set(ids[::3])
    stack.produce(*[json.dumps({"id": pid, "text": text, "region": "global", "models": ["intent"],
                                **({"explain": True} if pid in explain else {})}).encode()
                    for pid, text in zip(ids, TEXTS)])
    predictions = stack.read(settings.topic_out, len(ids))
    assert sorted(p["id"] for p in predictions) == sorted(ids), stack.tails()
    stack.wait_worker_caught_up()  # a batch is committed once its review items are on the broker too

    by_id = {p["id"]: p for p in predictions}
    want = {pid: expected_reasons(p) for pid, p in by_id.items() if expected_reasons(p)}
    assert want, "the rule picks none of these phrases: the test would prove nothing"
    items = [ReviewItem.model_validate(v) for v in stack.read(settings.topic_review, len(want))]
    assert {it.id: it.reasons for it in items} == want
    for it in items:
        p = by_id[it.id]
        assert (it.label, it.model_version, it.region, it.model) == (p["label"], p["model_version"], "global", "intent")
        assert it.item_id == item_id("global", "intent", p["model_version"], it.id)
        assert it.random_slice == ("random" in it.reasons)
        assert it.sampling_weight == (pytest.approx(1 / RULE.random_rate) if it.random_slice else None)
        assert abs(it.margin - (p["top_k"][0][1] - p["top_k"][1][1])) < 1e-5
        assert it.evidence is not None  # computed for every routed answer

    for pid, p in by_id.items():
        assert ("evidence" in p) == (pid in explain), pid
    assert all(isinstance(by_id[pid]["evidence"], dict) and by_id[pid]["evidence"] for pid in explain)
