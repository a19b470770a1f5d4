"""The expert loop end to end on the real broker and database (issue 18, part 5).

A head is trained on two CLINC150 domains with four intents left out (``loop_data``). A worker
serves it and routes doubtful answers and a random slice to ``phrases.review``; the review page
(``phrasestream review``, a real process) shows them to a scripted reviewer, who answers over
HTTP with the true labels; the answers land on ``phrases.labeled``. ``retrain --no-promote``
builds a candidate from them; ``promote --shadow`` runs it beside the live head; the reviewer
answers the shadow's phrases too; ``shadow-report`` must find the candidate better on them;
``promote`` makes it live; weighted F1 on a held-out slice (never reviewed, never trained on,
sent through the stream before and after) must go up.

Every figure is printed on one line, ``LOOP_FIGURES {json}`` (``docs/expert-loop.md`` quotes a
run). Every wait is on a signal; ``bounds.py`` only turns a hang into a failure.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from bounds import BOUND_S, POLL_S
from loop_data import LEFT_OUT, LoopData, loop_data
from loop_review import Reviewer
from loop_stream import (
    cli,
    days_ago,
    last_json,
    predictions_of,
    produce_labeled,
    read_topic,
    send,
    spread,
    weighted_f1,
)
from psycopg2 import sql

from models.registry.pointers import read_all
from ops.daemons import READY_LINE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGION, MODEL = "acme", "intent"
TRAIN_CONFIG = {"head": {"max_epochs": 8, "patience": 3, "batch_size": 64, "ensemble": {"hidden": 0}},
                "selection": {"candidates": [{}], "refit": False}, "oos": {"threshold": "off"}}
"""Small and quick: a linear head, one selection candidate, no refit, no oos threshold."""
MARGIN, RANDOM_RATE = 0.5, 0.15
"""The review rule `review-rule` sets: doubtful below a margin of 0.5, and a 15% random slice."""
ANSWER_EVERY = 10
"""The reviewer skips every 10th item of the first round (the "skip" outcome) and answers the rest."""
REVIEWER, PASSWORD = "ana", secrets.token_urlsafe(12)
DEFINITIONS = {"order_checks": "Order new checks or a checkbook.",
               "routing": "Ask for the bank's routing number.",
               "apr": "Ask for the annual percentage rate of a card.",
               "redeem_rewards": "Turn card reward points into cash, miles or goods."}
"""The guideline of the left-out intents, written before the review (the others get their names)."""


@pytest.fixture
def loop(bare_stack, base_settings, link_models, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A stack with an empty registry and its own models folder; the review page (port 0: any free
    one) has one reviewer, and every item needs one answer."""
    models = link_models(base_settings.models_root.resolve(), tmp_path / "models")
    bare_stack.env.update({"PHRASESTREAM_MODELS_DIR": str(models), "PHRASESTREAM_REVIEW_PORT": "0",
                           "PHRASESTREAM_REVIEW_USERS": f"{REVIEWER}:{PASSWORD}",
                           "PHRASESTREAM_REVIEW_DOUBLE_SHARE": "0"})
    bare_stack.settings = bare_stack.settings.model_copy(update={"models_dir": models})
    return bare_stack


def start_review_page(st: Any) -> Reviewer:
    """Start `phrasestream review`; return the scripted reviewer of the address it printed."""
    st.start("review")
    log = st.wait_log("review", '"event": "review_ready"')  # printed after "review page listening on"
    ready = next(json.loads(line) for line in log.splitlines() if '"event": "review_ready"' in line)
    return Reviewer(ready["url"], REVIEWER, PASSWORD)


def define_labels(settings: Any, labels: tuple[str, ...]) -> None:
    """Write the head's label guideline (label_definitions.json): a label it never learnt becomes one
    the review page offers, which is how experts bring in a new intent."""
    path = Path(settings.models_root) / "heads" / REGION / MODEL / "label_definitions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({label: DEFINITIONS.get(label, label.replace("_", " ")) for label in labels}),
                    encoding="utf-8")


def stored_shadow_rows(settings: Any, version: str) -> int:
    """How many rows of ``version`` the sink stored in ``shadow_inferences``."""
    query = sql.SQL("SELECT count(*) FROM {}.shadow_inferences WHERE model_version = %s").format(
        sql.Identifier(settings.pg_schema))
    with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
        cur.execute(query, (version,))
        return int(cur.fetchone()[0])


