"""Check the migration files and the ops helpers without any running service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops import services
from ops.services import MIGRATIONS_DIR, ServiceError, list_migrations
from schemas.settings import Settings


def test_migration_files_are_named_ordered_and_unique():
    files = sorted(p.name for p in MIGRATIONS_DIR.iterdir() if p.suffix == ".sql")
    assert files, "no migrations found"
    migrations = list_migrations()
    assert [m.path.name for m in migrations] == files
    versions = [m.version for m in migrations]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    assert versions == list(range(1, len(versions) + 1)), "versions must have no gaps"


def test_migrations_are_schema_agnostic_and_not_empty():
    for mig in list_migrations():
        body = re.sub(r"--[^\n]*", "", mig.sql).strip()
        assert body.endswith(";"), f"{mig.path.name}: last statement not terminated"
        assert not re.search(r"\bpublic\.", body, re.I), f"{mig.path.name} hard-codes the public schema"
        assert len(mig.checksum) == 64


def test_inferences_table_has_the_columns_and_key():
    sql = (MIGRATIONS_DIR / "001_inferences.sql").read_text()
    body = re.search(r"CREATE TABLE IF NOT EXISTS inferences \((.*?)\n\);", sql, re.S).group(1)
    for column, type_ in [
        ("id", "text"), ("region", "text"), ("model", "text"), ("model_version", "text"),
        ("label", "text"), ("probability", "double precision"), ("top_k", "jsonb"),
        ("clean_text", "text"), ("embedder_version", "text"), ("cache_hit", "boolean"),
        ("latency_ms", "double precision"), ("received_at", "timestamptz"),
        ("predicted_at", "timestamptz"), ("stored_at", "timestamptz"),
    ]:
        assert re.search(rf"^\s*{column}\s+{type_}\b", body, re.M), f"column {column} {type_} missing"
    assert "PRIMARY KEY (id, model, model_version)" in body
    assert re.search(r"ON inferences \(region, model, predicted_at\)", sql)
    assert re.search(r"ON inferences \(label\)", sql)


def test_list_migrations_rejects_bad_names_and_duplicates(tmp_path: Path):
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "002_b.sql").write_text("SELECT 1;")
    assert [m.version for m in list_migrations(tmp_path)] == [1, 2]
    (tmp_path / "002_c.sql").write_text("SELECT 1;")
    with pytest.raises(ServiceError, match="share version 2"):
        list_migrations(tmp_path)
    (tmp_path / "002_c.sql").unlink()
    (tmp_path / "3-bad.sql").write_text("SELECT 1;")
    with pytest.raises(ServiceError, match="not NNN_lower_snake"):
        list_migrations(tmp_path)


def test_topic_specs_follow_settings():
    s = Settings(topic_in="t.in", topic_out="t.out", topic_dlq="t.dlq", topic_labeled="t.lab",
                 partitions_in=6, partitions_out=3)
    specs = services.topic_specs(s)
    assert set(specs) == {"t.in", "t.out", "t.dlq", "t.lab"}
    assert specs["t.in"][0] == 6 and specs["t.out"][0] == 3
    assert specs["t.in"][0] >= 4
    for _, cfg in specs.values():
        assert cfg["cleanup.policy"] == "delete"
        assert int(cfg["retention.ms"]) > 0
    assert int(specs["t.in"][1]["retention.ms"]) >= 30 * services.DAY_MS
    assert int(specs["t.lab"][1]["retention.ms"]) >= 30 * services.DAY_MS


def test_kafka_config_is_single_node_kraft(tmp_path: Path):
    s = Settings(home=tmp_path)
    paths = services.Paths.of(s)
    paths.make_dirs()
    services._write_kafka_config(s, paths)
    props = dict(line.split("=", 1) for line in paths.kafka_config.read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == (f"PLAINTEXT://127.0.0.1:{s.kafka_port},"
                                  f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}")
    assert props["log.dirs"] == str(tmp_path.resolve() / "kafka" / "data")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_dsn_password_is_never_shown():
    shown = services._redacted_dsn("postgresql://u:s3cret@db.example:5433/app")
    assert "s3cret" not in shown
    assert shown == "postgresql://u@db.example:5433/app"
    assert "s3cret" not in services._redacted_dsn("host=h password=s3cret dbname=x user=u")
    assert "s3cret" not in services._redacted_dsn("not a dsn s3cret ===")
