"""Suite-wide options: ``--stress`` runs the fault-injection tests at their full size.

Every fault test's ``FAULT {...}`` line is also listed at the end of the run (xdist workers
included), so the figures of a ``make test`` or CI run are in its output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", default=False,
                     help="fault and fuzz tests at full size (the same as PHRASESTREAM_STRESS=1)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--stress"):
        os.environ["PHRASESTREAM_STRESS"] = "1"  # read by tests/integration/faults.py; xdist workers inherit it
    if not hasattr(config, "workerinput"):  # the controller: xdist workers inherit the variable
        fd, path = tempfile.mkstemp(prefix="phrasestream-faults-", suffix=".jsonl")
        os.close(fd)
        os.environ["PHRASESTREAM_FAULTS_FILE"] = path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    path = Path(os.environ.get("PHRASESTREAM_FAULTS_FILE", ""))
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    path.unlink()
    if lines:
        terminalreporter.section("fault test figures")
        for line in lines:
            terminalreporter.write_line(line)