def wait_shadow_rows(settings: Any, version: str, count: int) -> int:
    """Wait until the sink stored ``count`` shadow rows of ``version``; return how many it stored."""
    start = time.monotonic()
    while (n := stored_shadow_rows(settings, version)) < count and time.monotonic() - start < BOUND_S:
        time.sleep(POLL_S)
    return n


def review_items(settings: Any, ids: set[str]) -> list[dict]:
    """The review items of the phrases of ``ids`` on the review topic (read to its end)."""
    return [m for m in read_topic(settings, settings.topic_review)
            if m["region"] == REGION and m["model"] == MODEL and m["id"] in ids]


def reviewed_answers(settings: Any, count: int) -> list[dict]:
    """Wait until ``phrases.labeled`` holds ``count`` answers from the review page; return them."""
    def enough(found: list[dict]) -> bool:
        return sum(m.get("source") == "review" for m in found) >= count

    read_topic(settings, settings.topic_labeled, until=enough)
    answers = [m for m in read_topic(settings, settings.topic_labeled) if m.get("source") == "review"]
    assert len(answers) >= count, f"{len(answers)} of {count} answers reached {settings.topic_labeled}"
    return answers


def test_the_expert_loop_review_retrain_shadow_promote_raises_held_out_f1(loop) -> None:  # type: ignore[no-untyped-def]
    figures: dict[str, Any] = {}
    try:
        run_loop(loop, figures)
    except BaseException:
        print("LOOP_FIGURES_PARTIAL " + json.dumps(figures, sort_keys=True), flush=True)  # how far it got
        raise
    print("LOOP_FIGURES " + json.dumps(figures, sort_keys=True), flush=True)


