"""Our own processes: pid files, the check that a recorded pid is still ours, stopping, locks.

Only processes recorded in our pid files are ever stopped, and only after checking that the
recorded pid is still the process we started: pids get reused. A pid file written by
:func:`record_pid` holds the pid and the process's create time (``4712 1733472000.530``); the
pid counts as ours while a process with that pid and that create time runs. The create time
is known from the moment of the fork, so a child that has not yet exec'd (whose command line
is still empty, or still its parent's) is recognised too. A pid file with the pid alone (or a
create time that a clock step has moved) falls back on the command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


CREATE_TIME_SLACK_S = 0.05
"""How far a create time read again may be from the recorded one (psutil counts in 0.01 s ticks)."""


def read_pid(pid_file: Path) -> int | None:
    """Return the pid on the first line of ``pid_file`` (ours, or PostgreSQL's ``postmaster.pid``), or None."""
    record = read_pid_record(pid_file)
    return record[0] if record else None


def read_pid_record(pid_file: Path) -> tuple[int, float | None] | None:
    """Return (pid, create time or None) from the first line of ``pid_file``, or None if it holds no pid."""
    try:
        fields = pid_file.read_text().splitlines()[0].split()
        return int(fields[0]), (float(fields[1]) if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def record_pid(pid_file: Path, pid: int) -> float:
    """Write ``pid`` and its create time to ``pid_file`` (replaced whole, never half-written); return the time.

    Call it with the pid of a child just spawned (``Popen.pid``): the create time is the fork's,
    readable before the child has exec'd and while it is a zombie we have not reaped.
    """
    created = psutil.Process(pid).create_time()
    part = pid_file.with_name(f".{pid_file.name}.{pid}")
    part.write_text(f"{pid} {created:.3f}\n")
    part.replace(pid_file)
    return created


def our_process(pid_file: Path, *must_contain: str) -> psutil.Process | None:
    """Return the live process recorded in ``pid_file`` if it is still the one recorded, else None.

    Pids get reused. A recorded pid counts when the process has the create time recorded beside
    it (see :func:`record_pid`), whatever its command line says (a child that has not exec'd yet
    has none); failing that, when its command line contains every one of ``must_contain``
    (a pid file without a create time, or a clock stepped since; with nothing to look for,
    only the create time counts). A stale pid file is removed.
    """
    record = read_pid_record(pid_file)
    if record is None:
        return None
    pid, created = record
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
        if created is not None and abs(proc.create_time() - created) <= CREATE_TIME_SLACK_S:
            return proc
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pid_file.unlink(missing_ok=True)
        return None
    if must_contain and all(s in cmdline for s in must_contain):
        return proc
    why = f"started at {proc.create_time():.3f}, not {created:.3f}; " if created is not None else ""
    log.warning("pid file %s names pid %d, which is not ours (%scommand line %.80r); ignoring it", pid_file, pid,
                why, cmdline)
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


def end_child(child: subprocess.Popen[Any], timeout: float) -> None:
    """Stop a child of this process by its handle (SIGTERM, then SIGKILL after ``timeout`` s) and reap it."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in %.0f s: killing it", child.pid, timeout)
            child.kill()
            child.wait(10)


def wait_until(check: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Call ``check`` every ``interval`` s until it says True or ``timeout`` s have passed; return its last answer.

    An exception from ``check`` ends the wait at once: raise one to say that waiting longer is
    pointless (say, the process being waited for has exited).
    """
    retrying = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval),
                        retry=retry_if_result(lambda ok: not ok), retry_error_callback=lambda _state: False)
    return bool(retrying(check))
