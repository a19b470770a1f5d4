"""The ``phrasestream`` command as a package: its two entry points, what importing it loads, its output helpers."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from imports import loaded

from streams import cli
from streams.cli.output import fail, say

COMMANDS = ("up", "train", "report", "models", "promote", "rollback", "retrain", "drift-report", "drift-watch",
            "worker", "sink", "start", "run", "demo", "produce", "consume", "loadgen", "bench", "status", "stop",
            "clean")


def test_python_dash_m_streams_cli_lists_every_command_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "streams.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: phrasestream")
    listed = done.stdout.split("positional arguments:")[1]
    assert all(f"\n    {name} " in listed for name in COMMANDS)


def test_the_console_script_runs_streams_cli_main():
    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "phrasestream"]
    assert script.value == "streams.cli:main"
    assert script.load() is cli.main


def test_importing_the_command_line_loads_neither_training_nor_tensorflow():
    assert loaded("streams.cli", ("retrain", "models", "faust", "tensorflow")) == [], \
        "a command imports what it needs when it runs (`--help` stays fast)"


def test_fail_says_error_on_stderr_and_returns_the_status(capsys: pytest.CaptureFixture[str]):
    assert fail("no broker", 3) == 3
    assert capsys.readouterr() == ("", "error: no broker\n")


def test_say_prints_on_stdout_and_a_closed_pipe_is_no_error(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]):
    say("worker-1 started")
    assert capsys.readouterr().out == "worker-1 started\n"

    class ClosedPipe:
        tries = 0

        def write(self, _: str) -> int:
            ClosedPipe.tries += 1
            raise BrokenPipeError("the reader is gone")

        def flush(self) -> None:
            raise BrokenPipeError("the reader is gone")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    say("worker-1 stopped")  # raises nothing
    assert ClosedPipe.tries == 1
