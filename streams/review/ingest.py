"""Read ``phrases.review`` into ``review_items``: a background consumer in the review server's process.

The consumer (confluent-kafka, group ``<app_id>-review``, reading from the earliest offset the
first time) takes up to 500 messages at a time, stores the valid ones (a redelivered item is
kept once: ``item_id`` is the primary key) and commits the offsets only once the rows are
stored, so a crash between the two reads them again and stores nothing twice. A message that
is not a :class:`schemas.review.ReviewItem` (or whose ``item_id`` is not the one its fields
give) is counted, logged with its place and dead-lettered (``phrases.dlq``, kind ``wrong_type``,
with its reason and bytes) before the offsets are committed; never a crash. When PostgreSQL does not answer,
the batch is kept and stored again with backoff; nothing is committed meanwhile.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas.messages import DeadLetter, ErrorKind
from schemas.review import ReviewItem, item_id

log = logging.getLogger("phrasestream.review")

BATCH = 500


@dataclass
class IngestCounts:
    """What the consumer did so far (shown in ``/api/progress``)."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    store_failures: int = 0
    last_error: str | None = None
    invalid_where: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"read": self.read, "stored": self.stored, "duplicates": self.duplicates, "invalid": self.invalid,
                "store_failures": self.store_failures, "last_error": self.last_error,
                "invalid_where": self.invalid_where[-5:]}


def decode_item(raw: bytes | None) -> ReviewItem | str:
    """Return the review item in ``raw``, or the reason it is not one."""
    try:
        item = ReviewItem.model_validate_json(raw or b"")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        return f"{first['type']}{f' at {where}' if where else ''}"
    if item.item_id != item_id(item.region, item.model, item.model_version, item.id):
        return "item_id does not match its region, model, model_version and id"
    return item


class ReviewIngest(threading.Thread):
    """The consumer thread; :meth:`stop` ends it and closes the consumer (leaving the group at once)."""

    def __init__(self, settings: Any, group: str | None = None) -> None:
        super().__init__(name="review-ingest", daemon=True)
        self.settings = settings
        self.group = group or f"{settings.app_id}-review"
        self.counts = IngestCounts()
        self._stop_event = threading.Event()
        self.ready = threading.Event()
        self.failed: BaseException | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it (the consumer is closed inside the thread)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        from confluent_kafka import Consumer

        from ops.kafka.clients import client_config

        try:
            consumer = Consumer(client_config(self.settings, {
                "group.id": self.group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
            consumer.subscribe([self.settings.topic_review])
        except Exception as exc:  # noqa: BLE001 - reported by the server, which then stops
            self.failed = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while not self._stop_event.is_set():
                messages = consumer.consume(BATCH, timeout=0.5)
                if messages:
                    self._take(messages)
                    if self._stop_event.is_set() and self._pending:
                        break  # stopping while the database is away: leave the batch uncommitted
                    consumer.commit(asynchronous=False)
        finally:
            consumer.close()
            log.info("review ingest stopped (%d stored, %d invalid)", self.counts.stored, self.counts.invalid)

    _pending = False

    def _take(self, messages: list[Any]) -> None:
        """Decode ``messages``, store the valid ones and dead-letter the rest (with their reason and bytes);
        retry both until they work or the thread stops."""
        items: dict[str, ReviewItem] = {}
        letters: list[DeadLetter] = []
        for msg in messages:
            if msg.error() is not None:
                log.warning("review topic read error: %s", msg.error())
                continue
            self.counts.read += 1
            decoded = decode_item(msg.value())
            if isinstance(decoded, str):
                self.counts.invalid += 1
                where = f"partition {msg.partition()} offset {msg.offset()}: {decoded}"
                self.counts.invalid_where.append(where)
                log.warning("dead-lettered an unreadable review item at %s", where)
                letters.append(DeadLetter.of(ErrorKind.WRONG_TYPE, f"not a review item: {decoded}", msg.value(),
                                             msg.topic(), msg.partition(), msg.offset()))
                continue
            items[decoded.item_id] = decoded
        lettered = self._dead_letter(letters)
        self._pending = bool(items) or not lettered
        delay = 0.5
        while items and not self._stop_event.is_set():
            try:
                new = self._store(list(items.values()))
            except Exception as exc:  # noqa: BLE001 - psycopg2 errors of every kind: keep the batch, retry
                self.counts.store_failures += 1
                self.counts.last_error = type(exc).__name__
                log.warning("cannot store %d review item(s) (%s); trying again in %.1f s", len(items), exc, delay)
                self._stop_event.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.counts.stored += new
            self.counts.duplicates += len(items) - new
            self._pending = False
            return

    def _dead_letter(self, letters: list[DeadLetter]) -> bool:
        """Produce ``letters`` to the dead-letter topic, acknowledged; retry until the broker takes them
        (return True) or the thread stops (False: the batch is not committed)."""
        from ops.kafka.topics import produce_acked

        delay = 0.5
        while letters:
            if self._stop_event.is_set():
                return False
            errors = produce_acked(self.settings, self.settings.topic_dlq, [(None, d.to_bytes()) for d in letters])
            if not errors:
                return True
            log.warning("cannot dead-letter %d review item(s) (%s); trying again in %.1f s", len(letters), errors[0],
                        delay)
            self._stop_event.wait(delay)
            delay = min(delay * 2, 10.0)
        return True

    def _store(self, items: list[ReviewItem]) -> int:
        from ops.postgres.db import pg_connect
        from streams.review.store import store_items

        conn = pg_connect(self.settings)
        try:
            return store_items(conn, self.settings.pg_schema, items, self.settings.review_double_share)
        finally:
            conn.close()
