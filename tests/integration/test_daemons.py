"""`phrasestream start --workers N` on the live services: N ready workers and a sink, listed by `status`.

The daemons are stopped through ``ops.daemons`` (never ``phrasestream stop``, which would also
stop the broker and the database the whole suite shares).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from bounds import BOUND_S

from ops.daemons import READY_LINE, READY_TIMEOUT_S, daemon_files, running_daemons, stop_daemons
from ops.processes import read_pid_record

pytestmark = pytest.mark.integration


def _phrasestream(stack, *args: str, timeout: float = READY_TIMEOUT_S + BOUND_S) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=stack.env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def daemons_stack(stack) -> Iterator:  # type: ignore[no-untyped-def,type-arg]
    """The stack; at the end its app id's daemons are stopped and their files leave the shared home.

    The logs are kept in the test's temporary folder (``stack.logs``).
    """
    yield stack
    stop_daemons(stack.settings, say=lambda _line: None)
    files = daemon_files(stack.settings, "sink")
    if files.log.parent.is_dir():
        shutil.copytree(files.log.parent, stack.logs / "daemons", dirs_exist_ok=True)
    for folder in (files.pid.parent, files.log.parent):
        shutil.rmtree(folder, ignore_errors=True)


def test_start_two_workers_then_scale_to_one(daemons_stack):
    stack = daemons_stack
    res = _phrasestream(stack, "start", "--workers", "2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "not ours" not in res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-3000:]
    running = running_daemons(stack.settings)
    assert set(running) == {"sink", "worker-1", "worker-2"}, res.stdout[-3000:]
    for index in (1, 2):
        name = f"worker-{index}"
        files = daemon_files(stack.settings, name)
        assert READY_LINE in files.log.read_text(errors="replace"), f"{name} is not ready"
        assert files.log.parent.name == stack.settings.app_id
        pid, created = read_pid_record(files.pid) or (None, None)
        assert pid == running[name] and created == pytest.approx(psutil.Process(pid).create_time(), abs=0.01)
        assert psutil.Process(running[name]).environ()["PHRASESTREAM_WORKER_INDEX"] == str(index)

    status = _phrasestream(stack, "status", timeout=BOUND_S)
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.startswith(("sink", "worker-"))}
    for name, pid in running.items():
        assert f"running (pid {pid})" in lines[name], status.stdout
        assert str(daemon_files(stack.settings, name).log) in lines[name]

    res = _phrasestream(stack, "start", "--workers", "1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"worker-1: already running (pid {running['worker-1']})" in res.stdout
    assert "worker-2: stopped" in res.stdout
    assert running_daemons(stack.settings) == {"sink": running["sink"], "worker-1": running["worker-1"]}

    assert stop_daemons(stack.settings, say=lambda _line: None) == ["worker-1", "sink"]
    assert running_daemons(stack.settings) == {}
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in running.values())
