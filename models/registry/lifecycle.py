"""The lifecycle of head versions across machines: which version is live, promotion, rollback.

Three places hold it, each for what it does best:

- **the live pointer**: the compacted Kafka topic ``models.registry`` (``models/registry/pointers.py``).
  Every worker follows it, on any machine that reaches the broker;
- **the artifacts**: each version's verified bundle in PostgreSQL's ``model_bundles``
  (``models/registry/bundles.py``), so a worker with an empty models folder can load any version;
- **the history**: one row per change in ``model_history`` (when, what, from which version,
  why, and the metrics at the time), for "what was live at T".

A change (:func:`change`) stores the bundle first, then, in one PostgreSQL transaction that
holds an advisory lock on the (region, model), inserts the history row and publishes the
pointer; the transaction commits only once the broker has the pointer. Two changes of the
same head at once are serialised; a failed publish leaves no history row.

This machine's models folder keeps a mirror (``heads/registry.json``) of what it changed,
which ``phrasestream train`` uses to know whether the demo heads are current.
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.heads import HeadError, HeadRef, read_metadata, verify_head
from models.registry.bundles import BundleError, BundleStore, install, pack, sha256_bytes
from models.registry.mirror import Registry, RegistryError
from models.registry.pointers import PointerError, publish, read_all
from schemas.messages import RegistryAction, RegistryPointer
from schemas.review import ReviewRule, ShadowSpec

log = logging.getLogger("phrasestream.lifecycle")

STACK_MAX = 50


class LifecycleError(Exception):
    """A promotion or rollback that cannot be done (unknown version, bad files, services down)."""


class UnknownHead(LifecycleError):
    """The region, model or version does not exist."""


class RefusedHead(LifecycleError):
    """The version's files fail their checks, or name another head."""


class NothingToRollBack(LifecycleError):
    """The head has no live version, or none live before the current one."""


class Keep:
    """The marker of :func:`change`'s ``shadow`` and ``review``: carry the old pointer's value."""


KEEP = Keep()


def carried(old: RegistryPointer | None, version: str, shadow: ShadowSpec | Keep | None,
            review: ReviewRule | Keep | None) -> tuple[ShadowSpec | None, ReviewRule | None]:
    """Return the shadow and review rule of the pointer that makes ``version`` live after ``old``.

    ``KEEP`` carries the old pointer's value; a shadow of the version becoming live ends
    (promoting the shadow's version makes it live and ends its shadow run).
    """
    new_shadow = (old.shadow if old else None) if isinstance(shadow, Keep) else shadow
    new_review = (old.review if old else None) if isinstance(review, Keep) else review
    if new_shadow is not None and new_shadow.version == version:
        new_shadow = None
    return new_shadow, new_review


def eval_metrics(meta: dict[str, Any]) -> dict[str, float | None]:
    """Return a head's evaluation metrics from its metadata (numbers only)."""
    metrics = (meta.get("metrics") or {}).get("eval") or (meta.get("metrics") or {}).get("test") or {}
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
            for k, v in metrics.items() if isinstance(v, (int, float, type(None))) and not isinstance(v, bool)}


def live_pointers(settings: Any) -> dict[tuple[str, str], RegistryPointer]:
    """Return the live pointer of every (region, model), read from the registry topic."""
    try:
        return read_all(settings)
    except PointerError as exc:
        raise LifecycleError(f"{exc} (is Kafka up? `phrasestream up`)") from None


def active_heads(settings: Any) -> dict[str, list[str]]:
    """Map each region to its live head names (from the registry topic)."""
    out: dict[str, list[str]] = {}
    for region, model in sorted(live_pointers(settings)):
        out.setdefault(region, []).append(model)
    return out


def live_ref(settings: Any, region: str, model: str) -> HeadRef | None:
    """Return the live version of (region, model), or None."""
    pointer = live_pointers(settings).get((region, model))
    return HeadRef(region, model, pointer.version) if pointer else None


def _local_ok(settings: Any, ref: HeadRef) -> Path | None:
    folder = ref.path(settings.models_root)
    if not folder.is_dir():
        return None
    try:
        verify_head(folder)
    except HeadError as exc:
        log.warning("the local copy of %s fails its checks (%s); fetching its bundle", ref, exc)
        return None
    return folder


def head_folder(settings: Any, ref: HeadRef, want_sha256: str | None = None,
                store: BundleStore | None = None) -> Path:
    """Return a local folder holding ``ref``'s verified files, fetching its bundle if needed.

    Raise :class:`BundleError` when the bundle is missing or fails its checks, and
    ``psycopg2.Error`` when the database cannot be reached.
    """
    folder = _local_ok(settings, ref)
    if folder is not None:
        return folder
    store = store or BundleStore(settings)
    data, recorded = store.fetch(ref)
    if want_sha256 is not None and recorded != want_sha256:
        raise BundleError(f"{ref}: the stored bundle has sha256 {recorded[:12]}…, the registry names "
                          f"{want_sha256[:12]}…")
    return install(ref, data, recorded, settings.models_root)


