"""Check the migration files and the ops helpers without any running service."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from ops.kafka import local as kafka_local
from ops.kafka import topics
from ops.paths import Paths
from ops.postgres import db
from ops.postgres import local as postgres_local
from ops.postgres.migrations import MIGRATIONS_DIR, list_migrations
from ops.processes import ServiceError
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
                 topic_registry="t.reg", topic_rollups="t.roll", topic_alerts="t.alerts", topic_review="t.rev",
                 topic_shadow="t.shadow", partitions_in=6, partitions_out=3)
    specs = topics.topic_specs(s)
    assert set(specs) == {"t.in", "t.out", "t.dlq", "t.lab", "t.reg", "t.roll", "t.alerts", "t.rev", "t.shadow"}
    registry = specs.pop("t.reg")
    assert registry == (1, {"cleanup.policy": "compact", "retention.ms": "-1"}), \
        "one partition keeps the order of changes; compaction keeps the newest pointer of every head"
    assert specs["t.in"][0] == 6 and specs["t.out"][0] == 3
    assert specs["t.lab"][0] == 6, "labelled examples are partitioned like phrases.in"
    assert specs["t.dlq"][0] == 1
    assert specs["t.alerts"][0] == 1
    assert specs["t.roll"][0] == 1, "a few rollup deltas every 10 s: one partition"
    default = topics.topic_specs(Settings(_env_file=None))
    assert default[Settings.model_fields["topic_in"].default][0] >= 4
    for name, (_, cfg) in specs.items():
        assert cfg["cleanup.policy"] == "delete"
        assert int(cfg["retention.ms"]) > 0 or name == "t.lab"
    assert int(specs["t.in"][1]["retention.ms"]) >= 30 * topics.DAY_MS
    assert specs["t.lab"][1]["retention.ms"] == "-1", "labelled examples are kept for good by default"
    kept_90_days = topics.topic_specs(Settings(topic_labeled="t.lab", labeled_retention_ms=90 * topics.DAY_MS))
    assert kept_90_days["t.lab"][1]["retention.ms"] == str(90 * topics.DAY_MS)


def test_kafka_config_is_single_node_kraft(tmp_path: Path):
    s = Settings(home=tmp_path)
    paths = Paths.of(s)
    paths.make_dirs()
    kafka_local._write_kafka_config(s, paths)
    props = dict(line.split("=", 1) for line in paths.kafka_config.read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == (f"PLAINTEXT://127.0.0.1:{s.kafka_port},SASL_PLAINTEXT://127.0.0.1:{s.kafka_sasl_port},"
                                  f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}")
    assert props["log.dirs"] == str(tmp_path.resolve() / "kafka" / "data")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_dsn_password_is_never_shown():
    shown = db.redacted_dsn("postgresql://u:s3cret@db.example:5433/app")
    assert "s3cret" not in shown
    assert shown == "postgresql://u@db.example:5433/app"
    assert "s3cret" not in db.redacted_dsn("host=h password=s3cret dbname=x user=u")
    assert "s3cret" not in db.redacted_dsn("not a dsn s3cret ===")


LOCAL_DSN = "postgresql://phrasestream@127.0.0.1:15432/phrasestream"


def test_local_dsn_has_no_password_without_the_file(tmp_path: Path):
    s = Settings(_env_file=None, home=tmp_path, pg_port=15432)
    assert s.dsn == LOCAL_DSN
    assert s.pg_password_file == tmp_path / "pg" / "password"


def test_local_dsn_carries_the_quoted_password_from_the_file(tmp_path: Path):
    from psycopg2.extensions import parse_dsn

    password = "p@ss/w:rd %20&x=y?#"
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "password").write_text(password + "\n")
    s = Settings(_env_file=None, home=tmp_path, pg_port=15432)
    assert s.dsn == LOCAL_DSN + "?password=" + quote(password, safe="")
    parsed = parse_dsn(s.dsn)
    assert parsed["password"] == password
    assert (parsed["user"], parsed["host"], parsed["port"], parsed["dbname"]) == (
        "phrasestream", "127.0.0.1", "15432", "phrasestream")
    shown = db.redacted_dsn(s.dsn)
    assert shown == "postgresql://phrasestream@127.0.0.1:15432/phrasestream"
    assert "p@ss" not in shown and quote(password, safe="") not in shown
    assert password not in repr(s)


def test_external_dsn_ignores_the_password_file(tmp_path: Path):
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "password").write_text("local-secret\n")
    s = Settings(_env_file=None, home=tmp_path, pg_dsn="postgresql://u:ext@db:5432/x")
    assert s.dsn == "postgresql://u:ext@db:5432/x"


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_password_file_is_private_and_stable(tmp_path: Path, umask: int):
    paths = Paths(tmp_path)
    paths.make_dirs()
    old = os.umask(umask)
    try:
        first = postgres_local._pg_password(paths)
    finally:
        os.umask(old)
    st = paths.pg_password.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert len(first) >= 32 and postgres_local._pg_password(paths) == first
    assert Settings(_env_file=None, home=tmp_path).dsn.endswith("?password=" + quote(first, safe=""))
    assert [p.name for p in paths.pg_home.iterdir()] == ["password"], "no temporary file left behind"


def test_initdb_password_copy_is_readable_by_the_pg_user_and_deleted(tmp_path: Path):
    paths = Paths(tmp_path, server_dir=tmp_path / "server")
    paths.make_dirs()
    paths.pg_server.mkdir()
    old = os.umask(0o077)
    try:
        with postgres_local._password_file_for_pg(paths, "s3cret") as pwfile:
            st = pwfile.stat()
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == (postgres_local.pg_os_user() or (os.geteuid(),))[0]
            assert pwfile.read_text() == "s3cret\n"
    finally:
        os.umask(old)
    assert pwfile.parent == paths.pg_server, "the server's user reads it: it sits in the server's folder"
    assert not pwfile.exists()


def test_missing_password_file_for_a_password_data_dir_is_a_clear_error(tmp_path: Path):
    paths = Paths(tmp_path, server_dir=tmp_path / "server")
    paths.pg_data.mkdir(parents=True)
    paths.pg_hba.write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    with pytest.raises(ServiceError, match="requires a password but .*password is missing"):
        postgres_local._check_pg_password_file(paths)
    paths.pg_password.parent.mkdir(parents=True)
    paths.pg_password.write_text("s3cret\n")
    postgres_local._check_pg_password_file(paths)


def test_search_denied_names_the_closed_folder(tmp_path: Path):
    me = os.geteuid()
    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o600)  # owner bits apply to `me`: no x
    try:
        assert postgres_local._search_denied(closed / "inner" / "pg", me, set()) == closed
        closed.chmod(0o700)
        assert postgres_local._search_denied(closed / "inner" / "pg", me, set()) is None
    finally:
        closed.chmod(0o700)


def test_unreachable_data_dir_is_explained_before_initdb(tmp_path: Path, monkeypatch):
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o600)
    monkeypatch.setattr(postgres_local, "pg_os_user", lambda: (os.geteuid(), os.getegid()))
    monkeypatch.setattr(postgres_local, "_run_pg", lambda *a, **k: pytest.fail("must fail before running postgres"))
    paths = Paths(tmp_path / ".local", server_dir=closed / "server")
    try:
        with pytest.raises(ServiceError) as err:
            postgres_local._check_pg_can_run(paths, tmp_path / "bin")
    finally:
        closed.chmod(0o700)
    msg = str(err.value)
    assert "PostgreSQL runs as user nobody when phrasestream runs as root" in msg
    assert f"cannot reach {paths.pg_server}" in msg and f"chmod o+x {closed}" in msg
    assert "non-root user" in msg and "PHRASESTREAM_PG_DSN" in msg


def test_pg_binary_the_pg_user_cannot_run_is_explained(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(postgres_local, "pg_os_user", lambda: (os.geteuid(), os.getegid()))

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(postgres_local, "_run_pg", denied)
    with pytest.raises(ServiceError, match=r"cannot run .*postgres .*Permission denied.*chmod -R o\+rX"):
        postgres_local._check_pg_can_run(Paths(tmp_path / ".local", server_dir=tmp_path / "srv"), tmp_path)


def test_maven_and_storage_format_have_timeouts(tmp_path: Path, monkeypatch):
    seen = []

    def slow(cmd, **kwargs):
        seen.append(kwargs.get("timeout"))
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"], output=b"partial", stderr=None)

    monkeypatch.setattr(kafka_local.subprocess, "run", slow)
    monkeypatch.setattr(kafka_local.shutil, "which", lambda _name: "/usr/bin/mvn")
    monkeypatch.setattr(kafka_local, "_java", lambda: "/usr/bin/java")
    s = Settings(_env_file=None, home=tmp_path)
    Paths.of(s).make_dirs()
    with pytest.raises(ServiceError, match="maven did not fetch Kafka .* within 900 s"):
        kafka_local.fetch_kafka_jars(s)
    with pytest.raises(ServiceError, match="kafka storage format did not finish within 120 s"):
        kafka_local._format_kafka_storage(s, Paths.of(s))
    assert seen == [900.0, 120.0]


# The checksums of the migrations that have shipped. A database that applied one refuses to
# start when its bytes change ("changed after it was applied"): a released migration is never
# edited, not even a comment; a change is a new migration. Add a line here for each new one.
SHIPPED = {
    1: "42b1e810d4b03ad7ddb7b6fb2efc8484720006b6a6c4294143ea5f9a170d227d",
    2: "e16a03de53470359568cee44a43bd23298fc12fc857a110585a8cee075987912",
    3: "4e73f13ae61347e89cbf28e5216241a663c0207b791545d7cab65ce1cb9ae301",
}


def test_shipped_migrations_keep_their_bytes() -> None:
    from ops.postgres.migrations import list_migrations

    found = {m.version: m.checksum for m in list_migrations()}
    assert {v: found.get(v) for v in SHIPPED} == SHIPPED
    assert set(found) >= set(SHIPPED)
