"""`promote --shadow`, `promote --shadow --stop`, `review-rule` and plain promotions on the real registry:
the pointers on the compacted topic and the rows of model_history (heads with metadata only: no training)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from test_lifecycle import built

from models.heads import HeadRef
from models.registry.bundles import BundleStore
from models.registry.lifecycle import live_pointers
from schemas.messages import RegistryPointer
from schemas.review import ReviewRule
from schemas.settings import Settings
from streams import cli

pytestmark = pytest.mark.integration

HEAD = ("--region", "eu", "--model", "m")


@pytest.fixture
def home(bare_stack, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """This test's topics and schema, and a models folder holding versions v20261101..03 of eu/m."""
    for key, value in bare_stack.env.items():
        if key.startswith("PHRASESTREAM_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PHRASESTREAM_MODELS_DIR", str(tmp_path / "models"))
    for i, acc in ((1, 0.8), (2, 0.85), (3, 0.9)):
        built(tmp_path / "models", "eu", "m", f"v2026110{i}", acc)
    yield tmp_path


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """Run ``phrasestream args``; return its code, stdout and its ``error:`` lines (the log shares stderr)."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, "".join(line + "\n" for line in out.err.splitlines() if line.startswith("error: "))


def pointer() -> RegistryPointer:
    return live_pointers(Settings())[("eu", "m")]


def history() -> list[dict]:
    settings = Settings()
    with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT version, action, seq, shadow, review FROM {} ORDER BY id").format(
            sql.Identifier(settings.pg_schema, "model_history")))
        return [dict(zip(("version", "action", "seq", "shadow", "review"), row, strict=True)) for row in cur.fetchall()]


def test_shadow_start_stop_and_promotion_write_the_pointers_and_history(capsys, home: Path):  # type: ignore[no-untyped-def]
    assert run(capsys, "promote", *HEAD, "--version", "v20261101")[0] == 0
    code, out, err = run(capsys, "promote", *HEAD, "--shadow", "--version", "v20261102", "--percent", "25")
    assert code == 0, err
    assert "v20261102 runs beside v20261101" in out
    p = pointer()
    stored = BundleStore(Settings()).info(HeadRef("eu", "m", "v20261102"))
    assert (p.version, p.action, p.seq) == ("v20261101", "shadow", 2)
    assert p.shadow is not None and (p.shadow.version, p.shadow.percent) == ("v20261102", 25.0)
    assert stored is not None and (p.shadow.bundle_sha256, p.shadow.bundle_bytes) == (stored.sha256, stored.size_bytes)

    code, out, err = run(capsys, "promote", *HEAD, "--shadow", "--stop")
    assert code == 0 and "stopped the shadow v20261102" in out, err
    p = pointer()
    assert (p.version, p.action, p.seq, p.shadow) == ("v20261101", "shadow", 3, None)

    assert run(capsys, "promote", *HEAD, "--shadow", "--version", "v20261102")[0] == 0
    assert pointer().shadow.percent == 100.0  # type: ignore[union-attr]
    # a promotion of another version keeps the shadow; a rollback too
    assert run(capsys, "promote", *HEAD, "--version", "v20261103")[0] == 0
    p = pointer()
    assert p.version == "v20261103" and p.shadow is not None and p.shadow.version == "v20261102"
    assert run(capsys, "rollback", *HEAD)[0] == 0
    p = pointer()
    assert p.version == "v20261101" and p.shadow is not None and p.shadow.version == "v20261102"
    # promoting the shadow's version makes it live and ends the shadow
    code, out, _ = run(capsys, "promote", *HEAD, "--version", "v20261102")
    assert code == 0
    p = pointer()
    assert p.version == "v20261102" and p.shadow is None and p.action == "promote"

    rows = history()
    assert [(r["version"], r["action"], r["seq"]) for r in rows] == [
        ("v20261101", "promote", 1), ("v20261101", "shadow", 2), ("v20261101", "shadow", 3),
        ("v20261101", "shadow", 4), ("v20261103", "promote", 5), ("v20261101", "rollback", 6),
        ("v20261102", "promote", 7)]
    assert rows[1]["shadow"]["version"] == "v20261102" and rows[1]["shadow"]["percent"] == 25.0
    assert rows[2]["shadow"] is None and rows[4]["shadow"]["version"] == "v20261102" and rows[6]["shadow"] is None


def test_review_rule_is_shown_changed_carried_and_reset(capsys, home: Path):  # type: ignore[no-untyped-def]
    assert run(capsys, "promote", *HEAD, "--version", "v20261101")[0] == 0
    code, out, _ = run(capsys, "review-rule", *HEAD, "--json")
    assert code == 0
    shown = json.loads(out.strip().splitlines()[-1])
    assert shown["source"] == "training" and shown["rule"] == ReviewRule().model_dump(mode="json")

    code, out, err = run(capsys, "review-rule", *HEAD, "--margin", "0.35", "--oos", "off", "--budget", "40")
    assert code == 0, err
    p = pointer()
    assert (p.version, p.action, p.seq) == ("v20261101", "configure", 2)
    assert p.review == ReviewRule(margin=0.35, oos=False, budget_per_hour=40)

    assert run(capsys, "promote", *HEAD, "--version", "v20261102")[0] == 0
    assert pointer().review == ReviewRule(margin=0.35, oos=False, budget_per_hour=40), "a promotion keeps the rule"
    code, out, _ = run(capsys, "review-rule", *HEAD, "--json")
    assert json.loads(out.strip().splitlines()[-1])["source"] == "registry"

    assert run(capsys, "review-rule", *HEAD, "--reset")[0] == 0
    assert pointer().review is None and pointer().action == "configure"
    rows = history()
    assert [r["action"] for r in rows] == ["promote", "configure", "promote", "configure"]
    assert rows[1]["review"]["margin"] == 0.35 and rows[3]["review"] is None


@pytest.mark.parametrize("args, message", [
    (["promote", *HEAD, "--shadow", "--version", "v20261109"], "has no version 'v20261109'"),
    (["promote", *HEAD, "--shadow", "--version", "v20261101"], "already live"),
    (["promote", *HEAD, "--shadow", "--stop"], "runs no shadow"),
    (["promote", "--region", "eu", "--model", "other", "--shadow", "--version", "v1"], "has no live version"),
    (["promote", "--region", "eu", "--model", "other", "--shadow", "--stop"], "has no live version"),
    (["review-rule", "--region", "eu", "--model", "other"], "has no live version"),
    (["review-rule", *HEAD, "--margin", "7"], "margin"),
])
def test_refused_shadow_and_rule_changes_exit_2_and_write_nothing(capsys, home: Path, args: list[str], message: str):  # type: ignore[no-untyped-def]
    assert run(capsys, "promote", *HEAD, "--version", "v20261101")[0] == 0
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert pointer().seq == 1 and len(history()) == 1
