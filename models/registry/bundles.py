"""A head version as one verified bundle, stored in PostgreSQL, so no machine needs shared files.

A bundle is a plain tar of the files of one head folder (``metadata.json`` and every file it
lists), in name order, with fixed owners, modes and times: the same folder always gives the
same bytes, hence the same sha256. No pickle, no code: unpacking writes regular files with
plain names and refuses anything else, then checks every file against ``metadata.json``.

Why PostgreSQL, not Kafka: a head is tens of megabytes (the intent heads are about 40 MB),
while Kafka's default largest message is 1 MB; carrying heads on a topic would mean raising
``max.message.bytes`` on the broker, the topic and every consumer, or chunking bundles and
reassembling them. PostgreSQL already runs beside the sink, stores a ``bytea`` of up to 1 GB,
writes a bundle in one transaction (a reader sees all of it or nothing), and gives one version
by its key. The compacted topic ``models.registry`` carries only the small pointer (version and
the bundle's sha256); a worker fetches the bundle once and keeps it in its models folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.heads import METADATA_FILE, HeadError, HeadRef, read_metadata, verify_head

if TYPE_CHECKING:
    from psycopg2.extensions import connection
    from psycopg2.sql import Identifier

MAX_BUNDLE_BYTES = 512 * 1024 * 1024


class BundleError(Exception):
    """A bundle is missing, corrupted, or cannot be stored."""


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def pack(folder: Path | str) -> bytes:
    """Return the bundle of a head folder: its metadata and every file it lists (verified first)."""
    folder = Path(folder)
    meta = verify_head(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([METADATA_FILE, *meta["files"]]):
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), 0o644, 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack(data: bytes, dest: Path | str) -> dict[str, Any]:
    """Write a bundle's files into the new folder ``dest`` and verify them; return the metadata.

    Only regular files with plain names (no folders, links or ``..``) are accepted.
    """
    dest = Path(dest)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                name = member.name
                if not member.isreg() or not name or "/" in name or "\\" in name or name in (".", "..") \
                        or name.startswith("."):
                    raise BundleError(f"bundle member {name!r} is not a plain file name")
                fh = tar.extractfile(member)
                if fh is None:
                    raise BundleError(f"bundle member {name!r} has no data")
                with open(dest / name, "xb") as out:
                    shutil.copyfileobj(fh, out)
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle is not a readable tar: {exc}") from None
    try:
        return verify_head(dest)
    except HeadError as exc:
        raise BundleError(str(exc)) from None


@dataclass(frozen=True)
class StoredBundle:
    """The facts about one stored bundle (without its bytes)."""

    ref: HeadRef
    sha256: str
    size_bytes: int
    embedder_version: str | None
    metadata: dict[str, Any]
    created_at: datetime | None
    stored_at: datetime


class BundleStore:
    """The ``model_bundles`` table of ``settings.pg_schema``."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def _connect(self) -> connection:
        from ops.postgres.db import pg_connect

        return pg_connect(self.settings)

    def _table(self) -> Identifier:
        from psycopg2 import sql

        return sql.Identifier(self.settings.pg_schema, "model_bundles")

    def put(self, ref: HeadRef, folder: Path | str) -> StoredBundle:
        """Store the bundle of ``folder`` as ``ref`` unless it is stored; return what is stored.

        A version already stored with other bytes is an error: versions never change.
        """
        from psycopg2 import Binary, sql

        meta = read_metadata(folder)
        if meta.get("ref") != str(ref):
            raise BundleError(f"{folder}/metadata.json names {meta.get('ref')!r}, not {ref}")
        existing = self.info(ref)
        data = pack(folder)
        sha = sha256_bytes(data)
        if existing is not None:
            if existing.sha256 != sha:
                raise BundleError(f"{ref} is stored with bundle sha256 {existing.sha256[:12]}…, but the files in "
                                  f"{folder} give {sha[:12]}…: a version's files must not change")
            return existing
        if len(data) > MAX_BUNDLE_BYTES:
            raise BundleError(f"{ref}: the bundle is {len(data)} bytes, more than {MAX_BUNDLE_BYTES}")
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL(
                    "INSERT INTO {} (region, model, version, sha256, size_bytes, embedder_version, metadata, "
                    "created_at, bundle) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (region, model, version) DO NOTHING").format(self._table()),
                    (ref.region, ref.model, ref.version, sha, len(data), meta.get("embedder_version"),
                     json.dumps(meta), meta.get("created_at"), Binary(data)))
        finally:
            conn.close()
        stored = self.info(ref)
        if stored is None or stored.sha256 != sha:
            raise BundleError(f"{ref}: another bundle was stored at the same time")
        return stored

    def _infos(self, region: str | None = None, model: str | None = None,
               version: str | None = None) -> list[StoredBundle]:
        from psycopg2 import sql

        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL(
                    "SELECT region, model, version, sha256, size_bytes, embedder_version, metadata, created_at, "
                    "stored_at FROM {} WHERE (%(r)s::text IS NULL OR region = %(r)s) "
                    "AND (%(m)s::text IS NULL OR model = %(m)s) AND (%(v)s::text IS NULL OR version = %(v)s) "
                    "ORDER BY region, model, version").format(self._table()),
                    {"r": region, "m": model, "v": version})
                rows = cur.fetchall()
        finally:
            conn.close()
        return [StoredBundle(HeadRef(r, m, v), sha, size, emb, meta, created, stored)
                for r, m, v, sha, size, emb, meta, created, stored in rows]

    def info(self, ref: HeadRef) -> StoredBundle | None:
        """Return the facts of ``ref``'s stored bundle, or None."""
        found = self._infos(ref.region, ref.model, ref.version)
        return found[0] if found else None

    def list(self, region: str | None = None, model: str | None = None) -> list[StoredBundle]:
        """Return every stored bundle (of ``region``, ``model``), by region, model and version."""
        return self._infos(region, model)

    def fetch(self, ref: HeadRef) -> tuple[bytes, str]:
        """Return ``ref``'s bundle bytes and the sha256 recorded with them (not yet checked)."""
        from psycopg2 import sql

        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT bundle, sha256 FROM {} WHERE region = %s AND model = %s AND version = %s")
                            .format(self._table()), (ref.region, ref.model, ref.version))
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None:
            raise BundleError(f"no bundle of {ref} is stored in PostgreSQL (schema {self.settings.pg_schema})")
        return bytes(row[0]), row[1]


def install(ref: HeadRef, data: bytes, want_sha256: str, models_root: Path | str) -> Path:
    """Check a fetched bundle and put its files in place as ``ref``'s folder; return the folder.

    The bytes must hash to ``want_sha256`` and every file must match ``metadata.json``, which
    must name ``ref``. The files are written to a hidden folder and renamed into place, so a
    folder under its version name is always complete. A previous folder of that version
    (one that failed its checksums) is replaced.
    """
    got = sha256_bytes(data)
    if got != want_sha256:
        raise BundleError(f"the bundle of {ref} has sha256 {got[:12]}…, but {want_sha256[:12]}… was recorded: "
                          "it was corrupted in storage or on the way")
    final = ref.path(models_root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".incoming-{ref.version}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        meta = unpack(data, tmp)
        if meta.get("ref") != str(ref):
            raise BundleError(f"the bundle of {ref} holds head {meta.get('ref')!r}")
        if final.exists():
            old = final.parent / f".replaced-{ref.version}-{secrets.token_hex(4)}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
