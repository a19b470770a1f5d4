"""`phrasestream up` works from a clone in a private folder (mode 0700), as root or not.

The test clones this repository into a fresh ``mkdtemp`` folder (mode 0700: closed to the
PostgreSQL server's user when we are root), starts its services on ports of their own (so the
suite's broker and database are never touched), checks that PostgreSQL answers and that
nothing the server needs sits where its user cannot reach, then stops and deletes what it
started with ``phrasestream clean``.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from bounds import BOUND_S

from ops import processes
from ops.paths import Paths
from ops.postgres import area as pg_area
from ops.postgres import db
from ops.postgres import local as postgres_local
from schemas.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cli(clone: Path, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=clone, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _server_ids() -> tuple[int, set[int]]:
    """Return the uid and groups PostgreSQL runs with: nobody's when we are root, else ours."""
    ids = postgres_local.pg_os_user()
    if ids is None:
        return os.geteuid(), {os.getegid(), *os.getgroups()}
    return ids[0], {ids[1]}


def test_up_and_status_work_from_a_clone_in_a_private_folder():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail(f"{REPO} is not a git checkout with git installed: this test clones it", pytrace=False)
    private = Path(tempfile.mkdtemp(prefix="phrasestream-clone-"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    clone = private / "p"
    kafka_port, controller_port, pg_port, sasl_port = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHRASESTREAM_", "PG"))}
    env.update(PYTHONPATH=str(clone), PHRASESTREAM_KAFKA_PORT=str(kafka_port),
               PHRASESTREAM_KAFKA_CONTROLLER_PORT=str(controller_port), PHRASESTREAM_PG_PORT=str(pg_port),
               PHRASESTREAM_KAFKA_SASL_PORT=str(sasl_port))
    settings = Settings(_env_file=None, home=clone / ".local", kafka_port=kafka_port,
                        kafka_controller_port=controller_port, pg_port=pg_port, kafka_sasl_port=sasl_port)
    paths = Paths.of(settings)
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120,
                       capture_output=True)
        up = _cli(clone, env, "up")
        assert up.returncode == 0, f"phrasestream up failed in {clone}:\n{up.stdout}\n{up.stderr}"
        assert f"pgdata    new data directory {paths.pg_data}" in up.stdout, up.stdout

        status = _cli(clone, env, "status", timeout=BOUND_S)
        assert status.returncode == 0, status.stderr
        assert "postgres  up" in status.stdout and "kafka     up" in status.stdout, status.stdout
        assert f"pgdata    {paths.pg_data}" in status.stdout

        conn = db.pg_connect(settings)  # the clone's password, from the clone's .local/pg/password
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user, inet_server_port()")
                assert cur.fetchone() == ("phrasestream", pg_port)
        finally:
            conn.close()

        st = paths.pg_password.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        uid, gids = _server_ids()
        server = psutil.Process(processes.read_pid(paths.pg_pid))
        assert server.uids().effective == uid
        for folder in (paths.pg_data, paths.pg_log.parent, Path(server.exe()).parent):
            assert postgres_local._search_denied(folder, uid, gids) is None, f"the server cannot reach {folder}"
        if os.geteuid() == 0:
            area = paths.pg_server
            assert area == pg_area.default_area(paths.home) and clone not in area.parents
            ast = area.lstat()
            assert ast.st_uid == uid and stat.S_IMODE(ast.st_mode) == 0o700, "the area is private"
            assert area in Path(server.exe()).parents, "the server runs from the copy in its area"
            assert (paths.logs / "postgres.log").resolve() == paths.pg_log

        again = _cli(clone, env, "up")
        assert again.returncode == 0 and "pgdata    data in" in again.stdout, again.stdout
    finally:
        cleaned = _cli(clone, env, "clean", timeout=300) if clone.exists() else None
        shutil.rmtree(private, ignore_errors=True)
    assert cleaned is not None and cleaned.returncode == 0, cleaned and cleaned.stderr
    assert not paths.pg_data.exists(), "clean deletes the data, wherever it lives"
    assert not processes.port_open("127.0.0.1", pg_port) and not processes.port_open("127.0.0.1", kafka_port)
