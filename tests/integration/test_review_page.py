"""The review page over real HTTP, against the real broker and PostgreSQL (`phrasestream review` as a process).

One server per module (its own review topic, labelled topic and schema); each test produces
its own items and answers as its own reviewers, so tests do not see each other's work. A test
waits for signals: the server's ready line, an item in the queue, a topic read to its end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from bounds import BOUND_S, POLL_S
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg2 import sql

from models.heads import HeadRef
from models.registry.lifecycle import head_folder
from models.registry.pointers import read_all
from ops.kafka.clients import client_config
from ops.kafka.offsets import read_watermarks
from ops.kafka.topics import create_topic
from retrain.replay.select import KafkaRecord, deduplicate, select
from retrain.replay.windows import since_window
from schemas.messages import DeadLetter, ErrorKind
from schemas.review import ReviewItem, item_id
from streams.review.store import is_double

USERS = {name: f"pw-{name}-{uuid.uuid4().hex[:6]}" for name in ("ann", "ben", "cat", "dan", "eve", "fay", "gus")}


class Page:
    """The running review server of the module: its URL, its settings, and an HTTP client per reviewer."""

    def __init__(self, stack: Any, url: str, head: HeadRef, labels: list[str]) -> None:
        self.stack, self.url, self.head, self.labels = stack, url, head, labels
        self.settings = stack.settings

    def call(self, method: str, path: str, user: str | None = "ann", form: dict[str, str] | None = None,
             password: str | None = None, headers: dict[str, str] | None = None, json_: bool = True) -> tuple[int, Any]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - http://127.0.0.1
        if user is not None:
            token = base64.b64encode(f"{user}:{password or USERS[user]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        if json_:
            req.add_header("Accept", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - a local test server
                body = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as err:
            body, status = err.read().decode(), err.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def browser_post(self, path: str, user: str, form: dict[str, str]) -> tuple[int, str]:
        """POST a form as a browser does (no JSON asked, redirects not followed); return the status and Location."""
        import http.client

        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
        try:
            conn.request("POST", path, urllib.parse.urlencode(form), {
                "Authorization": f"Basic {token}", "Content-Type": "application/x-www-form-urlencoded",
                "Origin": self.url})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Location") or ""
        finally:
            conn.close()

    def csrf(self, user: str) -> str:
        status, body = self.call("GET", "/api/csrf", user)
        assert status == 200 and body["reviewer"] == user
        return str(body["csrf"])

    def answer(self, user: str, iid: str, **form: str) -> tuple[int, Any]:
        return self.call("POST", f"/items/{iid}/answer", user, {"csrf": self.csrf(user), **form})

    def items(self, user: str, **query: str) -> list[dict]:
        status, body = self.call("GET", "/api/items?" + urllib.parse.urlencode({"limit": "500", **query}), user)
        assert status == 200, body
        return list(body)

    def wait_items(self, user: str, ids: set[str], **query: str) -> list[dict]:
        start = time.monotonic()
        found = self.items(user, **query)
        while not ids <= {i["item_id"] for i in found}:
            if time.monotonic() - start > BOUND_S:
                pytest.fail(f"items {ids} did not reach the queue in {BOUND_S:.0f} s:\n{self.stack.tails()}")
            time.sleep(POLL_S)
            found = self.items(user, **query)
        return found

    def produce_items(self, *items: ReviewItem | bytes) -> None:
        producer = Producer(client_config(self.settings))
        for it in items:
            value = it if isinstance(it, bytes) else it.to_bytes()
            key = None if isinstance(it, bytes) else f"{it.region}/{it.model}".encode()
            producer.produce(self.settings.topic_review, key=key, value=value)
        assert producer.flush(BOUND_S) == 0

    def item(self, text: str, label: str | None = None, reasons: tuple[str, ...] = ("margin",), region: str = "",
             model: str = "", version: str = "", **extra: Any) -> ReviewItem:
        region, model, version = region or self.head.region, model or self.head.model, version or self.head.version
        pid = f"p-{uuid.uuid4().hex}"
        label = label or self.labels[0]
        other = next(lab for lab in self.labels if lab != label)
        return ReviewItem(item_id=item_id(region, model, version, pid), id=pid, region=region, model=model,
                          model_version=version, clean_text=text, label=label, probability=0.41,
                          top_k=[(label, 0.41), (other, 0.33)], margin=0.08, reasons=list(reasons),
                          random_rate=0.02, **extra)

    def labeled(self) -> list[dict]:
        """Every message on the labelled topic, read to its end (watermarks asked now)."""
        consumer = Consumer(client_config(self.settings, {"group.id": f"r-{uuid.uuid4().hex}",
                                                          "enable.auto.commit": False}))
        try:
            ends = {p: high for p, (_low, high) in read_watermarks(consumer, self.settings.topic_labeled).items()}
            consumer.assign([TopicPartition(self.settings.topic_labeled, p, 0) for p in ends])
            found: list[dict] = []
            left = {p for p, high in ends.items() if high > 0}
            start = time.monotonic()
            while left and time.monotonic() - start < BOUND_S:
                msg = consumer.poll(POLL_S)
                if msg is None or msg.error() is not None:
                    continue
                found.append({**json.loads(msg.value()), "_key": msg.key(), "_partition": msg.partition(),
                              "_offset": msg.offset(), "_ts": msg.timestamp()[1]})
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
            assert not left, f"the labelled topic was not read to its end: {left}"
            return found
        finally:
            consumer.close()

    def answers(self, iid: str) -> list[tuple]:
        with psycopg2.connect(self.settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT reviewer, outcome, label FROM {}.review_answers WHERE item_id = %s "
                                "ORDER BY reviewer").format(sql.Identifier(self.settings.pg_schema)), (iid,))
            return cur.fetchall()


@pytest.fixture(scope="module")
def review(module_stack: Any) -> Iterator[Page]:
    suffix = uuid.uuid4().hex[:8]
    topic = f"{module_stack.settings.topic_in.removesuffix('.phrases.in')}.phrases.review-{suffix}"
    module_stack.settings = module_stack.settings.model_copy(update={"topic_review": topic, "review_double_share": 0.5})
    create_topic(module_stack.settings, topic, 2)
    pointer = read_all(module_stack.settings)[("eu", "intent")]
    head = HeadRef("eu", "intent", pointer.version)
    labels = json.loads((head_folder(module_stack.settings, head) / "labels.json").read_text())
    module_stack.start("review", "review_ready", label="review", PHRASESTREAM_TOPIC_REVIEW=topic,
                       PHRASESTREAM_REVIEW_DOUBLE_SHARE="0.5", PHRASESTREAM_REVIEW_PORT="0",
                       PHRASESTREAM_REVIEW_USERS=",".join(f"{k}:{v}" for k, v in USERS.items()))
    text = (module_stack.logs / "review.log").read_text()
    url = json.loads(next(line for line in text.splitlines() if "review_ready" in line))["url"].rstrip("/")
    yield Page(module_stack, url, head, list(labels))


def test_items_on_the_review_topic_reach_the_queue_once_and_a_bad_message_is_counted(review: Page) -> None:
    one, two = review.item("where is my card"), review.item("i lost my card")
    review.produce_items(one, b"not json", one, two)
    found = review.wait_items("ann", {one.item_id, two.item_id})
    assert [i["item_id"] for i in found].count(one.item_id) == 1
    status, progress = review.call("GET", "/api/progress", "ann")
    assert status == 200 and progress["ingest"]["invalid"] >= 1
    letters = [DeadLetter.model_validate(d) for d in review.stack.read(review.settings.topic_dlq, 1)]
    assert [(d.error_kind, d.original(), d.source_topic) for d in letters] == [
        (ErrorKind.WRONG_TYPE, b"not json", review.settings.topic_review)]
    assert letters[0].reason.startswith("not a review item")


def test_an_answer_produces_one_labeled_phrase_with_its_provenance_and_a_changed_one_wins(review: Page) -> None:
    it = review.item("can you freeze my account", reasons=("margin", "random"), random_slice=True,
                     sampling_weight=50.0)
    review.produce_items(it)
    review.wait_items("ben", {it.item_id})
    first, second = review.labels[1], review.labels[2]
    status, body = review.answer("ben", it.item_id, outcome="label", label=first)
    assert status == 200 and body["produced"], body
    status, body = review.answer("ben", it.item_id, outcome="label", label=second)
    assert status == 200, body
    mine = [m for m in review.labeled() if m.get("item_id") == it.item_id]
    assert [m["label"] for m in mine] == [first, second]
    m = mine[0]
    assert m["_key"] == it.item_id.encode() and m["source"] == "review" and m["reviewer"] == "ben"
    assert (m["reason"], m["sampling_weight"], m["head_version"], m["label_set_version"]) == (
        "margin,random", 50.0, review.head.version, 0)
    assert m["text"] == it.clean_text and m["region"] == "eu" and m["model"] == "intent"
    assert review.answers(it.item_id) == [("ben", "label", second)]
    records = [KafkaRecord(x["_partition"], x["_offset"], x["_ts"], x["_key"],
                           json.dumps({k: v for k, v in x.items() if not k.startswith("_")}).encode()) for x in mine]
    kept = deduplicate(select(records, "eu", "intent", since_window("1d", _now())).examples).examples
    assert [(e.clean_text, e.label) for e in kept] == [(it.clean_text, second)]


def _now() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(minutes=1)


def test_every_bad_input_is_a_4xx_and_nothing_is_produced_or_stored(review: Page) -> None:
    it = review.item("please block my card")
    taken = next(t for t in (review.item("block the card now") for _ in range(100)) if not is_double(t.item_id, 0.5))
    review.produce_items(it, taken)
    review.wait_items("cat", {it.item_id, taken.item_id})
    assert review.answer("dan", taken.item_id, outcome="label", label=taken.label)[0] == 200
    token = review.csrf("cat")
    good = {"csrf": token, "outcome": "label", "label": it.label}
    path = f"/items/{it.item_id}/answer"
    cases = {
        "wrong password": (review.call("POST", path, "cat", good, password="nope"), 401),
        "no user": (review.call("POST", path, None, good), 401),
        "no csrf": (review.call("POST", path, "cat", {"outcome": "label", "label": it.label}), 403),
        "wrong csrf": (review.call("POST", path, "cat", {**good, "csrf": review.csrf("dan")}), 403),
        "other origin": (review.call("POST", path, "cat", good, headers={"Origin": "http://evil.example"}), 403),
        "unknown label": (review.call("POST", path, "cat", {**good, "label": "no_such_label"}), 400),
        "empty label": (review.call("POST", path, "cat", {**good, "label": ""}), 400),
        "empty answer": (review.call("POST", path, "cat", {"csrf": token}), 400),
        "unknown outcome": (review.call("POST", path, "cat", {**good, "outcome": "maybe"}), 400),
        "label with skip": (review.call("POST", path, "cat", {**good, "outcome": "skip"}), 400),
        "stale label set": (review.call("POST", path, "cat", {**good, "label_set": "7"}), 409),
        "forged item": (review.call("POST", f"/items/{'f' * 32}/answer", "cat", good), 404),
        "stale item": (review.call("POST", f"/items/{taken.item_id}/answer", "cat", good), 409),
        "bad bulk time": (review.call("POST", "/bulk-confirm", "cat", {"csrf": token, "seen_until": "soon"}), 400),
    }
    for name, ((status, body), expected) in cases.items():
        assert status == expected, (name, status, body)
        assert isinstance(body, dict) and body.get("error"), (name, body)
    on_topic = {m.get("item_id") for m in review.labeled()}
    assert it.item_id not in on_topic and ("f" * 32) not in on_topic
    assert review.answers(it.item_id) == [] and review.answers(taken.item_id) == [("dan", "label", taken.label)]


def test_bulk_confirm_confirms_the_suggestion_of_every_item_of_the_filter(review: Page) -> None:
    # a head with no files anywhere: its labels are the ones the items' top-k name
    items = [review.item(f"bulk phrase {n}", label="alpha", region="bulk", model=f"m{uuid.uuid4().hex[:6]}",
                         version="v1") for n in range(3)]
    items = [it.model_copy(update={"model": items[0].model, "item_id": item_id("bulk", items[0].model, "v1", it.id),
                                   "top_k": [("alpha", 0.4), ("beta", 0.3)]}) for it in items]
    review.produce_items(*items)
    ids = {it.item_id for it in items}
    review.wait_items("eve", ids, region="bulk", model=items[0].model)
    status, body = review.call("POST", "/bulk-confirm", "eve", {"csrf": review.csrf("eve"), "region": "bulk",
                                                                "model": items[0].model})
    assert status == 200 and body["confirmed"] == 3 and set(body["item_ids"]) == ids, body
    produced = [m for m in review.labeled() if m.get("item_id") in ids]
    assert sorted((m["item_id"], m["label"], m["reviewer"]) for m in produced) == sorted(
        (i, "alpha", "eve") for i in ids)
    assert review.items("eve", region="bulk", model=items[0].model) == []


def test_a_label_the_head_never_learnt_is_offered_once_its_definition_is_written(review: Page) -> None:
    model = f"n{uuid.uuid4().hex[:6]}"
    it = review.item("a phrase of a new intent", label="alpha", region="bulk", model=model, version="v1")
    it = it.model_copy(update={"item_id": item_id("bulk", model, "v1", it.id), "top_k": [("alpha", 0.4)]})
    review.produce_items(it)
    review.wait_items("fay", {it.item_id}, region="bulk", model=model)
    assert review.answer("fay", it.item_id, outcome="label", label="brand_new")[0] == 400
    path = Path(review.settings.models_root) / "heads" / "bulk" / model / "label_definitions.json"
    path.parent.mkdir(parents=True)  # in the suite's models folder, under a head name of this test only
    try:
        path.write_text(json.dumps({"brand_new": "A new intent the experts bring in."}))
        status, body = review.call("GET", f"/items/{it.item_id}", "fay")
        assert status == 200 and "brand_new" in body["labels"] and "alpha" in body["labels"]
        status, body = review.answer("fay", it.item_id, outcome="label", label="brand_new")
        assert status == 200 and body["produced"], body
    finally:
        shutil.rmtree(path.parent)
        with contextlib.suppress(OSError):
            path.parent.parent.rmdir()  # the region folder, when no other test's head is in it


def test_a_double_item_goes_to_two_reviewers_and_a_single_one_to_one(review: Page) -> None:
    made = [review.item(f"double or single {n}") for n in range(40)]
    double = next(it for it in made if is_double(it.item_id, 0.5))
    single = next(it for it in made if not is_double(it.item_id, 0.5))
    review.produce_items(double, single)
    review.wait_items("fay", {double.item_id, single.item_id})
    assert review.answer("fay", double.item_id, outcome="label", label=double.label)[0] == 200
    assert review.answer("fay", single.item_id, outcome="unsure")[0] == 200
    gus = {i["item_id"] for i in review.items("gus")}
    assert double.item_id in gus and single.item_id not in gus
    assert review.answer("gus", double.item_id, outcome="label", label=review.labels[3])[0] == 200
    assert double.item_id not in {i["item_id"] for i in review.items("ann")}
    assert review.answer("ann", double.item_id, outcome="label", label=double.label)[0] == 409
    status, progress = review.call("GET", "/api/progress", "gus")
    assert status == 200
    head = next(h for h in progress["heads"] if (h["region"], h["model"]) == ("eu", "intent"))
    assert head["experts"]["n"] >= 1 and head["experts"]["agreement"] is not None


def test_the_queue_and_item_pages_are_plain_html_with_guidelines_and_words_for_confidence(review: Page) -> None:
    it = review.item("how do i report a stolen card")
    review.produce_items(it)
    review.wait_items("ann", {it.item_id})
    status, html = review.call("GET", "/queue", "ann", json_=False)
    assert status == 200 and it.clean_text in html and "bulk-confirm" in html
    status, html = review.call("GET", f"/items/{it.item_id}", "ann", json_=False)
    assert status == 200 and "<form method=post" in html and "name=csrf" in html
    assert it.label in html and it.top_k[1][0] in html and "torn between two labels" in html
    assert "Guidelines" in html and "Why the model said so" in html
    status, html = review.call("GET", "/progress", "ann", json_=False)
    assert status == 200 and "Live accuracy" in html
    query = urllib.parse.urlencode({"region": "eu", "model": "intent"})
    status, location = review.browser_post(f"/items/{it.item_id}/answer", "ann", {
        "csrf": review.csrf("ann"), "outcome": "label", "label": it.label, "next": f"/next?{query}"})
    assert (status, location) == (303, f"/next?{query}")
    assert review.answers(it.item_id) == [("ann", "label", it.label)]
    status, location = review.browser_post(f"/items/{it.item_id}/answer", "ann", {
        "csrf": review.csrf("ann"), "outcome": "skip", "next": "//evil.example/x"})
    assert (status, location) == (303, "/queue")  # only a path of this site is followed


def test_label_map_renames_are_offered_and_stamped_on_answers(review: Page) -> None:
    old = review.labels[5]
    env = review.stack.env
    run = subprocess.run([sys.executable, "-m", "streams.cli", "label-map", "--region", "eu", "--model", "intent",
                          "--rename", f"{old}={old}_renamed", "--json"], env=env, capture_output=True, text=True,
                         timeout=BOUND_S, check=False)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout.splitlines()[-1])
    assert shown["current"] == 1 and shown["mapping"] == {old: f"{old}_renamed"}
    bad = subprocess.run([sys.executable, "-m", "streams.cli", "label-map", "--region", "eu", "--model", "intent",
                          "--rename", "nothing"], env=env, capture_output=True, text=True, timeout=BOUND_S, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
    it = review.item("rename me please")
    review.produce_items(it)
    review.wait_items("dan", {it.item_id})
    assert review.answer("dan", it.item_id, outcome="label", label=old)[0] == 400
    status, body = review.answer("dan", it.item_id, outcome="label", label=f"{old}_renamed")
    assert status == 200 and body["label_set_version"] == 1, body
    mine = [m for m in review.labeled() if m.get("item_id") == it.item_id]
    assert [(m["label"], m["label_set_version"]) for m in mine] == [(f"{old}_renamed", 1)]


def test_the_server_stops_on_sigterm_and_closes_its_consumer(review: Page) -> None:
    proc = review.stack.procs["review"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(BOUND_S) == 0
    review.stack.procs.pop("review")
    assert "review ingest stopped" in (review.stack.logs / "review.log").read_text()
