"""One side of a drift comparison: the aggregates of a window of inferences, or of a head's reference.

:func:`window_side` computes every figure of ``[start, end)`` **in PostgreSQL** with SQL
aggregates over ``<schema>.inferences`` (two queries, each one scan of the window's rows
through the index on ``(region, model, predicted_at)``) and ``<schema>.serving_rollups`` (the
worker's per-hour sums of embeddings and unknown-word-piece rates), so no row ever comes into
Python. The histograms use ``retrain.drift.reference``'s edges, binned in SQL with
``width_bucket`` exactly as that module bins in numpy. :func:`side_from_reference` reads a
head's ``reference.json`` (``retrain.drift.reference``) as the same kind of :class:`Side`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES

OOS_LABEL = "oos"
"""The out-of-scope label (``models.heads.OOS``), counted for the out-of-scope rate."""

ROLLUPS_TABLE = "serving_rollups"

WORK_MEM = "64MB"
"""``work_mem`` of the report's transaction: the per-hour latency sort of a week of a million
rows (~13 MB) then stays in memory instead of spilling to temporary files (default 4 MB)."""


class DriftReportError(Exception):
    """A report that cannot be made; the message says why and what to do."""


@dataclass
class Side:
    """The aggregates of one side (current window, reference window, or the training reference)."""

    n: int
    labels: dict[str, float]
    confidence_counts: list[float]
    below_oos: float | None
    length_counts: list[float]
    oos: float | None
    unk_rate: float | None = None
    share_with_unk: float | None = None
    rollup_n: int = 0
    centroid: list[float] | None = None
    hours: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    version_hours: list[tuple[datetime, str, int]] = field(default_factory=list)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    cache_hit_rate: float | None = None


def side_from_reference(ref: dict[str, Any]) -> Side:
    """Return a head's ``reference.json`` as a :class:`Side` (shares turned back into counts)."""
    n = int(ref["n"])
    conf = ref["confidence_histogram"]
    length = ref["text_length"]
    for name, hist, edges in (("confidence_histogram", conf, CONFIDENCE_EDGES),
                              ("text_length", length, TEXT_LENGTH_EDGES)):
        if len(hist["counts"]) != len(edges) - 1:
            msg = f"reference.json's {name} has {len(hist['counts'])} bins, this code expects {len(edges) - 1}"
            raise DriftReportError(msg)
    below = conf.get("share_below_oos_threshold")
    oos_rate = ref.get("oos_rate")
    unk = ref.get("unk_rate") or {}
    return Side(
        n=n,
        labels={k: float(v) * n for k, v in ref["label_distribution"].items()},
        confidence_counts=[float(c) for c in conf["counts"]],
        below_oos=None if below is None else float(below) * n,
        length_counts=[float(c) for c in length["counts"]],
        oos=None if oos_rate is None else float(oos_rate) * n,
        unk_rate=unk.get("mean"), share_with_unk=unk.get("share_with_unk"), rollup_n=n,
        centroid=ref.get("embedding_centroid"),
    )


def _lower_edges(edges: Sequence[float]) -> list[float]:
    """Return the lower edges ``width_bucket`` takes (see ``retrain.drift.reference``'s docstring)."""
    return [float(e) for e in edges[:-1]]


# One scan: the label counts, both histograms, and counts per (hour, version).
# GROUPING(label, cb, lb, hour, model_version) tells the sets apart: bit set = column not grouped.
COUNTS_SQL = """
SELECT GROUPING(label, cb, lb, hour, model_version) AS g, label, cb, lb, hour, model_version,
       count(*) AS n,
       count(*) FILTER (WHERE probability < %(oos_threshold)s) AS below,
       count(*) FILTER (WHERE cache_hit) AS hits,
       count(*) FILTER (WHERE label = %(oos_label)s) AS oos
FROM (
    SELECT label, probability, cache_hit, model_version,
           greatest(width_bucket(probability, %(conf_edges)s::float8[]), 1) AS cb,
           CASE WHEN clean_text IS NOT NULL
                THEN greatest(width_bucket(char_length(clean_text)::float8, %(len_edges)s::float8[]), 1) END AS lb,
           date_trunc('hour', predicted_at) AS hour
    FROM {table}
    WHERE region = %(region)s AND model = %(model)s AND predicted_at >= %(start)s AND predicted_at < %(end)s
) s
GROUP BY GROUPING SETS ((label), (cb), (lb), (hour, model_version))
"""
"""Label counts (g=15), confidence bins (g=23), length bins (g=27), (hour, version) counts (g=28)."""

G_LABEL, G_CONF, G_LEN, G_HOUR_VERSION = 0b01111, 0b10111, 0b11011, 0b11100

LATENCY_SQL = """
SELECT hour, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
FROM (SELECT date_trunc('hour', predicted_at) AS hour, latency_ms
      FROM {table}
      WHERE region = %(region)s AND model = %(model)s AND predicted_at >= %(start)s AND predicted_at < %(end)s) s
GROUP BY ROLLUP (hour)
ORDER BY hour NULLS LAST
"""
"""Latency percentiles (``percentile_cont``, numpy's linear quantile) per hour, then over the window."""

