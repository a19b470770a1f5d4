"""Daemon names, their files per app id, and finding, waiting for and stopping them (no services)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
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
from ops.processes import read_pid, read_pid_record, record_pid, wait_until
from schemas.settings import Settings

SLEEP = "import time; time.sleep(120)"


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

    def start(settings: Settings, name: str, log_text: str = "", script: str = SLEEP, **popen):
        files = daemon_files(settings, name)
        files.pid.parent.mkdir(parents=True, exist_ok=True)
        files.log.parent.mkdir(parents=True, exist_ok=True)
        files.log.write_text(log_text)
        command = "sink" if name == "sink" else "worker"
        proc = subprocess.Popen([sys.executable, "-c", script, "streams.cli", command, files.marker], **popen)
        started.append(proc)
        record_pid(files.pid, proc.pid)
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


def test_wait_ready_returns_once_every_worker_logged_the_ready_line(tmp_path: Path, fake_daemons, monkeypatch):
    settings = _settings(tmp_path)
    fake_daemons(settings, "worker-1", log_text=f"starting\n{READY_LINE}\n")
    files = daemon_files(settings, "worker-2")
    # worker-2 logs the ready line when the test writes a line to its standard input
    script = f"import sys; sys.stdin.readline(); open({str(files.log)!r}, 'a').write({READY_LINE!r} + '\\n'); " + SLEEP
    late = fake_daemons(settings, "worker-2", log_text="starting\n", script=script, stdin=subprocess.PIPE)
    looked, lookups = threading.Event(), []
    real = daemons.daemon_process

    def counted(settings_: Settings, name: str):  # called once per check while worker-2 is not ready
        lookups.append(name)
        if lookups.count("worker-2") >= 3:
            looked.set()
        return real(settings_, name)

    monkeypatch.setattr(daemons, "daemon_process", counted)
    answer: list[list[str]] = []
    waiter = threading.Thread(target=lambda: answer.append(
        wait_ready(settings, ["sink", "worker-1", "worker-2"], timeout=120, interval=0.01)))
    waiter.start()
    assert looked.wait(60), "wait_ready kept looking at worker-2"
    assert waiter.is_alive() and answer == [], "it did not return while worker-2 had not logged the ready line"
    assert "worker-1" not in lookups, "worker-1 was ready at the first look"
    late.stdin.write(b"go\n")
    late.stdin.close()
    waiter.join(60)
    assert answer == [["worker-1", "worker-2"]], "it returned once both were ready; the sink has no ready line"


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


# --- the start race: a child that has not exec'd yet, a pid that is someone else's --------------

FAKE_DAEMON = f"""
import os, sys, time
if sys.argv[2] == "worker":
    if os.environ["PHRASESTREAM_WORKER_INDEX"] in os.environ.get("FAKE_FAILING", "").split(","):
        sys.exit(3)
    print({READY_LINE!r}, flush=True)
time.sleep(120)
"""


@pytest.fixture
def fake_start(tmp_path: Path, monkeypatch) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    """Settings whose daemons run a stand-in (a worker logs the ready line at once) instead of the stream."""
    settings = _settings(tmp_path)
    monkeypatch.setattr(daemons, "daemon_argv", lambda name, files: [
        sys.executable, "-c", FAKE_DAEMON, "streams.cli", "sink" if name == "sink" else "worker", files.marker])
    yield settings
    stop_daemons(settings, say=lambda _line: None)


def _before_exec(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Make every process look as a child does between fork and exec: no command line yet."""
    monkeypatch.setattr(psutil.Process, "cmdline", lambda self: [])


def test_a_pid_file_records_the_pid_and_its_create_time(tmp_path: Path):
    pid_file = tmp_path / "w.pid"
    created = record_pid(pid_file, os.getpid())
    assert read_pid_record(pid_file) == (os.getpid(), pytest.approx(created, abs=0.001))
    assert read_pid(pid_file) == os.getpid()
    assert created == psutil.Process().create_time()
    assert [p.name for p in tmp_path.iterdir()] == ["w.pid"], "no partial file is left beside it"


