"""The bounded wait every start-up uses, pid files, and what importing the migrations pulls in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ops.processes import ServiceError, read_pid, read_pid_record, wait_until


def test_wait_until_returns_true_once_the_check_passes():
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), timeout=30, interval=0.01) is True


def test_wait_until_gives_up_with_false():
    calls = []
    assert wait_until(lambda: calls.append(1) or False, timeout=0.05, interval=0.01) is False
    assert len(calls) >= 2, "it retried before giving up"


def test_an_exception_in_the_check_ends_the_wait_at_once():
    calls = []

    def exited() -> bool:
        calls.append(1)
        raise ServiceError("the broker exited")

    with pytest.raises(ServiceError, match="exited"):
        wait_until(exited, timeout=30, interval=0.01)
    assert calls == [1]


def test_the_migrations_import_without_the_service_set_up():
    code = ("import json, sys, ops.postgres.migrations; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ops.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["ops.postgres", "ops.postgres.db", "ops.postgres.migrations", "ops.processes"], "the sink needs no broker or server code"


def test_a_pid_file_is_read_from_its_first_line(tmp_path: Path):
    ours, postmaster, bare, empty = (tmp_path / n for n in ("ours.pid", "postmaster.pid", "bare.pid", "empty.pid"))
    ours.write_text("4712 1733472000.530\n")
    postmaster.write_text("4713\n/var/tmp/pg/data\n1733472000\n5432\n")  # PostgreSQL's own pid file
    bare.write_text("4714\n")
    empty.write_text("")
    assert read_pid_record(ours) == (4712, 1733472000.53)
    assert read_pid_record(postmaster) == (4713, None) and read_pid(postmaster) == 4713
    assert read_pid_record(bare) == (4714, None)
    assert read_pid(empty) is None and read_pid(tmp_path / "missing.pid") is None