def run_loop(st: Any, figures: dict[str, Any]) -> None:
    """The loop's eight steps (the module doc); every figure goes into ``figures`` as it is measured."""
    env, settings = st.env, st.settings
    data: LoopData = loop_data()
    truth = data.truth
    figures.update(intents=len(data.intents), left_out=list(LEFT_OUT), base_examples=len(data.base))
    config = Path(st.logs) / "train.json"
    config.write_text(json.dumps(TRAIN_CONFIG), encoding="utf-8")

    # 1. the live head: trained by `retrain` on the base examples replayed from phrases.labeled
    produce_labeled(settings, data.base, REGION, MODEL, spread(len(data.base), days_ago(20), days_ago(1)))
    first = last_json(cli(env, "retrain", "--region", REGION, "--model", MODEL, "--since", "30d",
                          "--config", str(config), "--json", "--quiet"))
    assert first["decision"] == "promoted", first
    live_version = first["candidate"]["version"]

    # 2. the review rule, then a worker and a sink; traffic with the left-out intents, and the held-out slice
    rule = last_json(cli(env, "review-rule", "--region", REGION, "--model", MODEL, "--margin", str(MARGIN),
                         "--random-rate", str(RANDOM_RATE), "--json"))
    assert rule_value(rule, "margin") == MARGIN and rule_value(rule, "random_rate") == RANDOM_RATE, rule
    st.start("worker", READY_LINE)
    st.start("sink", "sink started")
    traffic_ids = send(settings, REGION, data.traffic)
    before_ids = send(settings, REGION, data.held_out, prefix="before-")
    answers = predictions_of(settings, settings.topic_out, traffic_ids + before_ids, live_version)
    st.wait_worker_caught_up()  # its review items went out with the batch's predictions, before its commit
    items = review_items(settings, set(traffic_ids))
    assert items, f"no answer was routed to {settings.topic_review}\n{st.tails()}"
    assert all(m["reasons"] and m["model_version"] == live_version for m in items)
    reasons = Counter(r for m in items for r in m["reasons"])
    assert reasons["margin"] > 0 and reasons["random"] > 0, reasons
    assert all(m["sampling_weight"] == pytest.approx(1 / RANDOM_RATE) for m in items if m["random_slice"])
    assert all(m["margin"] < MARGIN for m in items if "margin" in m["reasons"])
    assert all(m.get("evidence") for m in items), "every routed item carries the evidence for the reviewer"
    n_left = sum(truth[i] in LEFT_OUT for i in traffic_ids)
    doubtful = [m for m in items if set(m["reasons"]) - {"random"}]
    left_doubtful = sum(truth[m["id"]] in LEFT_OUT for m in doubtful)
    rate_left, rate_known = left_doubtful / n_left, (len(doubtful) - left_doubtful) / (len(traffic_ids) - n_left)
    # the left-out intents are over-represented among the doubtful answers: routed at over twice the rate
    assert left_doubtful / len(doubtful) > n_left / len(traffic_ids) and rate_left > 2 * rate_known, \
        (left_doubtful, len(doubtful), n_left, len(traffic_ids))
    live_accuracy = sum(answers[i]["label"] == truth[i] for i in traffic_ids) / len(traffic_ids)
    f1_before = weighted_f1({i: truth[i] for i in (p for p, _, _ in data.held_out)}, answers,
                            key=lambda i: f"before-{i}")
    figures.update(traffic=len(traffic_ids), traffic_left_out=n_left, routed=len(items),
                   routed_doubtful=len(doubtful), routed_doubtful_left_out=left_doubtful, reasons=dict(reasons),
                   doubtful_rate_left_out=round(rate_left, 3), doubtful_rate_known=round(rate_known, 3),
                   routed_random_slice=sum(m["random_slice"] for m in items),
                   live_accuracy_on_traffic=round(live_accuracy, 4), live_version=live_version)

    # 3. the review page; the scripted reviewer answers most items of the traffic over HTTP
    define_labels(settings, data.intents)
    reviewer = start_review_page(st)
    queue = reviewer.wait_queue(REGION, MODEL, {m["item_id"] for m in items})
    assert {q["phrase_id"] for q in queue.values()} == {m["id"] for m in items}
    first_item = min(queue)
    status, message = reviewer.refused(first_item, {"outcome": "label", "label": "no_such_intent"})
    assert status == 400 and "unknown label" in message
    labelled: dict[str, dict] = {}
    skipped = 0
    for n, item in enumerate(sorted(items, key=lambda m: m["item_id"])):
        if n % ANSWER_EVERY == ANSWER_EVERY - 1:
            reviewer.skip(item["item_id"])
            skipped += 1
        else:
            reviewer.answer(item["item_id"], truth[item["id"]])
            labelled[item["item_id"]] = item
    answered = len(labelled)
    round1 = reviewed_answers(settings, answered)
    assert len(round1) == answered, "one example per label answer; skips and refusals produce nothing"
    for a in round1:
        item = labelled[a["item_id"]]
        assert (a["text"], a["label"]) == (item["clean_text"], truth[item["id"]]), a
        assert a["reviewer"] == REVIEWER and a["head_version"] == live_version, a
        assert a["reason"] == ",".join(item["reasons"]) and a.get("sampling_weight") == item.get("sampling_weight"), a
    panel = next(h for h in reviewer.progress()["heads"] if (h["region"], h["model"]) == (REGION, MODEL))
    assert panel["outcomes"] == {"label": answered, "skip": skipped}, panel
    figures.update(answered_round1=answered, skipped_round1=skipped,
                   answered_left_out_round1=sum(a["label"] in LEFT_OUT for a in round1),
                   review_panel={"model_agreement": panel["model_agreement"], "by_reason": panel["by_reason"],
                                 "live_accuracy_estimate": panel["live_accuracy"]})

    # 4. more labelled examples arrive (the newest: the test slice); a candidate, not promoted
    produce_labeled(settings, data.tail, REGION, MODEL, [datetime.now(UTC)] * len(data.tail))
    built = last_json(cli(env, "retrain", "--region", REGION, "--model", MODEL, "--since", "30d", "--no-promote",
                          "--test-fraction", "0.1", "--config", str(config), "--json", "--quiet"))
    candidate = built["candidate"]["version"]
    assert built["decision"] == "not_promoted" and candidate != live_version, built
    assert built["n_read"] == len(data.base) + answered + len(data.tail), built
    assert built["n_test"] <= len(data.tail), "every reviewed answer is in the candidate's training part"
    assert datetime.fromisoformat(built["test_slice"]["start"]) > max(datetime.fromisoformat(a["ts"]) for a in round1)
    assert read_all(settings)[(REGION, MODEL)].version == live_version
    figures.update(candidate=candidate, candidate_n_train=built["n_train"], candidate_n_test=built["n_test"],
                   gate_passed=built["gate_passed"],
                   gate_f1={"candidate": built["candidate"]["weighted_f1"],
                            "live": (built["live"] or {}).get("weighted_f1")})

    # 5. the candidate in shadow beside the live head; more traffic; the reviewer answers its routed items
    res = cli(env, "promote", "--shadow", "--region", REGION, "--model", MODEL, "--version", candidate)
    assert res.returncode == 0, res.stderr
    st.wait_log("worker", f"shadow head {REGION}/{MODEL}:{candidate} runs beside {live_version}")
    shadow_ids = send(settings, REGION, data.shadow_traffic)
    shadowed = predictions_of(settings, settings.topic_shadow, shadow_ids, candidate)
    assert all(m["live_version"] == live_version for m in shadowed.values())
    assert wait_shadow_rows(settings, candidate, len(shadow_ids)) >= len(shadow_ids), "the sink stored them"
    st.wait_worker_caught_up()
    items2 = review_items(settings, set(shadow_ids))
    reasons2 = Counter(r for m in items2 for r in m["reasons"])
    assert reasons2["shadow"] > 0, reasons2
    assert all(m["shadow_version"] == candidate and m["shadow_label"] != m["label"]
               for m in items2 if "shadow" in m["reasons"])
    reviewer.wait_queue(REGION, MODEL, {m["item_id"] for m in items2})
    for item in items2:
        reviewer.answer(item["item_id"], truth[item["id"]])
    assert len(reviewed_answers(settings, answered + len(items2))) == answered + len(items2)
    figures.update(shadow_traffic=len(shadow_ids), routed_round2=len(items2), reasons_round2=dict(reasons2),
                   answered_round2=len(items2),
                   shadow_disagreements=sum(m["label"] != m["live_label"] for m in shadowed.values()))

    # 6. the shadow report: the candidate beats the live head on the reviewed phrases
    report = last_json(cli(env, "shadow-report", "--region", REGION, "--model", MODEL, "--since", "1h", "--json"))
    assert report["shadow_version"] == candidate and report["live_versions"] == [live_version], report
    figures["shadow_report"] = report_figures(report)
    reviewed = figures["shadow_report"]["all"]
    live_score, shadow_score = reviewed["live"], reviewed["shadow"]
    assert reviewed["n"] > 0 and shadow_score["accuracy"] > live_score["accuracy"], report
    assert shadow_score["weighted_f1"] > live_score["weighted_f1"], report

    # 7. promote: the candidate is live, the shadow ends
    res = cli(env, "promote", "--region", REGION, "--model", MODEL, "--version", candidate)
    assert res.returncode == 0, res.stderr
    st.wait_log("worker", f"now serving head {REGION}/{MODEL}:{candidate}")
    st.wait_log("worker", f"shadow head {REGION}/{MODEL}:{candidate} ended")
    pointer = read_all(settings)[(REGION, MODEL)]
    assert pointer.version == candidate and pointer.shadow is None

    # 8. the held-out slice again, through the stream: weighted F1 went up
    after_ids = send(settings, REGION, data.held_out, prefix="after-")
    after = predictions_of(settings, settings.topic_out, after_ids, candidate)
    f1_after = weighted_f1({i: truth[i] for i in (p for p, _, _ in data.held_out)}, after, key=lambda i: f"after-{i}")
    figures.update(held_out=len(data.held_out), held_out_weighted_f1_before=f1_before,
                   held_out_weighted_f1_after=f1_after)
    assert f1_after > f1_before, figures


def rule_value(rule: dict, name: str) -> Any:
    """A field of `review-rule --json`'s rule (at the top or under "rule")."""
    return rule.get("rule", rule).get(name)


def report_figures(report: dict) -> dict:
    """The shadow report's figures the loop quotes: agreement, and both heads' scores on the labelled phrases."""
    lab = report["labelled"]
    return {"paired": report["agreement"]["paired"], "agreement": report["agreement"]["rate"],
            "labelled_matched": lab["matched"],
            **{part: {"n": lab[part]["n"], "live": lab[part]["live"], "shadow": lab[part]["shadow"]}
               for part in ("all", "doubtful", "random_slice")}}
