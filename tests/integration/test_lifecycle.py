"""`phrasestream models`, `promote` and `rollback` on the real registry: the compacted Kafka
topic, the bundles and the history in PostgreSQL (heads with metadata only: no training)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from models.heads import METADATA_FILE, HeadRef
from models.registry.lifecycle import WHAT_WAS_LIVE_SQL, live_at, live_ref
from streams import cli

pytestmark = pytest.mark.integration


def built(root: Path, region: str, model: str, version: str, accuracy: float) -> HeadRef:
    """A head folder with metadata only (no other files: its checksum list is empty)."""
    ref = HeadRef(region, model, version)
    folder = ref.path(root)
    folder.mkdir(parents=True)
    meta = {"format": 2, "ref": str(ref), "created_at": f"2026-11-{version[-2:]}T10:00:00+00:00", "n_classes": 3,
            "metrics": {"eval": {"accuracy": accuracy, "weighted_f1": accuracy - 0.01, "macro_f1": accuracy - 0.02}},
            "training": {"n_train": 100, "n_eval": 20}, "files": {}}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    return ref


@pytest.fixture
def home(bare_stack, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """This test's topics and schema, and an empty models folder ``<home>/models``."""
    for key, value in bare_stack.env.items():
        if key.startswith("PHRASESTREAM_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PHRASESTREAM_MODELS_DIR", str(tmp_path / "models"))
    tmp_path.joinpath("models").mkdir()
    yield tmp_path


def bare_stack_settings():  # type: ignore[no-untyped-def]
    from schemas.settings import Settings

    return Settings()


def history_rows(settings) -> list[dict]:  # type: ignore[no-untyped-def]
    with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(settings.pg_schema, "model_history")))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def live(capsys, region: str = "eu") -> dict[str, str]:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "models", "--region", region, "--json")
    assert code == 0
    rows = json.loads(out.strip().splitlines()[-1])
    for r in rows:
        assert {"region", "model", "version", "live", "created_at", "accuracy", "weighted_f1"} <= set(r)
    return {r["model"]: r["version"] for r in rows if r["live"]}


def test_train_promote_train_promote_rollback(capsys, home: Path):  # type: ignore[no-untyped-def]
    root = home / "models"
    built(root, "eu", "support", "v20261101", 0.90)
    assert live(capsys) == {}
    assert run(capsys, "promote", "--region", "eu", "--model", "support", "--version", "v20261101")[0] == 0
    assert live(capsys) == {"support": "v20261101"}
    built(root, "eu", "support", "v20261102", 0.93)
    assert live(capsys) == {"support": "v20261101"}, "a new version is not live until promoted"
    code, out, _ = run(capsys, "promote", "--region", "eu", "--model", "support", "--version", "v20261102",
                       "--reason", "better on March data")
    assert code == 0 and "(was v20261101)" in out
    assert live(capsys) == {"support": "v20261102"}
    code, out, _ = run(capsys, "rollback", "--region", "eu", "--model", "support", "--reason", "complaints")
    assert code == 0 and "to v20261101" in out
    assert live(capsys) == {"support": "v20261101"}

    history = history_rows(bare_stack_settings())
    assert [(h["version"], h["action"], h["from_version"], h["reason"]) for h in history] == [
        ("v20261101", "promote", None, None),
        ("v20261102", "promote", "v20261101", "better on March data"),
        ("v20261101", "rollback", "v20261102", "complaints")]
    assert history[1]["metrics"]["accuracy"] == 0.93


def test_two_rollbacks_step_back_twice(capsys, home: Path):  # type: ignore[no-untyped-def]
    root = home / "models"
    for i, acc in ((1, 0.8), (2, 0.85), (3, 0.9)):
        built(root, "eu", "m", f"v2026110{i}", acc)
        assert run(capsys, "promote", "--region", "eu", "--model", "m", "--version", f"v2026110{i}")[0] == 0
    assert run(capsys, "rollback", "--region", "eu", "--model", "m")[0] == 0
    assert live(capsys) == {"m": "v20261102"}
    assert run(capsys, "rollback", "--region", "eu", "--model", "m")[0] == 0
    assert live(capsys) == {"m": "v20261101"}
    code, _, err = run(capsys, "rollback", "--region", "eu", "--model", "m")
    assert code == 2 and "no earlier live version" in err
    assert run(capsys, "rollback", "--region", "eu", "--model", "m", "--to", "v20261103")[0] == 0
    assert live(capsys) == {"m": "v20261103"}


