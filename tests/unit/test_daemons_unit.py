"""Daemon names, their files per app id, and finding, waiting for and stopping them (no services)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import daemons
from ops.daemons import (
    READY_LINE,
    DaemonError,
    daemon_files,
    daemon_status,
    running_daemons,
    stop_daemon,
    stop_daemons,
    wait_ready,
    worker_index,
    worker_name,
)
from schemas.settings import Settings


def _settings(home: Path, app_id: str = "app-a") -> Settings:
    return Settings(_env_file=None, home=home, app_id=app_id)


def test_worker_names_are_one_based():
    assert [worker_name(i) for i in (1, 2, 10)] == ["worker-1", "worker-2", "worker-10"]
    assert worker_index("worker-10") == 10 and worker_index("sink") is None
    with pytest.raises(ValueError):
        worker_name(0)


def test_files_are_namespaced_by_app_id(tmp_path: Path):
    home = tmp_path.resolve()
    files = daemon_files(_settings(tmp_path), "worker-2")
    assert files.pid == home / "run" / "app-a" / "worker-2.pid"
    assert files.log == home / "logs" / "app-a" / "worker-2.log"
    assert files.previous_log == home / "logs" / "app-a" / "worker-2.log.1"
    assert files.marker == f"--daemon-id={home}/app-a/worker-2"
    other = daemon_files(_settings(tmp_path, "app-b"), "worker-2")
    assert other.pid != files.pid and other.log != files.log and other.marker != files.marker
    assert daemon_files(_settings(tmp_path), "sink").pid == home / "run" / "app-a" / "sink.pid"


@pytest.mark.parametrize("name", ["worker", "worker-0", "worker-x", "../sink", "kafka"])
def test_unknown_daemon_names_are_refused(tmp_path: Path, name: str):
    with pytest.raises(ValueError, match="unknown daemon"):
        daemon_files(_settings(tmp_path), name)


def test_an_app_id_that_is_not_a_folder_name_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot name a folder"):
        daemon_files(_settings(tmp_path, "a/b"), "sink")


@pytest.fixture
def fake_daemons() -> Iterator:  # type: ignore[type-arg]
    """Start stand-ins for daemons: processes whose command line looks like ours, recorded by pid."""
    started: list[subprocess.Popen] = []

    def start(settings: Settings, name: str, log_text: str = "", script: str = "import time; time.sleep(120)"):
        files = daemon_files(settings, name)
        files.pid.parent.mkdir(parents=True, exist_ok=True)
        files.log.parent.mkdir(parents=True, exist_ok=True)
        files.log.write_text(log_text)
        command = "sink" if name == "sink" else "worker"
        proc = subprocess.Popen([sys.executable, "-c", script, "streams.cli", command, files.marker])
        started.append(proc)
        files.pid.write_text(f"{proc.pid}\n")
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_running_daemons_lists_ours_per_app_id_and_stop_ends_them(tmp_path: Path, fake_daemons):
    a, b = _settings(tmp_path), _settings(tmp_path, "app-b")
    w2, sink, w1 = fake_daemons(a, "worker-2"), fake_daemons(a, "sink"), fake_daemons(a, "worker-1")
    other = fake_daemons(b, "worker-1")
    assert running_daemons(a) == {"sink": sink.pid, "worker-1": w1.pid, "worker-2": w2.pid}
    assert running_daemons(b) == {"worker-1": other.pid}

    assert stop_daemon(a, "worker-2", say=lambda _line: None) is True
    assert w2.wait(10) is not None and not daemon_files(a, "worker-2").pid.exists()
    assert stop_daemon(a, "worker-2", say=lambda _line: None) is False
    assert stop_daemons(a, say=lambda _line: None) == ["worker-1", "sink"], "workers first, then the sink"
    assert running_daemons(a) == {}
    assert other.poll() is None, "another app id's daemons are left alone"
    status = {d.name: d for d in daemon_status(a)}
    assert set(status) == {"sink", "worker-1", "worker-2"} and all(d.pid is None for d in status.values())
    assert status["worker-1"].log == daemon_files(a, "worker-1").log


def test_a_pid_file_naming_someone_elses_process_is_ignored(tmp_path: Path):
    settings = _settings(tmp_path)
    files = daemon_files(settings, "worker-1")
    files.pid.parent.mkdir(parents=True)
    files.pid.write_text(f"{os.getpid()}\n")  # pytest: alive, but not a daemon of ours
    assert running_daemons(settings) == {}
    assert not files.pid.exists(), "the stale pid file is removed"


def test_wait_ready_returns_once_every_worker_logged_the_ready_line(tmp_path: Path, fake_daemons):
    settings = _settings(tmp_path)
    fake_daemons(settings, "worker-1", log_text=f"starting\n{READY_LINE}\n")
    fake_daemons(settings, "worker-2", log_text=f"{READY_LINE}\n")
    wait_ready(settings, ["sink", "worker-1", "worker-2"], timeout=5)  # the sink has no ready line


def test_wait_ready_reports_a_worker_that_exited_with_its_log_tail(tmp_path: Path, fake_daemons):
    settings = _settings(tmp_path)
    proc = fake_daemons(settings, "worker-1", log_text="KafkaConnectionError: Unable to bootstrap\n",
                        script="pass")
    proc.wait(10)
    with pytest.raises(DaemonError, match=r"worker-1 exited; its log .*worker-1\.log.*\n.*Unable to bootstrap"):
        wait_ready(settings, ["worker-1"], timeout=30)


def test_wait_ready_is_bounded(tmp_path: Path, fake_daemons):
    settings = _settings(tmp_path)
    fake_daemons(settings, "worker-1", log_text="still recovering the table\n")
    with pytest.raises(DaemonError, match="worker-1 not ready within 1 s"):
        wait_ready(settings, ["worker-1"], timeout=1)


def test_start_daemons_refuses_a_negative_count(tmp_path: Path):
    with pytest.raises(ValueError):
        daemons.start_daemons(_settings(tmp_path), workers=-1)