def known_versions(settings: Any, region: str, model: str, store: BundleStore | None = None) -> list[str]:
    """Return every version of (region, model) built here or stored in PostgreSQL, sorted."""
    local = {r.version for r in Registry(settings.models_root).versions(region, model)}
    stored = {b.ref.version for b in (store or BundleStore(settings)).list(region) if b.ref.model == model}
    return sorted(local | stored)


def _check_known(settings: Any, ref: HeadRef, store: BundleStore) -> None:
    versions = known_versions(settings, ref.region, ref.model, store)
    if ref.version in versions:
        return
    if versions:
        raise UnknownHead(f"{ref.region}/{ref.model} has no version {ref.version!r}; known: {versions}")
    heads = sorted({f"{b.ref.region}/{b.ref.model}" for b in store.list()}
                   | {f"{r.region}/{r.model}" for r in _local_refs(settings)})
    raise UnknownHead(f"no head {ref.region}/{ref.model} is known; known heads: {heads}")


def _local_refs(settings: Any) -> list[HeadRef]:
    registry = Registry(settings.models_root)
    root = registry.heads_dir
    out: list[HeadRef] = []
    if not root.is_dir():
        return out
    for region in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for model in sorted(p for p in region.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out.extend(registry.versions(region.name, model.name))
    return out


@dataclass(frozen=True)
class Change:
    """What one change did: the new pointer and the version live before."""

    pointer: RegistryPointer
    before: str | None

    @property
    def ref(self) -> HeadRef:
        return HeadRef(self.pointer.region, self.pointer.model, self.pointer.version)


def _bundle_facts(settings: Any, ref: HeadRef, store: BundleStore, upload: bool) -> tuple[str, int, dict[str, Any]]:
    """Return (sha256, size, metadata) of ``ref``'s bundle, storing it first when it is local."""
    folder = ref.path(settings.models_root)
    if folder.is_dir():
        try:
            verify_head(folder)
        except HeadError as exc:
            raise RefusedHead(str(exc)) from None
        if upload:
            stored = store.put(ref, folder)
            return stored.sha256, stored.size_bytes, stored.metadata
        data = pack(folder)
        return sha256_bytes(data), len(data), read_metadata(folder)
    stored_info = store.info(ref)
    if stored_info is None:
        raise UnknownHead(f"{ref} is neither in {folder.parent} nor stored in PostgreSQL")
    return stored_info.sha256, stored_info.size_bytes, stored_info.metadata


def change(settings: Any, ref: HeadRef, *, action: RegistryAction, reason: str | None = None,
           metrics: dict[str, Any] | None = None, pop_to: int | None = None, upload: bool = True,
           store: BundleStore | None = None, shadow: ShadowSpec | Keep | None = KEEP,
           review: ReviewRule | Keep | None = KEEP,
           check: Callable[[RegistryPointer | None], None] | None = None) -> Change:
    """Make ``ref`` live for every worker and record it (see the module doc); return the change.

    ``pop_to`` (a plain rollback) cuts the rollback stack to that length instead of pushing
    the version live before onto it. The new pointer keeps the old one's ``shadow`` and
    ``review`` unless given (see :func:`carried`). ``check`` sees the old pointer under the
    head's lock and raises a :class:`LifecycleError` to refuse the change.
    """
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extras import Json

    from ops.postgres.db import pg_connect
    from ops.postgres.migrations import apply_migrations

    store = store or BundleStore(settings)
    try:
        # a deployment upgraded without `phrasestream up` gets the tables and columns this writes first
        apply_migrations(settings)
        _check_known(settings, ref, store)
        sha, size, meta = _bundle_facts(settings, ref, store, upload)
        if meta.get("ref") != str(ref):
            raise RefusedHead(f"the files of {ref} name head {meta.get('ref')!r}")
        conn = pg_connect(settings)
    except (BundleError, HeadError) as exc:
        raise RefusedHead(str(exc)) from None
    except psycopg2.Error as exc:
        raise LifecycleError(f"PostgreSQL: {str(exc).strip()} (is it up? `phrasestream up`)") from None
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"phrasestream-registry:{ref.region}/{ref.model}",))
            old = live_pointers(settings).get(ref.key)
            if check is not None:
                check(old)
            new_shadow, new_review = carried(old, ref.version, shadow, review)
            if old is None:
                stack: list[str] = []
            elif pop_to is not None:
                stack = list(old.stack[:pop_to])
            elif old.version != ref.version:
                stack = [*old.stack, old.version][-STACK_MAX:]
            else:
                stack = list(old.stack)
            pointer = RegistryPointer(
                region=ref.region, model=ref.model, version=ref.version, action=action,
                from_version=old.version if old else None, reason=reason, at=datetime.now(UTC),
                seq=(old.seq + 1) if old else 1, bundle_sha256=sha, bundle_bytes=size,
                embedder_version=meta.get("embedder_version"),
                metrics={k: v for k, v in (metrics if metrics is not None else eval_metrics(meta)).items()
                         if isinstance(v, (int, float, type(None))) and not isinstance(v, bool)},
                stack=stack, shadow=new_shadow, review=new_review)
            cur.execute(sql.SQL(
                "INSERT INTO {} (at, region, model, version, action, from_version, reason, metrics, seq, actor, host, "
                "shadow, review) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)").format(
                    sql.Identifier(settings.pg_schema, "model_history")),
                (pointer.at, ref.region, ref.model, ref.version, action, pointer.from_version, reason,
                 Json(pointer.metrics), pointer.seq, _actor(), socket.gethostname(),
                 Json(new_shadow.model_dump(mode="json")) if new_shadow else None,
                 Json(new_review.model_dump(mode="json")) if new_review else None))
            publish(settings, pointer)
    except PointerError as exc:
        raise LifecycleError(f"{exc} (is Kafka up? `phrasestream up`)") from None
    except psycopg2.Error as exc:
        raise LifecycleError(f"PostgreSQL: {str(exc).strip()}") from None
    finally:
        conn.close()
    if ref.path(settings.models_root).is_dir() and action not in ("shadow", "configure"):  # this machine's mirror
        try:
            Registry(settings.models_root).activate(ref, action=action, reason=reason)
        except RegistryError as exc:
            log.warning("the local registry mirror was not updated: %s", exc)
    return Change(pointer, old.version if old else None)