@pytest.mark.parametrize("args, message", [
    (["promote", "--region", "nowhere", "--model", "m", "--version", "v1"], "no head nowhere/m"),
    (["promote", "--region", "eu", "--model", "m", "--version", "v9"], "has no version 'v9'"),
    (["rollback", "--region", "eu", "--model", "nope"], "no head eu/nope"),
    (["rollback", "--region", "eu", "--model", "m", "--to", "v9"], "has no version 'v9'"),
    (["models", "--region", "nowhere"], "no heads in region 'nowhere'"),
])
def test_unknown_regions_models_and_versions_exit_2(capsys, home: Path, args: list[str], message: str):  # type: ignore[no-untyped-def]
    built(home / "models", "eu", "m", "v20261101", 0.8)
    run(capsys, "promote", "--region", "eu", "--model", "m", "--version", "v20261101")
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_head_whose_files_changed_is_not_promoted(capsys, home: Path):  # type: ignore[no-untyped-def]
    ref = built(home / "models", "eu", "m", "v20261101", 0.8)
    folder = ref.path(home / "models")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["files"] = {"weights.safetensors": "0" * 64}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    (folder / "weights.safetensors").write_bytes(b"not the weights")
    code, _, err = run(capsys, "promote", "--region", "eu", "--model", "m", "--version", "v20261101")
    assert code == 2 and "sha256" in err
    assert live_ref(bare_stack_settings(), "eu", "m") is None


def test_the_history_table_says_what_was_live_at_any_time(capsys, home: Path):  # type: ignore[no-untyped-def]
    """Promotions and rollbacks of two heads; the query in docs/registry.md answers "what was live at T"."""
    root = home / "models"
    for i in (1, 2, 3):
        built(root, "eu", "m", f"v2026110{i}", 0.8 + i / 100)
    built(root, "eu", "other", "v20261101", 0.7)
    steps = [["promote", "--region", "eu", "--model", "m", "--version", "v20261101"],
             ["promote", "--region", "eu", "--model", "other", "--version", "v20261101"],
             ["promote", "--region", "eu", "--model", "m", "--version", "v20261102"],
             ["promote", "--region", "eu", "--model", "m", "--version", "v20261103"],
             ["rollback", "--region", "eu", "--model", "m"],
             ["rollback", "--region", "eu", "--model", "m"],
             ["rollback", "--region", "eu", "--model", "m", "--to", "v20261103"]]
    moments = [datetime.now(UTC)]
    for step in steps:
        time.sleep(0.05)
        assert run(capsys, *step)[0] == 0, step
        time.sleep(0.05)
        moments.append(datetime.now(UTC))
    expected = [{},
                {("eu", "m"): "v20261101"},
                {("eu", "m"): "v20261101", ("eu", "other"): "v20261101"},
                {("eu", "m"): "v20261102", ("eu", "other"): "v20261101"},
                {("eu", "m"): "v20261103", ("eu", "other"): "v20261101"},
                {("eu", "m"): "v20261102", ("eu", "other"): "v20261101"},
                {("eu", "m"): "v20261101", ("eu", "other"): "v20261101"},
                {("eu", "m"): "v20261103", ("eu", "other"): "v20261101"}]
    settings = bare_stack_settings()
    assert [live_at(settings, t) for t in moments] == expected
    # the rows say when, what, from which version, and the metrics at the time
    rows = history_rows(settings)
    assert [r["action"] for r in rows] == ["promote"] * 4 + ["rollback"] * 3
    assert rows[4]["from_version"] == "v20261103" and rows[4]["version"] == "v20261102"
    assert rows[3]["metrics"]["accuracy"] == pytest.approx(0.83)
    assert all(r["at"] is not None and r["host"] for r in rows)


def test_the_registry_docs_show_the_history_query():
    docs = " ".join((Path(__file__).resolve().parents[2] / "docs" / "registry.md").read_text(encoding="utf-8").split())
    query = " ".join(WHAT_WAS_LIVE_SQL.replace("%(t)s", "").split())
    head, tail = query.split("WHERE at <= ")
    assert head in docs and tail in docs, "docs/registry.md shows the query of models.registry.lifecycle.WHAT_WAS_LIVE_SQL"


def test_models_json_lists_versions_only_stored_in_the_database(capsys, home: Path):  # type: ignore[no-untyped-def]
    """A machine with an empty models folder sees (and can promote) what another machine stored."""
    import shutil

    root = home / "models"
    ref = built(root, "eu", "m", "v20261101", 0.8)
    assert run(capsys, "promote", "--region", "eu", "--model", "m", "--version", "v20261101")[0] == 0
    shutil.rmtree(ref.path(root))
    rows = json.loads(run(capsys, "models", "--json")[1].strip().splitlines()[-1])
    assert [(r["version"], r["live"], r["stored"]) for r in rows] == [("v20261101", True, "database")]


def test_a_promotion_migrates_a_schema_that_was_never_brought_up_to_date(capsys, home: Path, monkeypatch):  # type: ignore[no-untyped-def]
    # a deployment upgraded without `phrasestream up`: the history's newer columns come before the write
    import uuid

    schema = f"test_unmigrated_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PHRASESTREAM_PG_SCHEMA", schema)
    settings = bare_stack_settings()
    try:
        built(home / "models", "eu", "support", "v20261101", 0.90)
        assert run(capsys, "promote", "--region", "eu", "--model", "support", "--version", "v20261101")[0] == 0
        assert [(h["version"], h["action"], h["shadow"]) for h in history_rows(settings)] == [
            ("v20261101", "promote", None)]
    finally:
        with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
