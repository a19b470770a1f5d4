"""The worker and sink processes in the background: start N workers and a sink, find, wait for, stop.

Daemons are named ``sink`` and ``worker-1`` ... ``worker-N``. Each runs ``python -m streams.cli
worker`` (or ``sink``) with this environment, and worker *i* also gets
``PHRASESTREAM_WORKER_INDEX=i``. Their files are namespaced by app id, so several app ids can
share one ``PHRASESTREAM_HOME``::

    <home>/run/<app_id>/<name>.pid
    <home>/logs/<app_id>/<name>.log     (the previous run's log is kept as <name>.log.1)

A pid file holds the pid and the process's create time (``ops.processes.record_pid``), written
the moment the child is spawned; a recorded pid counts only while a process with that create
time runs (or, for an older pid file, while its command line carries the marker
``--daemon-id=<home>/<app_id>/<name>``): a reused pid is never signalled. A child that
``start`` has just spawned is judged by its ``Popen`` handle, never by a command line that
may not be there yet (before ``exec``). When ``start`` fails midway (a worker exits, or is not
ready in time), it stops every daemon it started itself, so none is left behind untracked.

Example::

    pids = start_daemons(settings, workers=2)   # {"sink": 4711, "worker-1": 4712, "worker-2": 4713}
    running_daemons(settings)                   # the same, while they run
    stop_daemons(settings)                      # workers first, then the sink
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from ops.paths import Paths
from ops.processes import ServiceError, end_child, our_process, read_pid, record_pid, terminate, wait_until
from schemas.settings import Settings

SINK = "sink"
WORKER_PREFIX = "worker-"
READY_LINE = "phrasestream worker ready"
"""Logged by a worker (whatever the log level) once it has recovered its table and consumes."""

READY_TIMEOUT_S = 600.0
"""How long ``start`` waits for the ready lines: a bound on a hang. A worker loads TensorFlow first, which
took 2.5 minutes with a busy core beside it (10 s on a quiet one)."""
STOP_TIMEOUT_S = 30.0
_NAME = re.compile(r"^(sink|worker-[1-9][0-9]*)$")


class DaemonError(ServiceError):
    """A daemon could not be started, or exited before it was ready."""


def worker_name(index: int) -> str:
    """Return the daemon name of worker ``index`` (1-based): ``worker_name(2) == "worker-2"``."""
    if index < 1:
        raise ValueError(f"worker index {index} is not 1 or more")
    return f"{WORKER_PREFIX}{index}"


def worker_index(name: str) -> int | None:
    """Return the index of a worker's daemon name (``worker-3`` -> 3), or None for the sink."""
    return int(name.removeprefix(WORKER_PREFIX)) if name.startswith(WORKER_PREFIX) else None


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"unknown daemon {name!r}; known: sink, worker-1, worker-2, ...")


@dataclass(frozen=True)
class DaemonFiles:
    """Where one daemon's pid and log live, and the marker its command line carries."""

    name: str
    pid: Path
    log: Path
    marker: str

    @property
    def previous_log(self) -> Path:
        return self.log.with_suffix(".log.1")


def daemon_files(settings: Settings, name: str) -> DaemonFiles:
    """Return the files of daemon ``name`` of this app id (nothing is created)."""
    _check_name(name)
    app_id = settings.app_id
    if not app_id or "/" in app_id or app_id in (".", ".."):
        raise ValueError(f"app id {app_id!r} cannot name a folder; set PHRASESTREAM_APP_ID without '/'")
    home = Paths.of(settings).home
    return DaemonFiles(name, home / "run" / app_id / f"{name}.pid", home / "logs" / app_id / f"{name}.log",
                       f"--daemon-id={home}/{app_id}/{name}")


def _command(name: str) -> str:
    return "sink" if name == SINK else "worker"


def daemon_process(settings: Settings, name: str) -> psutil.Process | None:
    """Return our running daemon ``name`` (checked by the create time in its pid file), or None."""
    files = daemon_files(settings, name)
    return our_process(files.pid, "streams.cli", _command(name), files.marker)


