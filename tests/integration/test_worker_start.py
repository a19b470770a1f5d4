"""A worker or sink that starts while no broker answers: it retries, then exits 3 with one line."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from bounds import BOUND_S

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """Return a local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["worker", "sink"])
def test_a_daemon_without_a_broker_retries_then_exits_3_with_one_line(stack, command) -> None:  # type: ignore[no-untyped-def]
    env = {**stack.env, "PHRASESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",
           "PHRASESTREAM_BROKER_WAIT_SECONDS": "4", "PHRASESTREAM_WORKER_METRICS_PORT": "0",
           "PHRASESTREAM_SINK_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "streams.cli", command], env=env, capture_output=True, text=True,
                          timeout=BOUND_S)
    assert done.returncode == 3, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not answer within 4 s" in errors[0], done.stderr[-2000:]
    assert "does not answer; trying again" in done.stdout + done.stderr  # it did retry before giving up
    assert "Traceback" not in done.stdout + done.stderr
