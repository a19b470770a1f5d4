"""What the review page does, without HTTP: check an answer, produce it, store it; the views' data.

Every method is synchronous (psycopg2, confluent-kafka) and is run in the server's thread pool.
An answer is checked whole before anything happens (:class:`AnswerError` carries the HTTP
status and the message); a label answer is then produced to ``phrases.labeled`` and waited for
(acks=all) and only then stored, so a stored answer is always on the topic. Should the store
fail after the produce, answering again produces it again: ``retrain`` keeps one example per
text, the newest (``retrain.replay.select.deduplicate``), so a changed answer wins.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.heads import HeadRef
from models.labelsets import LabelSets, read_label_sets
from ops.postgres.db import pg_connect
from schemas.messages import LabeledPhrase
from streams.review import store
from streams.review.guide import Guide, Guides
from streams.review.store import OUTCOMES, Filters

BULK_LIMIT = 1000


class AnswerError(Exception):
    """An answer that is refused: ``status`` (4xx, or 503 when Kafka did not take it) and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class HeadLabels:
    """The labels a reviewer may give an item (newest names), its label set, and its guide."""

    labels: list[str]
    sets: LabelSets
    guide: Guide

    def suggestion(self, item: dict[str, Any]) -> str:
        return self.sets.relabel(item["label"], 0)

    def runner_up(self, item: dict[str, Any]) -> str | None:
        first = self.suggestion(item)
        for label, _p in item.get("top_k") or []:
            name = self.sets.relabel(str(label), 0)
            if name != first:
                return name
        return None


