"""Review routing: the rule (margin, oos, shadow disagreement), the random slice (deterministic,
weighted), the hourly budgets and what they drop, and the review items a served batch carries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from fakes import ReadoutEmbedder

from models.heads import HeadPrediction, HeadRef
from schemas.messages import CleanedPhrase, RegistryPointer
from schemas.review import ReviewItem, ReviewRule, item_id
from streams.metrics import WorkerMetrics
from streams.pipeline import serve_batch
from streams.routing import OFF_RULE, Budgets, Expert, ExpertOut, in_random_slice, margin_of, pick, rule_for

HOUR = 3600.0
RULE = ReviewRule(margin=0.2, random_rate=0.0)


def answer(label: str, best: float, second: float) -> HeadPrediction:
    return HeadPrediction(label, best, [(label, best), ("other" if label != "other" else "x", second)])


@dataclass
class TextHead:
    """A head whose answer is read off the text: ``doubt`` gives a margin of 0.05, ``oos`` the oos
    label; anything else a clear answer. Records the top_k it was asked for."""

    ref: HeadRef = field(default_factory=lambda: HeadRef("global", "intent", "v1"))
    asked: list[int] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def predict(self, vectors: np.ndarray, top_k: int, texts: Sequence[str] | None = None) -> list[HeadPrediction]:
        self.asked.append(top_k)
        out = []
        for text in texts or []:
            if "doubt" in text:
                out.append(HeadPrediction("balance", 0.5, [("balance", 0.5), ("transfer", 0.45)][:top_k]))
            elif "oos" in text:
                out.append(HeadPrediction("oos", 0.7, [("oos", 0.7), ("balance", 0.2)][:top_k]))
            else:
                out.append(HeadPrediction("balance", 0.9, [("balance", 0.9), ("transfer", 0.05)][:top_k]))
        return out


@dataclass
class Source:
    rules: dict
    shadows: dict = field(default_factory=dict)


def serve(texts: list[str], rule: ReviewRule, head: TextHead | None = None, top_k: int = 1,
          expert: Expert | None = None):  # type: ignore[no-untyped-def]
    head = head or TextHead()
    expert = expert or Expert(Source({("global", "intent"): rule}),
                              evidence=lambda h, f, t: [{"n": i} for i in range(len(t))])
    now = datetime.now(UTC)
    values = [CleanedPhrase(f"p{i}", "global", ["intent"], text, now).to_bytes() for i, text in enumerate(texts)]
    return asyncio.run(serve_batch(values, ReadoutEmbedder(), None, {"global": {"intent": head}}, top_k,
                                   expert=expert))


def test_the_margin_is_between_the_two_best_probabilities() -> None:
    assert abs(margin_of([("a", 0.5), ("b", 0.45)]) - 0.05) < 1e-9
    assert margin_of([("a", 1.0)]) == 1.0


def test_small_margins_and_oos_answers_are_routed_with_their_reasons() -> None:
    out = ExpertOut()
    answers = [answer("balance", 0.5, 0.45), answer("oos", 0.8, 0.1), answer("balance", 0.9, 0.05)]
    picks = pick(RULE, "global", "intent", ["a", "b", "c"], answers, {}, Budgets(), out, now=0.0)
    assert [(p.row, p.reasons, p.random_slice) for p in picks] == [(0, ["margin"], False), (1, ["oos"], False)]
    assert out.routed == {("global", "intent", "margin"): 1, ("global", "intent", "oos"): 1}


def test_disagreement_with_the_shadow_is_doubt_and_can_be_turned_off() -> None:
    answers = [answer("balance", 0.9, 0.05), answer("balance", 0.9, 0.05)]
    picks = pick(RULE, "global", "intent", ["a", "b"], answers, {0: "transfer", 1: "balance"}, Budgets(), ExpertOut())
    assert [(p.row, p.reasons) for p in picks] == [(0, ["shadow"])]
    off = RULE.model_copy(update={"shadow_disagreement": False})
    assert pick(off, "global", "intent", ["a"], answers[:1], {0: "transfer"}, Budgets(), ExpertOut()) == []


def test_the_random_slice_is_a_deterministic_share_of_every_answer() -> None:
    ids = [f"phrase-{i}" for i in range(20_000)]
    chosen = [i for i in ids if in_random_slice(i, "global", "intent", 0.1)]
    assert chosen == [i for i in ids if in_random_slice(i, "global", "intent", 0.1)]  # same on every run and worker
    assert abs(len(chosen) - 2000) < 5 * (20_000 * 0.1 * 0.9) ** 0.5  # the share it names (5 sigma)
    assert chosen != [i for i in ids if in_random_slice(i, "global", "domain", 0.1)]  # each head draws its own
    assert not any(in_random_slice(i, "global", "intent", 0.0) for i in ids[:1000])


def test_a_random_slice_item_carries_its_sampling_weight_and_a_stable_item_id() -> None:
    rule = ReviewRule(margin=0.0, oos=False, random_rate=0.5)
    served = serve([f"clear phrase {i}" for i in range(40)], rule)
    items = [ReviewItem.model_validate_json(v) for _, v in served.extra.reviews]
    assert items and all(it.random_slice and it.reasons == ["random"] for it in items)
    assert all(it.sampling_weight == 2.0 and it.random_rate == 0.5 for it in items)
    assert {it.id for it in items} == {f"p{i}" for i in range(40) if in_random_slice(f"p{i}", "global", "intent", 0.5)}
    assert all(it.item_id == item_id("global", "intent", "v1", it.id) for it in items)
    again = serve([f"clear phrase {i}" for i in range(40)], rule)  # a replay routes the same items
    assert [k for k, _ in again.extra.reviews] == [b"global/intent"] * len(items)
    assert {ReviewItem.model_validate_json(v).item_id for _, v in again.extra.reviews} == {it.item_id for it in items}


def test_the_hourly_budget_drops_and_counts_what_is_over_it() -> None:
    rule = ReviewRule(margin=0.2, random_rate=0.0, budget_per_hour=3)
    budgets, out = Budgets(), ExpertOut()
    answers = [answer("balance", 0.5, 0.45)] * 10
    ids = [str(i) for i in range(10)]
    assert len(pick(rule, "global", "intent", ids, answers, {}, budgets, out, now=10 * HOUR)) == 3
    assert out.dropped == {("global", "intent", "doubtful"): 7}
    assert len(pick(rule, "global", "intent", ids, answers, {}, budgets, out, now=10 * HOUR + 60)) == 0
    assert len(pick(rule, "global", "intent", ids, answers, {}, budgets, out, now=11 * HOUR)) == 3  # a new hour
    other = pick(rule, "global", "domain", ids, answers, {}, budgets, ExpertOut(), now=11 * HOUR)
    assert len(other) == 3  # each head has its own budget


def test_a_random_item_over_its_budget_still_goes_as_a_doubtful_one() -> None:
    rule = ReviewRule(margin=0.2, random_rate=1.0, random_budget_per_hour=1, budget_per_hour=10)
    out = ExpertOut()
    picks = pick(rule, "global", "intent", ["a", "b", "c"],
                 [answer("balance", 0.5, 0.45), answer("balance", 0.5, 0.45), answer("balance", 0.9, 0.0)],
                 {}, Budgets(), out, now=0.0)
    assert [(p.row, p.reasons, p.random_slice) for p in picks] == [(0, ["margin", "random"], True),
                                                                    (1, ["margin"], False)]
    assert out.dropped == {("global", "intent", "random"): 2}


def test_a_margin_rule_asks_the_head_for_two_labels_and_publishes_top_k() -> None:
    head = TextHead()
    served = serve(["doubt a", "clear b", "oos c"], RULE, head, top_k=1)
    assert head.asked == [2]
    assert all(len(p.top_k) == 1 for p in served.predictions)
    items = [ReviewItem.model_validate_json(v) for _, v in served.extra.reviews]
    assert [(it.id, it.reasons, it.label) for it in items] == [("p0", ["margin"], "balance"), ("p2", ["oos"], "oos")]
    assert items[0].margin == 0.05 and items[0].top_k == [("balance", 0.5), ("transfer", 0.45)]
    assert all(it.evidence is not None for it in items)  # evidence is computed for routed answers
    assert all(p.evidence is None for p in served.predictions)  # but not put on predictions that did not ask


def test_a_rule_that_routes_nothing_costs_no_routing_and_no_second_label() -> None:
    head = TextHead()
    served = serve(["doubt a", "oos b"], OFF_RULE, head, top_k=1)
    assert head.asked == [1] and served.extra.reviews == [] and not served.extra.routed


def test_the_rule_in_force_is_the_pointers_then_the_heads_then_the_default() -> None:
    pointer = RegistryPointer(region="global", model="intent", version="v1", action="promote", seq=1,
                              bundle_sha256="0" * 64, bundle_bytes=1)
    trained = TextHead(metadata={"config": {"review": {"margin": 0.3, "random_rate": 0.1}}})
    assert rule_for(pointer, trained) == ReviewRule(margin=0.3, random_rate=0.1)
    assert rule_for(pointer.model_copy(update={"review": OFF_RULE}), trained) == OFF_RULE
    assert rule_for(pointer, TextHead()) == ReviewRule()


def test_routed_and_dropped_answers_are_counted_in_the_metrics() -> None:
    rule = ReviewRule(margin=0.2, random_rate=0.0, budget_per_hour=1)
    served = serve(["doubt a", "doubt b", "oos c"], rule)
    metrics = WorkerMetrics(process=False)
    metrics.batch_served(3, served)
    routed = metrics.registry.get_sample_value("phrasestream_review_routed_total",
                                               {"region": "global", "model": "intent", "reason": "margin"})
    dropped = metrics.registry.get_sample_value("phrasestream_review_dropped_total",
                                                {"region": "global", "model": "intent", "kind": "doubtful"})
    assert (routed, dropped) == (1.0, 2.0)
