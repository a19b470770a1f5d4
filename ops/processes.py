"""Our own processes: pid files, the check that a recorded pid is still ours, stopping, locks.

Only processes recorded in our pid files are ever stopped, and only after checking that their
command line is the one we started: pids get reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

if TYPE_CHECKING:
    from ops.paths import Paths

log = logging.getLogger("phrasestream.ops")

# How long ``up`` waits for a service it does not run (PHRASESTREAM_KAFKA_BOOTSTRAP, PHRASESTREAM_PG_DSN).
EXTERNAL_WAIT_S = 60.0


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped."""


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """Serialise concurrent ``up``/``down`` calls (e.g. parallel test sessions)."""
    paths.make_dirs()
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def our_process(pid_file: Path, *must_contain: str) -> psutil.Process | None:
    """Return the live process recorded in ``pid_file`` if its command line is ours, else None.

    Pids get reused: a recorded pid only counts when the process's command line contains every
    one of ``must_contain``. A stale pid file is removed.
    """
    pid = read_pid(pid_file)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pid_file.unlink(missing_ok=True)
        return None
    if all(s in cmdline for s in must_contain):
        return proc
    log.warning("pid file %s names pid %d, which is not ours (%.80s); ignoring it", pid_file, pid, cmdline)
    pid_file.unlink(missing_ok=True)
    return None


def terminate(proc: psutil.Process, what: str, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to one of our processes and wait ``timeout`` s for it; kill it if it stays."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        log.warning("%s (pid %d) did not stop in %.0f s: killing it", what, proc.pid, timeout)
        proc.kill()
        proc.wait(10)


def wait_until(check: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Call ``check`` every ``interval`` s until it says True or ``timeout`` s have passed; return its last answer.

    An exception from ``check`` ends the wait at once: raise one to say that waiting longer is
    pointless (say, the process being waited for has exited).
    """
    retrying = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval),
                        retry=retry_if_result(lambda ok: not ok), retry_error_callback=lambda _state: False)
    return bool(retrying(check))