def test_a_daemon_is_ours_by_its_create_time_even_before_it_has_execd(tmp_path: Path, fake_daemons, monkeypatch):
    settings = _settings(tmp_path)
    w1, sink = fake_daemons(settings, "worker-1"), fake_daemons(settings, "sink")
    _before_exec(monkeypatch)
    assert running_daemons(settings) == {"sink": sink.pid, "worker-1": w1.pid}
    assert read_pid(daemon_files(settings, "worker-1").pid) == w1.pid, "its pid file is kept"
    assert stop_daemons(settings, say=lambda _line: None) == ["worker-1", "sink"]
    assert w1.wait(10) is not None and sink.wait(10) is not None


def test_a_recorded_pid_whose_create_time_differs_is_not_ours(tmp_path: Path):
    settings = _settings(tmp_path)
    files = daemon_files(settings, "worker-1")
    files.pid.parent.mkdir(parents=True)
    earlier = psutil.Process().create_time() - 100  # pytest is alive, but it is not the process recorded
    files.pid.write_text(f"{os.getpid()} {earlier:.3f}\n")
    assert running_daemons(settings) == {}
    assert not files.pid.exists(), "the stale pid file is removed"


def test_a_recorded_daemon_whose_clock_was_stepped_is_still_ours_by_its_marker(tmp_path: Path, fake_daemons):
    settings = _settings(tmp_path)
    w1 = fake_daemons(settings, "worker-1")
    files = daemon_files(settings, "worker-1")
    # a command line is only there once the child has exec'd (just after Popen it may still be empty)
    assert wait_until(lambda: files.marker in psutil.Process(w1.pid).cmdline(), timeout=60, interval=0.01)
    files.pid.write_text(f"{w1.pid} {psutil.Process(w1.pid).create_time() + 3600:.3f}\n")
    assert running_daemons(settings) == {"worker-1": w1.pid}


def test_start_finds_every_worker_it_spawned_even_before_they_execd(fake_start: Settings, monkeypatch):
    _before_exec(monkeypatch)  # the race of issue 16: every command line read is still empty
    lines: list[str] = []
    pids = daemons.start_daemons(fake_start, workers=2, say=lines.append)
    assert set(pids) == {"sink", "worker-1", "worker-2"}
    assert not any("not ours" in line or "exited" in line for line in lines), lines
    assert running_daemons(fake_start) == pids
    for name, pid in pids.items():
        assert read_pid_record(daemon_files(fake_start, name).pid) == (
            pid, pytest.approx(psutil.Process(pid).create_time(), abs=0.01))
    assert {d.name: d.pid for d in daemon_status(fake_start)} == pids
    assert stop_daemons(fake_start, say=lambda _line: None) == ["worker-1", "worker-2", "sink"]
    assert not any(psutil.pid_exists(pid) for pid in pids.values())


def test_start_that_fails_midway_stops_what_it_started_and_leaves_the_rest(fake_start: Settings, fake_daemons,
                                                                            monkeypatch):
    before = fake_daemons(fake_start, "worker-1", log_text=f"{READY_LINE}\n")  # running before start
    monkeypatch.setenv("FAKE_FAILING", "2")
    _before_exec(monkeypatch)
    lines: list[str] = []
    with pytest.raises(DaemonError, match=r"worker-2 exited with code 3; its log"):
        daemons.start_daemons(fake_start, workers=3, say=lines.append)
    spawned = {line.split(":")[0]: int(line.split("pid ")[1].split(")")[0]) for line in lines if "started (pid" in line}
    assert set(spawned) == {"sink", "worker-2", "worker-3"}
    assert not any(psutil.pid_exists(pid) for pid in spawned.values()), "no started daemon is left running"
    assert [line.split(":")[0] for line in lines if "as start did not finish" in line] == ["worker-3", "worker-2",
                                                                                          "sink"]
    assert running_daemons(fake_start) == {"worker-1": before.pid}, "the worker that ran before is left alone"
    assert not daemon_files(fake_start, "worker-3").pid.exists() and not daemon_files(fake_start, "sink").pid.exists()
