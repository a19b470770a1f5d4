"""The shadow sink and `shadow-report` on the real broker and PostgreSQL: shadow predictions produced to
this test's predictions.shadow are stored once by a real sink process; the report pairs them with the
live ones and scores both on labelled phrases replayed from phrases.labeled; empty windows exit 2."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from ops.kafka.topics import create_topics
from schemas.messages import LabeledPhrase, Prediction, ShadowPrediction
from schemas.settings import Settings
from streams import cli
from streams.sinks.postgres import PostgresSink

pytestmark = pytest.mark.integration

HEAD = ("--region", "eu", "--model", "m")
LIVE = {i: "a" if i < 10 else "b" for i in range(20)}
SHADOW = {**LIVE, 0: "c", 1: "c", 10: "a"}


@pytest.fixture
def env(bare_stack, monkeypatch):  # type: ignore[no-untyped-def]
    """This test's stack, with a predictions.shadow topic of its own, in the environment of `phrasestream`."""
    topic = f"{bare_stack.settings.app_id}.predictions.shadow"
    bare_stack.env["PHRASESTREAM_TOPIC_SHADOW"] = topic
    bare_stack.settings = bare_stack.settings.model_copy(update={"topic_shadow": topic})
    create_topics(bare_stack.settings)
    for key, value in bare_stack.env.items():
        if key.startswith("PHRASESTREAM_"):
            monkeypatch.setenv(key, value)
    return bare_stack


def live(i: int, now: datetime) -> Prediction:
    return Prediction(id=f"p{i}", region="eu", model="m", model_version="v1", label=LIVE[i], probability=0.6,
                      top_k=[(LIVE[i], 0.6)], clean_text=f"text {i}", embedder_version="e", cache_hit=False,
                      latency_ms=5.0, received_at=now, predicted_at=now)


def shadow(i: int, now: datetime) -> ShadowPrediction:
    return ShadowPrediction(id=f"p{i}", region="eu", model="m", model_version="v2", label=SHADOW[i], probability=0.7,
                            top_k=[(SHADOW[i], 0.7)], clean_text=f"text {i}", embedder_version="e", cache_hit=False,
                            latency_ms=5.0, received_at=now, predicted_at=now, live_version="v1", live_label=LIVE[i],
                            head_ms=0.3, live_head_ms=0.2)


