"""The shadow report's queries: the live and shadow predictions of a window, paired in PostgreSQL.

A pair is a shadow row (``shadow_inferences``) and the live row (``inferences``) of the same
phrase id, head and live version (the shadow row names the version served beside it). Every
figure over the pairs is an aggregate (counts per label pair, means and quantiles) computed in
the database, so a day of traffic never comes into Python; only the pairs whose cleaned text
was labelled are read row by row (:meth:`WindowRows.answers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

SHIFT_EDGES = [round(-1 + 0.1 * i, 1) for i in range(21)]
"""Bins of the confidence shift (shadow probability - live probability): 20 of width 0.1 over [-1, 1]."""

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
"""The quantiles of the confidence shift (the query's ARRAY holds the same)."""

_PAIRS = """
WITH p AS (
  SELECT s.id, s.clean_text, s.predicted_at, i.label AS live_label, s.label AS shadow_label,
         s.probability - i.probability AS shift, i.probability AS live_p, s.probability AS shadow_p,
         s.head_ms, s.live_head_ms
  FROM shadow_inferences s
  JOIN inferences i ON i.id = s.id AND i.model = s.model AND i.region = s.region AND i.model_version = s.live_version
  WHERE s.region = %(region)s AND s.model = %(model)s AND s.model_version = %(version)s
    AND s.predicted_at >= %(start)s AND s.predicted_at < %(end)s
    AND i.region = %(region)s AND i.model = %(model)s
    AND i.predicted_at >= %(start)s - interval '1 hour' AND i.predicted_at < %(end)s + interval '1 hour')
"""
"""The pairs of a window. Both sides are read through their (region, model, predicted_at) index (a live
answer is made in the same batch as its shadow's; the hour of slack covers clocks and redelivery)
and joined by hashing: see :meth:`WindowRows._query`."""


@dataclass(frozen=True)
class Seen:
    """What the window holds for the head, before pairing."""

    live_rows: int
    live_versions: list[str]
    shadow_versions: list[dict[str, Any]]
    """One entry per shadow version seen: version, rows, first and last ``predicted_at`` (ISO)."""


class WindowRows:
    """The queries of one (region, model) and window ``[start, end)``, on an open psycopg2 connection."""

    def __init__(self, conn: Any, schema: str, region: str, model: str, start: datetime, end: datetime) -> None:
        self.conn = conn
        self.schema = schema
        self.params: dict[str, Any] = {"region": region, "model": model, "start": start, "end": end}

    def _query(self, query: str, **extra: Any) -> list[tuple]:
        """Run ``query`` (``{pairs}`` stands for the pairs' CTE) in the schema; return its rows."""
        from psycopg2 import sql

        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self.schema)))
            # Without statistics (tables just written, before autovacuum's ANALYZE) the planner
            # guesses one row a side and joins by nested loop, quadratic in the window: 16 s for
            # 20,000 pairs, 550 s for 100,000. A hash join is linear, whatever the statistics.
            cur.execute("SET LOCAL enable_nestloop = off")
            cur.execute(sql.SQL(query).format(pairs=sql.SQL(_PAIRS)), {**self.params, **extra})
            return list(cur.fetchall())

    def seen(self) -> Seen:
        """Return the live rows and the shadow versions (with their rows) in the window."""
        live = self._query("SELECT model_version, count(*) FROM inferences WHERE region = %(region)s AND "
                           "model = %(model)s AND predicted_at >= %(start)s AND predicted_at < %(end)s "
                           "GROUP BY 1 ORDER BY 2 DESC")
        shadow = self._query("SELECT model_version, count(*), min(predicted_at), max(predicted_at) "
                             "FROM shadow_inferences WHERE region = %(region)s AND model = %(model)s AND "
                             "predicted_at >= %(start)s AND predicted_at < %(end)s GROUP BY 1 ORDER BY 4 DESC")
        return Seen(sum(n for _, n in live), [v for v, _ in live],
                    [{"version": v, "rows": n, "first": a.isoformat(), "last": b.isoformat()} for v, n, a, b in shadow])

    def confusion_counts(self, version: str) -> list[tuple[str, str, int]]:
        """Return (live label, shadow label, pairs) of every label pair of shadow ``version``."""
        rows = self._query("{pairs} SELECT live_label, shadow_label, count(*) FROM p GROUP BY 1, 2", version=version)
        return [(a, b, int(n)) for a, b, n in rows]

    def pair_stats(self, version: str) -> dict[str, Any]:
        """Return the confidence shift and both heads' time per phrase over the pairs of ``version``."""
        [row] = self._query("""{pairs}
SELECT count(*), avg(shift), percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95]) WITHIN GROUP (ORDER BY shift), avg(live_p), avg(shadow_p),
       count(head_ms), avg(head_ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY head_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY head_ms),
       count(live_head_ms), avg(live_head_ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY live_head_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY live_head_ms)
FROM p""", version=version)
        n, mean, qv, live_p, shadow_p, n_h, h_mean, h_p50, h_p99, n_l, l_mean, l_p50, l_p99 = row
        hist = self._query("{pairs} SELECT width_bucket(shift, -1.0, 1.0000001, 20), count(*) FROM p GROUP BY 1",
                           version=version)
        counts = [0] * 20
        for bucket, k in hist:
            counts[min(max(int(bucket), 1), 20) - 1] += int(k)
        return {
            "pairs": int(n),
            "confidence_shift": {"mean": _f(mean), "quantiles": {str(q): _f(v) for q, v in zip(QUANTILES, qv or [],
                                                                                                strict=False)},
                                 "live_mean": _f(live_p), "shadow_mean": _f(shadow_p),
                                 "histogram": {"edges": SHIFT_EDGES, "counts": counts}},
            "head_ms": {"shadow": {"n": int(n_h), "mean": _f(h_mean), "p50": _f(h_p50), "p99": _f(h_p99)},
                        "live": {"n": int(n_l), "mean": _f(l_mean), "p50": _f(l_p50), "p99": _f(l_p99)}},
        }

    def answers(self, version: str, texts: list[str]) -> dict[str, tuple[str, str]]:
        """Return cleaned text -> (live label, shadow label) of the newest pair of each of ``texts``."""
        if not texts:
            return {}
        rows = self._query("{pairs} SELECT DISTINCT ON (clean_text) clean_text, live_label, shadow_label FROM p "
                           "WHERE clean_text = ANY(%(texts)s) ORDER BY clean_text, predicted_at DESC",
                           version=version, texts=texts)
        return {t: (a, b) for t, a, b in rows}


def _f(x: Any) -> float | None:
    return None if x is None else round(float(x), 6)