class ReviewService:
    """The review page's work on PostgreSQL and Kafka, for one settings object."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.schema = settings.pg_schema
        self.guides = Guides(settings)
        self._producer: Any = None
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        return pg_connect(self.settings)

    def head_labels(self, item: dict[str, Any], conn: Any) -> HeadLabels:
        """Return the labels of the item's head version under the newest label set.

        When the head's files cannot be read, the labels the item's top-k names stand in (the
        guide says why), so a reviewer can still confirm or correct among them. A label the head
        was never trained on is offered once the head's ``label_definitions.json`` defines it:
        that is how experts bring in a new label (the next ``retrain`` learns it from their answers).
        """
        ref = HeadRef(item["region"], item["model"], item["model_version"])
        guide = self.guides.get(ref)
        sets = read_label_sets(self.settings, item["region"], item["model"], conn=conn)
        trained = list(guide.labels) or [item["label"], *(str(t[0]) for t in item.get("top_k") or [])]
        trained += [label for label in guide.definitions if label not in trained]
        return HeadLabels(sets.names(trained), sets, guide)

    def item_view(self, item_id: str, reviewer: str) -> tuple[dict[str, Any], HeadLabels] | None:
        conn = self._conn()
        try:
            item = store.get_item(conn, self.schema, item_id)
            return None if item is None else (item, self.head_labels(item, conn))
        finally:
            conn.close()

    def queue_view(self, reviewer: str, filters: Filters, limit: int = 50) -> dict[str, Any]:
        conn = self._conn()
        try:
            items = store.open_items(conn, self.schema, reviewer, filters, limit)
            queues = store.count_open(conn, self.schema, reviewer)
        finally:
            conn.close()
        return {"items": items, "queues": queues, "heads": [(q["region"], q["model"]) for q in queues],
                "labels": sorted({i["label"] for i in items})}

    def answer(self, reviewer: str, item_id: str, outcome: str | None, label: str | None,
               label_set: str | None) -> dict[str, Any]:
        """Check, produce and store one answer of ``reviewer``; return what was recorded. Raise :class:`AnswerError`."""
        outcome = (outcome or "").strip()
        label = (label or "").strip()
        if not outcome:
            raise AnswerError(400, "empty answer: give outcome (label, skip, unsure or out_of_scope)")
        if outcome not in OUTCOMES:
            raise AnswerError(400, f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        conn = self._conn()
        try:
            item = store.get_item(conn, self.schema, item_id)
            if item is None:
                raise AnswerError(404, f"no review item {item_id!r}: it was never routed here")
            head = self.head_labels(item, conn)
            self._check(item, head, reviewer, outcome, label, label_set)
            recorded = self._record(conn, reviewer, [(item, head, outcome, label or None)])
        finally:
            conn.close()
        return recorded[0]

    def _check(self, item: dict[str, Any], head: HeadLabels, reviewer: str, outcome: str, label: str,
               label_set: str | None) -> None:
        if outcome == "label":
            if not label:
                raise AnswerError(400, "empty answer: pick a label (or answer skip, unsure or out_of_scope)")
            if label not in head.labels:
                raise AnswerError(400, f"unknown label {label!r} for {item['region']}/{item['model']}; "
                                  f"{len(head.labels)} labels are known")
        elif label:
            raise AnswerError(400, f"outcome {outcome!r} takes no label (it is kept apart from labels)")
        if label_set not in (None, "") and label_set != str(head.sets.current):
            raise AnswerError(409, f"the labels changed (label set {label_set} is now {head.sets.current}); "
                              "reload the item")
        stale = store.stale_reason(item, reviewer)
        if stale:
            raise AnswerError(409, f"{stale}; take the next item")

    def _record(self, conn: Any, reviewer: str,
                answers: list[tuple[dict[str, Any], HeadLabels, str, str | None]]) -> list[dict[str, Any]]:
        """Produce the label answers (acked), then store every answer; return them as dicts."""
        now = datetime.now(UTC)
        records = []
        for item, head, outcome, label in answers:
            if outcome == "label" and label:
                msg = LabeledPhrase(
                    text=item["clean_text"], label=label, region=item["region"], model=item["model"], ts=now,
                    source="review", reviewer=reviewer, item_id=item["item_id"], reason=",".join(item["reasons"]),
                    sampling_weight=item["sampling_weight"], head_version=item["model_version"],
                    label_set_version=head.sets.current)
                records.append((item["item_id"].encode(), msg.to_bytes()))
        if records:
            errors = self._produce(records)
            if errors:
                raise AnswerError(503, f"Kafka did not take the answer ({errors[0]}); nothing was stored: try again")
        store.save_answers(conn, self.schema, [(i["item_id"], reviewer, o, lab, h.sets.current)
                                               for i, h, o, lab in answers])
        return [{"item_id": i["item_id"], "reviewer": reviewer, "outcome": o, "label": lab,
                 "label_set_version": h.sets.current, "produced": o == "label"} for i, h, o, lab in answers]

    def _produce(self, records: list[tuple[bytes, bytes]], timeout: float = 30.0) -> list[str]:
        """Produce ``records`` to ``phrases.labeled`` through the kept producer and wait for the broker.

        Like ``ops.kafka.topics.produce_acked`` (idempotent, acks=all; the delivery errors, with
        ``"timed out"`` for what is left unacknowledged), but with one producer for the life of the
        server: a new producer's first message took 505 ms here, a kept one's 0.4 ms. The lock
        keeps one answer's flush from waiting for another's records.
        """
        from confluent_kafka import Producer

        from ops.kafka.clients import client_config
        from ops.kafka.produce import produce_retrying

        errors: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        with self._lock:
            if self._producer is None:
                self._producer = Producer(client_config(self.settings, {
                    "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                    "message.timeout.ms": int(timeout * 1000)}))
            for key, value in records:
                produce_retrying(self._producer, self.settings.topic_labeled, value, key, on_delivery=delivered)
            left = self._producer.flush(timeout + 5)
        return errors + ["timed out"] * left

    def close(self) -> None:
        """Flush and drop the kept producer (the server calls this when it stops)."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(10)
                self._producer = None

    def bulk_confirm(self, reviewer: str, filters: Filters, seen_until: datetime | None) -> dict[str, Any]:
        """Confirm the suggestion of every item open for ``reviewer`` under ``filters`` (stored by ``seen_until``)."""
        conn = self._conn()
        try:
            items = store.open_items(conn, self.schema, reviewer, filters, BULK_LIMIT, stored_until=seen_until)
            heads: dict[tuple[str, str, str], HeadLabels] = {}
            answers = []
            for item in items:
                key = (item["region"], item["model"], item["model_version"])
                if key not in heads:
                    heads[key] = self.head_labels(item, conn)
                head = heads[key]
                suggestion: str | None = head.suggestion(item)
                answers.append((item, head, "label", suggestion))
            recorded = self._record(conn, reviewer, answers) if answers else []
        finally:
            conn.close()
        return {"confirmed": len(recorded), "item_ids": [r["item_id"] for r in recorded]}

    def progress(self) -> dict[str, Any]:
        from streams.review.progress import progress

        conn = self._conn()
        try:
            answers = store.label_answers(conn, self.schema)
            per_hour = store.answered_per_hour(conn, self.schema)
            heads: set[tuple[str, str]] = {(str(a["region"]), str(a["model"])) for a in answers}
            relabels = {h: read_label_sets(self.settings, h[0], h[1], conn=conn).relabel for h in heads}
            queues = self._open_all(conn)
        finally:
            conn.close()
        return progress(answers, relabels, per_hour, queues)

    def _open_all(self, conn: Any) -> list[dict[str, Any]]:
        """Items no reviewer has finished, per head (a reviewer's own queue may be shorter)."""
        return store.count_open(conn, self.schema, "")  # no reviewer is named ""