def count(settings: Settings, table: str) -> int:
    with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(settings.pg_schema, table)))
        return int(cur.fetchone()[0])  # type: ignore[index]


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """Run ``phrasestream args``; return its code, stdout and its ``error:`` lines (the log shares stderr)."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, "".join(line + "\n" for line in out.err.splitlines() if line.startswith("error: "))


def test_the_sink_stores_shadow_predictions_once_and_the_report_pairs_them(capsys, env, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = env.settings
    now = datetime.now(UTC)
    env.start("sink", "sink started")
    env.produce(*(live(i, now).to_bytes() for i in range(20)), topic=settings.topic_out)
    env.produce(*(shadow(i, now).to_bytes() for i in range(20)), topic=settings.topic_shadow)
    env.produce(shadow(3, now).to_bytes(), topic=settings.topic_shadow)  # a redelivery
    env.wait_caught_up(f"{settings.sink_group}-shadow", settings.topic_shadow)
    env.wait_sink_caught_up()
    assert count(settings, "shadow_inferences") == 20, env.tails()
    assert count(settings, "inferences") == 20

    labelled = [("text 0", "c", "review", "random", 10.0), ("text 10", "b", "review", "random", 10.0),
                ("text 1", "c", "review", "margin", None), ("text 2", "a", None, None, None)]
    env.produce(*(LabeledPhrase(text=t, label=lab, region="eu", model="m", source=src, reason=why,
                                sampling_weight=w).to_bytes() for t, lab, src, why, w in labelled),
                topic=settings.topic_labeled)

    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "shadow-report", *HEAD, "--since", "24h", "--out", str(out_dir), "--json")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary == json.loads((out_dir / "summary.json").read_text())
    assert "Shadow report eu/m: v2" in (out_dir / "report.html").read_text()
    assert summary["shadow_version"] == "v2" and summary["live_versions"] == ["v1"]
    assert summary["agreement"] == {"paired": 20, "agreeing": 17, "rate": 0.85}
    conf = summary["confusion"]
    cells = {(r, c): conf["cells"][i][j] for i, r in enumerate(conf["rows"]) for j, c in enumerate(conf["columns"])}
    assert {k: v for k, v in cells.items() if v} == {("a", "a"): 8, ("a", "c"): 2, ("b", "b"): 9, ("b", "a"): 1}
    assert summary["confidence_shift"]["mean"] == pytest.approx(0.1)
    assert summary["head_ms"]["shadow"]["mean"] == pytest.approx(0.3)
    assert summary["head_ms"]["live"]["p99"] == pytest.approx(0.2)
    lab = summary["labelled"]
    assert lab["matched"] == 4 and lab["random_slice"]["n"] == 2 and lab["doubtful"]["n"] == 1
    assert lab["random_slice"]["live"]["accuracy"] == 0.5 and lab["random_slice"]["shadow"]["accuracy"] == 0.5
    assert lab["doubtful"]["live"]["accuracy"] == 0.0 and lab["doubtful"]["shadow"]["accuracy"] == 1.0
    assert lab["all"]["live"]["accuracy"] == 0.5 and lab["all"]["shadow"]["accuracy"] == 0.75

    code, out, _ = run(capsys, "shadow-report", *HEAD)
    assert code == 0 and "agreement 85.0%" in out


def store_live(settings: Settings, n: int) -> None:
    """Store ``n`` live predictions through the sink's own write path (no shadow ones)."""
    from ops.postgres.migrations import apply_migrations

    sink = PostgresSink(settings.dsn, settings.pg_schema, on_connect=lambda: apply_migrations(settings))
    try:
        assert sink.write([live(i, datetime.now(UTC)) for i in range(n)]) == n
    finally:
        sink.close()


def test_an_empty_window_exits_2(capsys, env):  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, "shadow-report", *HEAD, "--since", "1h")
    assert code == 2 and out == ""
    assert err.startswith("error: no live or shadow predictions of eu/m") and len(err.strip().splitlines()) == 1


def test_a_shadow_without_traffic_is_named(capsys, env):  # type: ignore[no-untyped-def]
    store_live(env.settings, 5)
    code, _, err = run(capsys, "shadow-report", *HEAD, "--since", "1h")
    assert code == 2
    assert err.startswith("error: the shadow received no traffic: 5 live predictions of eu/m")


def test_shadow_answers_without_a_stored_live_answer_exit_2(capsys, env):  # type: ignore[no-untyped-def]
    from ops.postgres.migrations import apply_migrations
    from streams.sinks.shadow import shadow_sink

    settings = env.settings
    sink = shadow_sink(settings.dsn, settings.pg_schema, on_connect=lambda: apply_migrations(settings))
    try:
        assert sink.write([shadow(i, datetime.now(UTC)) for i in range(3)]) == 3
    finally:
        sink.close()
    code, _, err = run(capsys, "shadow-report", *HEAD, "--since", "1h")
    assert code == 2
    assert err.startswith("error: 3 shadow predictions of eu/m:v2") and "none pairs with a stored live" in err


@pytest.mark.parametrize("args, message", [
    (["--since", "3m"], "bad history length"),
    (["--since", "0h"], "bad history length"),
    (["--region", "bad/region", "--model", "m"], "region"),
])
def test_bad_report_flags_exit_2(capsys, env, args: list[str], message: str):  # type: ignore[no-untyped-def]
    base = [] if "--region" in args else list(HEAD)
    code, _, err = run(capsys, "shadow-report", *base, *args)
    assert code == 2 and err.startswith("error: ") and message in err