def _actor() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def promote(settings: Any, ref: HeadRef, *, reason: str | None = None, action: RegistryAction = "promote",
            metrics: dict[str, Any] | None = None) -> HeadRef:
    """Make ``ref`` live for every worker; record why. Raise :class:`LifecycleError`."""
    return change(settings, ref, action=action, reason=reason, metrics=metrics).ref


def rollback(settings: Any, region: str, model: str, *, to: str | None = None,
             reason: str | None = None) -> Change:
    """Make the version live before the current one (or ``to``) live again.

    A plain rollback pops the rollback stack, so two in a row step back twice; ``--to V``
    is a promotion of an older version, and a later plain rollback returns from it.
    """
    store = BundleStore(settings)
    try:
        old = live_pointers(settings).get((region, model))
        if old is None:
            if not known_versions(settings, region, model, store):
                _check_known(settings, HeadRef(region, model, "none"), store)
            raise NothingToRollBack(f"{region}/{model} has no live version to roll back")
        if to is not None:
            return change(settings, HeadRef(region, model, to), action="rollback", reason=reason, store=store)
        available = set(known_versions(settings, region, model, store))
        for i in range(len(old.stack) - 1, -1, -1):
            if old.stack[i] != old.version and old.stack[i] in available:
                return change(settings, HeadRef(region, model, old.stack[i]), action="rollback", reason=reason,
                              pop_to=i, store=store)
    except BundleError as exc:
        raise LifecycleError(str(exc)) from None
    raise NothingToRollBack(f"{region}/{model}: no earlier live version to roll back to")


def publish_local(settings: Any, *, upload: bool = True) -> list[HeadRef]:
    """Publish this machine's locally active heads that have no live pointer yet; return them.

    This carries heads activated before the registry topic existed (or after its data was
    deleted) into it. With ``upload`` their bundles are stored in PostgreSQL too.
    """
    live = live_pointers(settings)
    done = []
    for models in Registry(settings.models_root).active().values():
        for ref in models.values():
            if ref.key not in live and ref.path(settings.models_root).is_dir():
                change(settings, ref, action="activate", upload=upload,
                       reason=f"published from the local registry of {socket.gethostname()}")
                done.append(ref)
    return done


WHAT_WAS_LIVE_SQL = """
SELECT DISTINCT ON (region, model) region, model, version, action, at, reason
FROM model_history
WHERE at <= %(t)s
ORDER BY region, model, at DESC, id DESC
"""
"""The history query of docs/registry.md: the live version of every head at time ``t``."""


def live_at(settings: Any, t: datetime) -> dict[tuple[str, str], str]:
    """Return (region, model) -> the version live at ``t``, from the history table."""
    from psycopg2 import sql

    from ops.postgres.db import pg_connect

    conn = pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(settings.pg_schema)))
            cur.execute(WHAT_WAS_LIVE_SQL, {"t": t})
            return {(r, m): v for r, m, v, *_ in cur.fetchall()}
    finally:
        conn.close()