def running_daemons(settings: Settings) -> dict[str, int]:
    """Return name -> pid of every daemon of this app id that runs, the sink first, then workers by index."""
    run_dir = daemon_files(settings, SINK).pid.parent
    names = [p.stem for p in run_dir.glob("*.pid") if _NAME.match(p.stem)] if run_dir.is_dir() else []
    found = {}
    for name in sorted(names, key=lambda n: worker_index(n) or 0):
        proc = daemon_process(settings, name)
        if proc is not None:
            found[name] = proc.pid
    return found


def daemon_argv(name: str, files: DaemonFiles) -> list[str]:
    """Return the command line of daemon ``name``: ``python -m streams.cli worker|sink <marker>``."""
    return [sys.executable, "-m", "streams.cli", _command(name), files.marker]


def spawn_daemon(settings: Settings, name: str, say: Callable[[str], None] = print) -> subprocess.Popen[bytes]:
    """Start daemon ``name`` in the background (whether or not it runs) and record it; return its handle.

    The pid file (pid and create time) is written before this returns, so ``stop`` and
    ``status`` find the daemon from then on. The child inherits this process's environment
    (so a test's ``PHRASESTREAM_*`` reach it); a worker also gets ``PHRASESTREAM_WORKER_INDEX``.
    """
    files = daemon_files(settings, name)
    files.pid.parent.mkdir(parents=True, exist_ok=True)
    files.log.parent.mkdir(parents=True, exist_ok=True)
    if files.log.exists():  # keep one previous log; readiness is read from the new one
        files.log.replace(files.previous_log)
    env = os.environ.copy()
    index = worker_index(name)
    if index is not None:
        env["PHRASESTREAM_WORKER_INDEX"] = str(index)
    with open(files.log, "wb") as out:
        child = subprocess.Popen(daemon_argv(name, files), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        record_pid(files.pid, child.pid)
    except BaseException:  # unrecorded, no command could stop it: stop it now
        end_child(child, STOP_TIMEOUT_S)
        raise
    say(f"{name}: started (pid {child.pid}), log {files.log}")
    return child


def start_daemon(settings: Settings, name: str, say: Callable[[str], None] = print) -> int:
    """Start daemon ``name`` in the background unless it runs; return its pid (see :func:`spawn_daemon`)."""
    proc = daemon_process(settings, name)
    if proc is not None:
        say(f"{name}: already running (pid {proc.pid}), left alone")
        return proc.pid
    return spawn_daemon(settings, name, say).pid


def stop_daemon(settings: Settings, name: str, timeout: float = STOP_TIMEOUT_S,
                say: Callable[[str], None] = print) -> bool:
    """Stop daemon ``name`` by its recorded pid (SIGTERM, then SIGKILL after ``timeout`` s); False if not running."""
    proc = daemon_process(settings, name)
    if proc is None:
        return False
    terminate(proc, name, timeout)
    daemon_files(settings, name).pid.unlink(missing_ok=True)
    say(f"{name}: stopped (pid {proc.pid})")
    return True


def stop_daemons(settings: Settings, say: Callable[[str], None] = print) -> list[str]:
    """Stop every daemon of this app id, the workers first (their last predictions reach the sink); return their names."""
    running = running_daemons(settings)
    order = [n for n in running if n != SINK] + ([SINK] if SINK in running else [])
    return [name for name in order if stop_daemon(settings, name, say=say)]


def wait_ready(settings: Settings, names: list[str], timeout: float = READY_TIMEOUT_S,
               children: Mapping[str, subprocess.Popen[bytes]] | None = None,
               interval: float = 1.0) -> list[str]:
    """Wait until every worker in ``names`` logs :data:`READY_LINE` (at most ``timeout`` s in all); return them.

    ``children`` holds the handles of the daemons this process has just spawned: whether one
    of those has exited is its handle's answer (``poll()``); any other is looked up by its pid
    file. Raise :class:`DaemonError` with the log's last lines when one exits first, or when
    time runs out. The sink has no ready line: it is left out (and out of the answer).
    """
    workers = sorted((n for n in names if worker_index(n) is not None), key=lambda n: worker_index(n) or 0)
    pending = set(workers)
    handles = children or {}

    def exit_code(name: str) -> int | None:
        """Return the exit code of a worker that exited (-1 when not ours to ask), else None."""
        if name in handles:
            return handles[name].poll()
        return -1 if daemon_process(settings, name) is None else None

    def all_ready() -> bool:
        for name in sorted(pending):
            files = daemon_files(settings, name)
            text = files.log.read_text(errors="replace") if files.log.exists() else ""
            if READY_LINE in text:
                pending.discard(name)
                continue
            code = exit_code(name)
            if code is not None:
                tail = "\n".join(text.splitlines()[-30:])
                how = f" with code {code}" if code != -1 else ""
                raise DaemonError(f"{name} exited{how}; its log ({files.log}) ends with:\n{tail}")
        return not pending

    if not wait_until(all_ready, timeout, interval):
        logs = ", ".join(str(daemon_files(settings, n).log) for n in sorted(pending))
        raise DaemonError(f"{', '.join(sorted(pending))} not ready within {timeout:.0f} s; see {logs}")
    return workers


def start_daemons(settings: Settings, workers: int = 1, sink: bool = True, wait: bool = True,
                  say: Callable[[str], None] = print) -> dict[str, int]:
    """Bring this app id to ``workers`` workers (and a sink); return name -> pid of the daemons wanted.

    Starts the missing ``worker-i`` for i in 1..workers and stops running workers with a
    larger index; running ones are left alone. With ``wait``, returns once every one of the
    workers has logged :data:`READY_LINE` (bounded by ``READY_TIMEOUT_S``). If anything fails
    on the way (a worker exits, one is not ready in time, Ctrl-C), the daemons this call
    started are stopped again, workers first, before the error goes on; those that ran
    before are left alone.
    """
    if workers < 0:
        raise ValueError(f"--workers {workers}: give 0 or more")
    for name in running_daemons(settings):
        index = worker_index(name)
        if index is not None and index > workers:
            stop_daemon(settings, name, say=say)
    names = [worker_name(i) for i in range(1, workers + 1)]
    pids: dict[str, int] = {}
    spawned: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ([SINK] if sink else []) + names:
            proc = daemon_process(settings, name)
            if proc is not None:
                say(f"{name}: already running (pid {proc.pid}), left alone")
                pids[name] = proc.pid
            else:
                spawned[name] = spawn_daemon(settings, name, say)
                pids[name] = spawned[name].pid
        if wait:
            wait_ready(settings, names, children=spawned)
    except BaseException:
        for name, child in reversed(spawned.items()):  # the workers first, then the sink
            end_child(child, STOP_TIMEOUT_S)
            files = daemon_files(settings, name)
            if read_pid(files.pid) == child.pid:
                files.pid.unlink(missing_ok=True)
            say(f"{name}: stopped (pid {child.pid}), as start did not finish")
        raise
    return pids


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    pid: int | None
    log: Path

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.pid else "stopped"
        return f"{self.name:<9} {state:<22} log {self.log}"


def daemon_status(settings: Settings) -> list[DaemonStatus]:
    """Return the sink and every worker this app id has a pid file or a log for, running or not."""
    files = daemon_files(settings, SINK)
    names = {SINK}
    for folder, suffix in ((files.pid.parent, ".pid"), (files.log.parent, ".log")):
        if folder.is_dir():
            names |= {p.name.removesuffix(suffix) for p in folder.glob(f"*{suffix}")
                      if _NAME.match(p.name.removesuffix(suffix))}
    out = []
    for name in sorted(names, key=lambda n: worker_index(n) or 0):
        proc = daemon_process(settings, name)
        out.append(DaemonStatus(name, proc.pid if proc else None, daemon_files(settings, name).log))
    return out
