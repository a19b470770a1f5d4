"""The review page's tables in PostgreSQL: the items, the queue, the answers (migration 004).

Plain functions on a psycopg2 connection; the server runs them in its thread pool. Every
statement is parameterised and names the schema with ``sql.Identifier``.

- An item is **open** for a reviewer when that reviewer has not answered it and fewer others
  have than it needs: one answer, or two for a double item (:func:`is_double`).
- An answer is one row per (item, reviewer); answering again updates it (outcome, label,
  label set version, time), keeping when it was first given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2 import sql
from psycopg2.extras import execute_values

from schemas.review import ReviewItem

OUTCOMES = ("label", "skip", "unsure", "out_of_scope")
ITEM_COLUMNS = ("item_id", "phrase_id", "region", "model", "model_version", "clean_text", "label", "probability",
                "top_k", "margin", "reasons", "random_slice", "random_rate", "sampling_weight", "evidence",
                "shadow_version", "shadow_label", "double_review", "predicted_at", "stored_at")


def is_double(item_id: str, share: float) -> bool:
    """Say whether an item goes to two reviewers: a stable hash of its id below ``share``."""
    bucket = int(hashlib.sha256(f"double:{item_id}".encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return bucket < share


def _t(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def store_items(conn: Any, schema: str, items: Sequence[ReviewItem], double_share: float) -> int:
    """Insert ``items`` (a redelivered one is kept once); return how many were new. Commits."""
    if not items:
        return 0
    rows = [(i.item_id, i.id, i.region, i.model, i.model_version, i.clean_text, i.label, i.probability,
             json.dumps(i.top_k), i.margin, list(i.reasons), i.random_slice, i.random_rate, i.sampling_weight,
             json.dumps(i.evidence) if i.evidence is not None else None, i.shadow_version, i.shadow_label,
             is_double(i.item_id, double_share), i.predicted_at) for i in items]
    query = sql.SQL("INSERT INTO {} ({}) VALUES %s ON CONFLICT (item_id) DO NOTHING RETURNING item_id").format(
        _t(schema, "review_items"), sql.SQL(", ").join(sql.Identifier(c) for c in ITEM_COLUMNS[:-1]))
    with conn, conn.cursor() as cur:
        new = execute_values(cur, query, rows, fetch=True)
    return len(new)


@dataclass(frozen=True)
class Filters:
    """What the queue shows: a head (region, model), a routing reason, a suggested label; the order."""

    region: str | None = None
    model: str | None = None
    reason: str | None = None
    label: str | None = None
    order: str = "margin"  # or "oldest"

    def where(self) -> tuple[list[sql.Composable], list[Any]]:
        parts: list[sql.Composable] = []
        args: list[Any] = []
        for column, value in (("region", self.region), ("model", self.model), ("label", self.label)):
            if value:
                parts.append(sql.SQL("i.{} = %s").format(sql.Identifier(column)))
                args.append(value)
        if self.reason:
            parts.append(sql.SQL("%s = ANY(i.reasons)"))
            args.append(self.reason)
        return parts, args

    def query(self) -> dict[str, str]:
        """The non-empty filters as query parameters."""
        return {k: v for k, v in (("region", self.region), ("model", self.model), ("reason", self.reason),
                                  ("label", self.label), ("order", self.order)) if v and v != "margin"}


def _open_clause(schema: str) -> sql.Composed:
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {a} a WHERE a.item_id = i.item_id AND a.reviewer = %s) "
        "AND (SELECT count(*) FROM {a} a WHERE a.item_id = i.item_id) "
        "< CASE WHEN i.double_review THEN 2 ELSE 1 END").format(a=_t(schema, "review_answers"))


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def open_items(conn: Any, schema: str, reviewer: str, filters: Filters, limit: int = 50,
               stored_until: datetime | None = None) -> list[dict[str, Any]]:
    """Return the items open for ``reviewer`` that match ``filters`` (smallest margin or oldest first)."""
    parts, args = filters.where()
    parts.insert(0, _open_clause(schema))
    args.insert(0, reviewer)
    if stored_until is not None:
        parts.append(sql.SQL("i.stored_at <= %s"))
        args.append(stored_until)
    order = sql.SQL("i.stored_at, i.item_id" if filters.order == "oldest" else "i.margin, i.stored_at, i.item_id")
    query = sql.SQL("SELECT i.* FROM {} i WHERE {} ORDER BY {} LIMIT %s").format(
        _t(schema, "review_items"), sql.SQL(" AND ").join(parts), order)
    with conn, conn.cursor() as cur:
        cur.execute(query, [*args, limit])
        return _rows(cur)


def count_open(conn: Any, schema: str, reviewer: str) -> list[dict[str, Any]]:
    """Return the open items of ``reviewer`` counted per head (the queues)."""
    query = sql.SQL("SELECT i.region, i.model, count(*) AS n FROM {} i WHERE {} GROUP BY 1, 2 ORDER BY 1, 2").format(
        _t(schema, "review_items"), _open_clause(schema))
    with conn, conn.cursor() as cur:
        cur.execute(query, [reviewer])
        return _rows(cur)


def get_item(conn: Any, schema: str, item_id: str) -> dict[str, Any] | None:
    """Return one item with its answers (``answers``: list of dicts), or None when there is no such item."""
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} WHERE item_id = %s").format(_t(schema, "review_items")), (item_id,))
        rows = _rows(cur)
        if not rows:
            return None
        cur.execute(sql.SQL("SELECT reviewer, outcome, label, label_set_version, answered_at FROM {} "
                            "WHERE item_id = %s ORDER BY first_answered_at, reviewer").format(
                                _t(schema, "review_answers")), (item_id,))
        return {**rows[0], "answers": _rows(cur)}


def stale_reason(item: dict[str, Any], reviewer: str) -> str | None:
    """Say why ``reviewer`` may no longer answer ``item`` (others gave the answers it needs), or None."""
    others = [a["reviewer"] for a in item["answers"] if a["reviewer"] != reviewer]
    if len(others) < len(item["answers"]):
        return None  # answering again updates the reviewer's own answer
    needed = 2 if item["double_review"] else 1
    if len(others) >= needed:
        return f"item {item['item_id']} was answered already by {', '.join(others)}"
    return None


def save_answers(conn: Any, schema: str, answers: Sequence[tuple[str, str, str, str | None, int]]) -> None:
    """Store (item_id, reviewer, outcome, label, label_set_version) answers; a second one updates the first."""
    query = sql.SQL(
        "INSERT INTO {} (item_id, reviewer, outcome, label, label_set_version) VALUES %s "
        "ON CONFLICT (item_id, reviewer) DO UPDATE SET outcome = EXCLUDED.outcome, label = EXCLUDED.label, "
        "label_set_version = EXCLUDED.label_set_version, answered_at = now()").format(_t(schema, "review_answers"))
    with conn, conn.cursor() as cur:
        execute_values(cur, query, list(answers))


def answered_per_hour(conn: Any, schema: str, hours: int = 24) -> list[dict[str, Any]]:
    """Return the answers given per UTC hour over the last ``hours`` hours (hours with none left out)."""
    query = sql.SQL("SELECT date_trunc('hour', answered_at AT TIME ZONE 'UTC') AS hour, count(*) AS n FROM {} "
                    "WHERE answered_at > now() - make_interval(hours => %s) GROUP BY 1 ORDER BY 1").format(
                        _t(schema, "review_answers"))
    with conn, conn.cursor() as cur:
        cur.execute(query, (hours,))
        return [{"hour": r["hour"].isoformat() + "Z", "n": int(r["n"])} for r in _rows(cur)]


def label_answers(conn: Any, schema: str) -> list[dict[str, Any]]:
    """Return every answer joined with its item, oldest first (the progress panel's input)."""
    query = sql.SQL(
        "SELECT a.item_id, a.reviewer, a.outcome, a.label AS answer, a.label_set_version, a.first_answered_at, "
        "i.region, i.model, i.label AS suggestion, i.reasons, i.random_slice, i.sampling_weight, i.double_review "
        "FROM {} a JOIN {} i USING (item_id) ORDER BY a.first_answered_at, a.reviewer").format(
            _t(schema, "review_answers"), _t(schema, "review_items"))
    with conn, conn.cursor() as cur:
        cur.execute(query)
        return _rows(cur)
