"""The drift report on a real PostgreSQL: SQL aggregates, flags, files, and the empty window.

Rows are inserted with SQL straight into the test's own schema (``bare_stack``): no worker,
no sink. The training reference is passed in (``head_reference``), built with
``retrain.drift.reference.reference_stats`` like a trained head's ``reference.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from bounds import BOUND_S
from psycopg2 import sql
from psycopg2.extras import execute_values

from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES, histogram_counts, reference_stats
from retrain.drift.report import EmptyWindow, build_report
from retrain.drift.sides import window_side

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LABELS = [f"label_{i:03d}" for i in range(150)]

# The contract table (ops/postgres/sql/003_serving_rollups.sql); created here only if that
# migration is not in this tree yet, so the test runs with or without it.
ROLLUPS_DDL = """
CREATE TABLE IF NOT EXISTS {} (
    delta_id text PRIMARY KEY, region text NOT NULL, model text NOT NULL, model_version text NOT NULL,
    hour timestamptz NOT NULL, n bigint NOT NULL, embedding_sum double precision[] NOT NULL,
    unk_rate_sum double precision NOT NULL, with_unk bigint NOT NULL, stored_at timestamptz NOT NULL DEFAULT now())
"""


def _connect(settings):
    return psycopg2.connect(settings.dsn)


def insert_rows(settings, rows: list[dict]) -> None:
    cols = ["id", "region", "model", "model_version", "label", "probability", "clean_text", "cache_hit",
            "latency_ms", "predicted_at"]
    with _connect(settings) as conn, conn.cursor() as cur:
        execute_values(cur, sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
            sql.Identifier(settings.pg_schema, "inferences"), sql.SQL(", ").join(map(sql.Identifier, cols)))
            .as_string(cur), [tuple(r[c] for c in cols) for r in rows], page_size=1000)


def insert_rollups(settings, rollups: list[tuple]) -> None:
    with _connect(settings) as conn, conn.cursor() as cur:
        table = sql.Identifier(settings.pg_schema, "serving_rollups")
        cur.execute(sql.SQL(ROLLUPS_DDL).format(table))
        execute_values(cur, sql.SQL("INSERT INTO {} (delta_id, region, model, model_version, hour, n, embedding_sum, "
                                    "unk_rate_sum, with_unk) VALUES %s").format(table).as_string(cur), rollups)


def make_rows(rng, n: int, labels: list[str], start: datetime, hours: int, prefix: str) -> list[dict]:
    rows = []
    for i in range(n):
        label = labels[int(rng.integers(len(labels)))] if rng.random() > 0.1 else "oos"
        length = int(rng.choice([0, 3, 12, 25, 44, 70, 130, 600]))
        text = None if i % 97 == 0 else "x" * length
        prob = float(rng.choice([0.0, 0.05, 0.5, 1.0])) if i % 50 == 0 else float(rng.beta(5, 1))
        rows.append({
            "id": f"{prefix}-{i}", "region": "global", "model": "intent", "model_version": "v2" if i % 3 else "v1",
            "label": label, "probability": prob, "clean_text": text, "cache_hit": bool(rng.random() < 0.4),
            "latency_ms": float(rng.gamma(2.0, 5.0)),
            "predicted_at": start + timedelta(seconds=float(rng.uniform(0, hours * 3600))),
        })
    return rows


def training_reference(rng, n: int = 5500) -> tuple[str, dict]:
    y = [LABELS[i % len(LABELS)] for i in range(n - n // 10)] + ["oos"] * (n // 10)
    emb = rng.normal(size=(n, 384)) + 0.3
    stats = reference_stats(classes=[*LABELS, "oos"], y_pred=y, confidence=rng.beta(5, 1, size=n),
                            texts=["x" * int(k) for k in rng.choice([12, 25, 44], size=n)], unk_rate=np.zeros(n),
                            embeddings=emb, oos_label="oos", oos_threshold=0.48)
    return "vref", json.loads(json.dumps(stats))  # as read back from reference.json


def test_sql_aggregates_agree_with_numpy_over_the_same_rows(bare_stack):
    settings = bare_stack.settings
    rng = np.random.default_rng(1)
    start = NOW - timedelta(hours=48)
    rows = make_rows(rng, 3000, LABELS[:20], start, 48, "cur")
    outside = make_rows(rng, 200, LABELS[:20], start - timedelta(hours=10), 9, "old")  # before the window
    insert_rows(settings, rows + outside)
    sums = rng.normal(size=(3, 384))
    insert_rollups(settings, [(f"w-{i}", "global", "intent", "v2", start + timedelta(hours=i), 10 + i,
                               sums[i].tolist(), 0.5 * i, i) for i in range(3)]
                   + [("w-old", "global", "intent", "v2", start - timedelta(hours=2), 99, [9.0] * 384, 9.0, 9)])

    with _connect(settings) as conn, conn.cursor() as cur:
        side = window_side(cur, settings.pg_schema, "global", "intent", start, NOW, 0.48)

    probs = np.array([r["probability"] for r in rows])
    assert side.n == len(rows)
    assert side.labels == {k: float(v) for k, v in Counter(r["label"] for r in rows).items()}
    assert side.confidence_counts == histogram_counts(np.clip(probs, 0, 1), CONFIDENCE_EDGES)
    assert side.below_oos == float(np.sum(probs < 0.48))
    assert side.oos == float(sum(r["label"] == "oos" for r in rows))
    texts = [r["clean_text"] for r in rows if r["clean_text"] is not None]
    assert side.length_counts == histogram_counts([len(t) for t in texts], TEXT_LENGTH_EDGES)
    assert side.versions == dict(Counter(r["model_version"] for r in rows))

    by_hour: dict[datetime, list[dict]] = {}
    for r in rows:
        by_hour.setdefault(r["predicted_at"].replace(minute=0, second=0, microsecond=0), []).append(r)
    assert [h["hour"] for h in side.hours] == sorted(by_hour)
    for h in side.hours:
        group = by_hour[h["hour"]]
        lat = np.array([r["latency_ms"] for r in group])
        assert h["n"] == len(group)
        assert h["cache_hit_rate"] == pytest.approx(np.mean([r["cache_hit"] for r in group]), abs=1e-12)
        assert h["oos_rate"] == pytest.approx(np.mean([r["label"] == "oos" for r in group]), abs=1e-12)
        assert h["p50_ms"] == pytest.approx(np.quantile(lat, 0.5), abs=1e-9)
        assert h["p99_ms"] == pytest.approx(np.quantile(lat, 0.99), abs=1e-9)
    all_lat = np.array([r["latency_ms"] for r in rows])
    assert side.latency_ms["p99"] == pytest.approx(np.quantile(all_lat, 0.99), abs=1e-9)

    n = 10 + 11 + 12
    assert side.rollup_n == n
    assert side.centroid == pytest.approx((sums.sum(axis=0) / n).tolist(), abs=1e-9)
    assert side.unk_rate == pytest.approx(1.5 / n) and side.share_with_unk == pytest.approx(3 / n)


@pytest.mark.parametrize("shifted", [False, True])
def test_a_shifted_label_mix_raises_the_label_flags_and_an_unshifted_one_does_not(bare_stack, tmp_path, shifted):
    settings = bare_stack.settings
    rng = np.random.default_rng(2)
    labels = LABELS[:8] if shifted else LABELS
    insert_rows(settings, make_rows(rng, 3000, labels, NOW - timedelta(days=6), 6 * 24, "cur"))

    summary = build_report(settings, "global", "intent", timedelta(days=7), "training", tmp_path / "out", now=NOW,
                           head_reference=training_reference(rng))

    m = summary["metrics"]
    assert m["labels.psi"]["flag"] is shifted
    assert m["labels.js_distance"]["flag"] is shifted
    assert summary["drift"] == bool(summary["flags"]) == any(x["flag"] for x in m.values())
    emb = m["embedding.cosine_distance"]  # no serving rollups in this window: reported, never flagged
    assert (emb["value"], emb["available"], emb["flag"]) == (None, False, False)
    if shifted:
        assert {x["label"] for x in summary["labels_moved"]["up"]} <= set(LABELS[:8])
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["metrics"]["labels.psi"] == m["labels.psi"]
    assert on_disk["window"] == {"start": "2026-11-21T12:00:00Z", "end": "2026-11-28T12:00:00Z", "length": "7d"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert summary["report"] == str((tmp_path / "out" / "report.html").resolve())


def test_a_window_reference_with_the_same_mix_raises_no_flag(bare_stack, tmp_path):
    settings = bare_stack.settings
    rng = np.random.default_rng(3)
    insert_rows(settings, make_rows(rng, 2500, LABELS, NOW - timedelta(days=14), 7 * 24, "ref")
                + make_rows(rng, 2500, LABELS, NOW - timedelta(days=7), 7 * 24, "cur"))

    summary = build_report(settings, "global", "intent", timedelta(days=7), "7d", tmp_path, now=NOW,
                           head_reference=("vref", {"oos_threshold": 0.48}))

    assert summary["reference"]["kind"] == "window"
    assert summary["rows"] == {"current": 2500, "reference": 2500}
    assert summary["drift"] is False, summary["flags"]


def test_an_empty_window_raises_empty_window(bare_stack, tmp_path):
    insert_rows(bare_stack.settings, make_rows(np.random.default_rng(4), 50, LABELS, NOW - timedelta(days=30), 24, "o"))
    with pytest.raises(EmptyWindow, match="no inferences of global/intent in the current window"):
        build_report(bare_stack.settings, "global", "intent", timedelta(days=7), "training", tmp_path, now=NOW,
                     head_reference=("vref", {"oos_threshold": 0.48}))
    assert not (tmp_path / "report.html").exists()


def test_the_cli_exits_2_for_an_empty_window_and_for_a_head_without_reference(bare_stack, tmp_path):
    def run(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", "drift-report", "--region", "global", "--model",
                               "intent", "--current", "7d", "--out", str(tmp_path), *flags],
                              env=bare_stack.env, capture_output=True, text=True, timeout=BOUND_S)

    empty = run("--reference", "7d")  # this stack's registry names no head: only the window is needed
    assert empty.returncode == 2, empty.stderr
    assert "no inferences of global/intent in the current window" in empty.stderr
    unknown = run()  # the training reference needs a live head
    assert unknown.returncode == 2, unknown.stderr
    assert "no live head global/intent" in unknown.stderr
    bad = run("--reference", "3m")
    assert bad.returncode == 2 and "--reference" in bad.stderr
    assert not (tmp_path / "report.html").exists()


def test_the_training_reference_is_the_live_heads_reference_json(stack, tmp_path):
    from models.registry.pointers import read_all

    pointer = read_all(stack.settings).get(("global", "intent"))
    if pointer is None:
        pytest.fail("no live global/intent head: run `make train` (the test set-up does)")
    rng = np.random.default_rng(5)
    insert_rows(stack.settings, make_rows(rng, 500, ["balance", "pin_change"], NOW - timedelta(days=2), 24, "cur"))

    summary = build_report(stack.settings, "global", "intent", timedelta(days=7), "training", tmp_path, now=NOW)

    assert summary["reference"] == {"kind": "training", "version": pointer.version, "rows": summary["rows"]["reference"]}
    assert summary["rows"]["reference"] > 1000  # the head's evaluation rows
    assert summary["metrics"]["labels.js_distance"]["flag"] is True  # two labels against 151
    assert {x["label"] for x in summary["labels_moved"]["up"]} == {"balance", "pin_change"}


def test_drift_watch_checks_every_live_head_once_and_publishes_one_alert_per_tripped_flag(stack, tmp_path):
    """`drift-watch --once`: global/intent's last 24 h hold two labels only (drift), the other live
    heads have no rows (skipped, not failed); each tripped flag is one message on drift.alerts."""
    from models.registry.pointers import read_all
    from schemas.observations import DriftAlert

    live = sorted(read_all(stack.settings))
    if ("global", "intent") not in live:
        pytest.fail("no live global/intent head: run `make train` (the test set-up does)")
    now = datetime.now(UTC)
    insert_rows(stack.settings, make_rows(np.random.default_rng(6), 600, ["balance", "pin_change"],
                                          now - timedelta(hours=20), 18, "watch"))

    done = subprocess.run([sys.executable, "-m", "streams.cli", "drift-watch", "--once", "--current", "24h",
                           "--out", str(tmp_path), "--json"], env=stack.env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["checked"] == ["global/intent"]
    assert sorted(figures["empty"]) == sorted(f"{r}/{m}" for r, m in live if (r, m) != ("global", "intent"))
    assert figures["failed"] == {}
    flagged = {a["metric"] for a in figures["alerts"]}
    assert {"labels.js_distance", "labels.psi"} <= flagged

    on_topic = [DriftAlert.model_validate(m) for m in stack.read(stack.settings.topic_alerts, len(figures["alerts"]))]
    assert sorted(a.metric for a in on_topic) == sorted(flagged)
    assert {(a.region, a.model, a.reference, a.window, a.rows) for a in on_topic} == {("global", "intent", "training", "1d", 600)}  # 24h, as the report names it
    assert len({a.check_id for a in on_topic}) == 1
    for alert in on_topic:
        assert alert.value >= alert.threshold
        assert (tmp_path / "global" / "intent").exists() and alert.report_path.endswith("report.html")
        assert json.loads((Path(alert.report_path).parent / "summary.json").read_text())["drift"] is True


@pytest.mark.parametrize("shifted", [False, True])
def test_the_drift_demo_trips_the_label_flag_and_the_plain_demo_does_not(stack, tmp_path, shifted):
    """End to end: the demo stream through a real worker and sink, then the report of its window
    against the live head's training reference. With ``demo --drift`` the second half comes from
    three domains only: the label flags trip; the plain demo (the test split's own mix) must not."""
    from models.registry.lifecycle import active_heads
    from streams.app import READY_LINE
    from streams.tools.demo_feed import Shift, run_demo

    heads = active_heads(stack.settings) or pytest.fail("no active heads: run `make train`")
    stack.start("worker", READY_LINE)
    stack.start("sink", "sink started")
    figures = run_demo(stack.settings, heads, 1200, timeout_s=300, seed=21, shift=Shift() if shifted else None)
    assert figures["complete"] and figures["db_rows"] == figures["expected_predictions"], figures

    summary = build_report(stack.settings, "global", "intent", timedelta(hours=1), "training", tmp_path)

    assert summary["rows"]["current"] > 300  # global's share of the demo (regions take turns)
    labels = summary["metrics"]
    assert labels["labels.psi"]["flag"] is shifted, labels["labels.psi"]
    assert labels["labels.js_distance"]["flag"] is shifted, labels["labels.js_distance"]
    if shifted:
        from models.datasets import load_domain_lists

        domains = load_domain_lists()
        ups = {x["label"] for x in summary["labels_moved"]["up"]}
        assert ups <= {i for d in Shift().domains for i in domains[d]}, ups