ROLLUP_SQL = """
SELECT sum(n)::bigint, sum(unk_rate_sum), sum(with_unk)::bigint, count(*)
FROM {table}
WHERE region = %(region)s AND model = %(model)s AND hour >= %(start)s AND hour < %(end)s
"""

CENTROID_SQL = """
SELECT u.i, sum(u.v)
FROM {table}, unnest(embedding_sum) WITH ORDINALITY AS u(v, i)
WHERE region = %(region)s AND model = %(model)s AND hour >= %(start)s AND hour < %(end)s
GROUP BY u.i ORDER BY u.i
"""
"""The element-wise sum of the window's embedding sums (a few rows per hour: cheap)."""


def window_side(cur: Any, schema: str, region: str, model: str, start: datetime, end: datetime,
                oos_threshold: float | None) -> Side:
    """Return the aggregates of ``[start, end)`` computed in PostgreSQL (``cur``: a psycopg2 cursor).

    Hours are UTC. A window whose start is not on the hour counts a part hour first: the
    serving rollups are per whole hour, so their window is the hours that start in it.
    """
    from psycopg2 import sql

    cur.execute("SET LOCAL TIME ZONE 'UTC'")
    cur.execute("SET LOCAL work_mem = %s", (WORK_MEM,))
    params = {"region": region, "model": model, "start": start, "end": end, "oos_threshold": oos_threshold,
              "oos_label": OOS_LABEL, "conf_edges": _lower_edges(CONFIDENCE_EDGES),
              "len_edges": _lower_edges(TEXT_LENGTH_EDGES)}
    table = sql.Identifier(schema, "inferences")
    cur.execute(sql.SQL(COUNTS_SQL).format(table=table), params)
    labels: dict[str, float] = {}
    conf = [0.0] * (len(CONFIDENCE_EDGES) - 1)
    length = [0.0] * (len(TEXT_LENGTH_EDGES) - 1)
    below = oos = 0
    hours: dict[datetime, dict[str, Any]] = {}
    version_hours: list[tuple[datetime, str, int]] = []
    versions: dict[str, int] = {}
    hits = 0
    for g, label, cb, lb, hour, version, n, n_below, n_hits, n_oos in cur.fetchall():
        if g == G_LABEL:
            labels[label] = float(n)
            oos += n_oos
            below += n_below
        elif g == G_CONF:
            conf[cb - 1] += n
        elif g == G_LEN and lb is not None:
            length[lb - 1] += n
        elif g == G_HOUR_VERSION:
            h = hours.setdefault(hour, {"hour": hour, "n": 0, "hits": 0, "oos": 0})
            h["n"] += n
            h["hits"] += n_hits
            h["oos"] += n_oos
            hits += n_hits
            versions[version] = versions.get(version, 0) + n
            version_hours.append((hour, version, n))
    total = int(sum(labels.values()))
    side = Side(n=total, labels=labels, confidence_counts=conf, below_oos=float(below) if oos_threshold is not None
                else None, length_counts=length, oos=float(oos), versions=versions,
                version_hours=sorted(version_hours), cache_hit_rate=(hits / total) if total else None)
    if not total:
        return side

    cur.execute(sql.SQL(LATENCY_SQL).format(table=table), params)
    for hour, _n, p50, p99 in cur.fetchall():
        if hour is None:
            side.latency_ms = {"p50": p50, "p99": p99}
        elif hour in hours:
            hours[hour].update(p50_ms=p50, p99_ms=p99)
    side.hours = [{"hour": h["hour"], "n": h["n"], "cache_hit_rate": h["hits"] / h["n"],
                   "oos_rate": h["oos"] / h["n"], "p50_ms": h.get("p50_ms"), "p99_ms": h.get("p99_ms")}
                  for _, h in sorted(hours.items())]
    _add_rollups(cur, schema, side, params)
    return side


def _add_rollups(cur: Any, schema: str, side: Side, params: dict[str, Any]) -> None:
    """Fill the embedding centroid and unknown-word-piece figures from ``serving_rollups``, if it has rows."""
    from psycopg2 import sql

    cur.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, ROLLUPS_TABLE).as_string(cur),))
    if cur.fetchone()[0] is None:  # the table's migration has not run here: nothing to report
        return
    table = sql.Identifier(schema, ROLLUPS_TABLE)
    cur.execute(sql.SQL(ROLLUP_SQL).format(table=table), params)
    n, unk_sum, with_unk, _rows = cur.fetchone()
    if not n:
        return
    side.rollup_n = int(n)
    side.unk_rate = float(unk_sum) / n
    side.share_with_unk = float(with_unk) / n
    cur.execute(sql.SQL(CENTROID_SQL).format(table=table), params)
    sums = [float(v) for _, v in cur.fetchall()]
    side.centroid = [v / n for v in sums] if sums else None
