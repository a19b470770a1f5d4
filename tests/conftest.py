"""Suite-wide options: ``--stress`` runs the fault-injection tests at their full size."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", default=False,
                     help="fault and fuzz tests at full size (the same as PHRASESTREAM_STRESS=1)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--stress"):
        os.environ["PHRASESTREAM_STRESS"] = "1"  # read by tests/integration/faults.py; xdist workers inherit it
