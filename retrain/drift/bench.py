"""Time the drift report on N synthetic inference rows: ``phrasestream drift-report --bench-rows N``.

:func:`run_bench` creates a scratch schema (``drift_bench_<hex>``) with every migration applied,
fills it in SQL (``generate_series``: no rows travel from Python), vacuums and analyses it as
autovacuum would after a bulk load, times two reports on it and drops the schema, even when a
step fails. The rows are shaped like real traffic: 14 days of timestamps, ~150 labels with a
skew (label ``i`` is drawn with density falling like ``1/sqrt(i)``) plus 10 % ``oos``, high
confidences with a tail, texts of 5–95 characters, 60 % cache hits with sub-ms latencies and
slower misses, a promotion from ``v1`` to ``v2`` three days ago, and two workers' hourly rows in
``serving_rollups`` when that table exists.

The figures are printed as JSON; they are a benchmark, never a test gate.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES

BENCH_REGION, BENCH_MODEL = "global", "intent"
N_LABELS = 150
DAYS = 14

FILL_SQL = """
INSERT INTO {table} (id, region, model, model_version, label, probability, top_k, clean_text, embedder_version,
                     cache_hit, latency_ms, received_at, predicted_at)
SELECT 'bench-' || g, %(region)s, %(model)s,
       CASE WHEN ts < %(now)s - interval '3 days' THEN 'v1' ELSE 'v2' END,
       CASE WHEN r1 < 0.1 THEN 'oos' ELSE 'label_' || lpad(floor(%(labels)s * power(r2, 2))::int::text, 3, '0') END,
       CASE WHEN r1 < 0.1 THEN 0.3 + 0.5 * r3 ELSE 1 - 0.6 * power(r3, 4) END,
       '[]'::jsonb,
       substr(%(text)s, 1, 5 + floor(90 * r4 * r5)::int),
       'bench',
       r6 < 0.6,
       CASE WHEN r6 < 0.6 THEN 0.2 + 0.5 * r7 ELSE 8 + 60 * power(r7, 4) END,
       ts, ts
FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5, random() AS r6,
             random() AS r7, %(now)s - random() * interval '{days} days' AS ts
      FROM generate_series(1, %(rows)s) AS g) AS s
"""

ROLLUPS_FILL_SQL = """
INSERT INTO {table} (delta_id, region, model, model_version, hour, n, embedding_sum, unk_rate_sum, with_unk)
SELECT 'bench-' || h || '-' || w, %(region)s, %(model)s, CASE WHEN h < 72 THEN 'v2' ELSE 'v1' END,
       date_trunc('hour', %(now)s) - h * interval '1 hour', %(per_hour)s,
       (SELECT array_agg(%(per_hour)s * (0.01 + 0.002 * random()) + 0 * d + 0 * h + 0 * w) FROM generate_series(1, 384) AS d),
       %(per_hour)s * 0.002 * random(), floor(%(per_hour)s * 0.01 * random())::bigint
FROM generate_series(0, {hours} - 1) AS h, generate_series(1, 2) AS w
"""

TEXT = ("how do i reset the pin of my debit card after three wrong tries at the cash machine on the corner "
        "of the street near my office")


def synthetic_reference() -> tuple[str, dict[str, Any]]:
    """Return (version, reference.json) shaped like a trained head's, for the timing run."""
    n = 5500
    labels = {f"label_{i:03d}": round(0.9 / N_LABELS, 6) for i in range(N_LABELS)} | {"oos": 0.1}
    conf_counts = [0] * (len(CONFIDENCE_EDGES) - 1)
    conf_counts[-1], conf_counts[-2], conf_counts[10] = 4000, 900, 600
    len_counts = [0] * (len(TEXT_LENGTH_EDGES) - 1)
    for i, c in enumerate((100, 300, 400, 500, 1400, 1300, 1200, 300)):
        len_counts[i] = c
    centroid = [0.27 / math.sqrt(384)] * 384
    return "bench-v1", {
        "n": n, "label_distribution": labels,
        "confidence_histogram": {"counts": conf_counts, "share_below_oos_threshold": 0.1},
        "text_length": {"counts": len_counts},
        "unk_rate": {"mean": 0.001, "share_with_unk": 0.01},
        "embedding_centroid": centroid, "oos_threshold": 0.48, "oos_rate": 0.1,
    }


def run_bench(settings: Any, rows: int, out_dir: Path | str, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Fill a scratch schema with ``rows`` synthetic inferences, time the reports, drop it; return the figures."""
    from psycopg2 import sql

    from ops.postgres.db import pg_connect
    from ops.postgres.migrations import apply_migrations
    from retrain.drift.report import build_report

    if rows < 1:
        raise ValueError("--bench-rows needs at least 1 row")
    schema = f"drift_bench_{uuid.uuid4().hex[:10]}"
    scratch = settings.model_copy(update={"pg_schema": schema})
    now = datetime.now(UTC).replace(microsecond=0)
    figures: dict[str, Any] = {"rows": rows, "schema": schema}
    conn = pg_connect(settings)
    conn.autocommit = True
    try:
        apply_migrations(scratch)
        with conn.cursor() as cur:
            say(f"filling {schema}.inferences with {rows} rows ...")
            t0 = time.perf_counter()
            cur.execute(sql.SQL(FILL_SQL).format(table=sql.Identifier(schema, "inferences"), days=sql.Literal(DAYS)),
                        {"region": BENCH_REGION, "model": BENCH_MODEL, "now": now, "labels": N_LABELS, "text": TEXT,
                         "rows": rows})
            cur.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, "serving_rollups").as_string(cur),))
            if cur.fetchone()[0] is not None:
                cur.execute(sql.SQL(ROLLUPS_FILL_SQL).format(table=sql.Identifier(schema, "serving_rollups"),
                                                             hours=sql.Literal(DAYS * 24)),
                            {"region": BENCH_REGION, "model": BENCH_MODEL, "now": now,
                             "per_hour": max(1, rows // (DAYS * 24 * 2))})
                figures["rollup_rows"] = DAYS * 24 * 2
            figures["fill_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            cur.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "inferences")))
            figures["vacuum_analyze_s"] = round(time.perf_counter() - t0, 2)
        out = Path(out_dir)
        for name, reference in (("training", "training"), ("window", "7d")):
            say(f"report: current 7d against {reference} ...")
            t0 = time.perf_counter()
            summary = build_report(scratch, BENCH_REGION, BENCH_MODEL, timedelta(days=7), reference, out / name,
                                   now=now, head_reference=synthetic_reference())
            figures[f"report_{name}_s"] = round(time.perf_counter() - t0, 2)
            figures[f"rows_{name}"] = summary["rows"]
        figures["report_s"] = max(figures["report_training_s"], figures["report_window_s"])
        figures["out"] = str(out.resolve())
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.close()
    return figures
