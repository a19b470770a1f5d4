"""Label sets: renaming and merging a head's labels without losing the answers given under old names.

A head's label set starts at version 0 (the labels as trained). ``phrasestream label-map
--rename OLD=NEW`` makes version n+1: its renames apply to the labels of version n (all at
once, so ``A=B`` and ``B=C`` in one call swap rather than chain; several OLDs to one NEW merge
them). Each version stores its renames and the whole map from version 0, composed with the
earlier ones. ``retrain`` maps every replayed example to the newest names
(:meth:`LabelSets.relabel`): an example given under version v (``label_set_version``; none
means 0) goes through the renames of versions v+1..n only, so a name reused later keeps its
new meaning. The review page offers the newest names and stamps each answer with the version.

The versions live in PostgreSQL (``label_sets``, migration 004); this module is shared by
serving's review page and by ``retrain`` (``models/`` is where the two meet).

Example::

    sets = read_label_sets(settings, "eu", "intent")
    sets.relabel("card_declined", 0)   # -> "card_refused" after `--rename card_declined=card_refused`
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class LabelSetError(ValueError):
    """A rename that cannot be applied; the message says why and what to do."""


@dataclass(frozen=True)
class LabelSet:
    """Version ``version`` of a head's labels: the renames it made and the map from version 0."""

    version: int
    renames: dict[str, str]
    mapping: dict[str, str]
    created_at: datetime | None = None
    actor: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "renames": self.renames, "mapping": self.mapping,
                "created_at": self.created_at.isoformat() if self.created_at else None, "actor": self.actor}


def parse_renames(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``OLD=NEW`` strings into a dict; raise :class:`LabelSetError` on a bad or repeated one."""
    out: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise LabelSetError(f"--rename {pair!r} is not OLD=NEW (two non-empty label names)")
        if old == new:
            raise LabelSetError(f"--rename {pair!r} maps a label to itself")
        if old in out and out[old] != new:
            raise LabelSetError(f"label {old!r} is renamed twice ({out[old]!r} and {new!r}); give it one new name")
        out[old] = new
    if not out:
        raise LabelSetError("give at least one --rename OLD=NEW")
    return out


def compose(mapping: Mapping[str, str], renames: Mapping[str, str]) -> dict[str, str]:
    """Return the map from version 0 after ``renames`` applied to the labels ``mapping`` leads to.

    A name that ``mapping`` already renamed away (a key that is no longer a label) cannot be
    renamed again: rename its current name instead (:class:`LabelSetError` says which).
    Identities are left out of the result.
    """
    current_names = set(mapping.values())
    for old in renames:
        if old in mapping and old not in current_names:
            raise LabelSetError(f"label {old!r} was renamed to {mapping[old]!r} already; rename {mapping[old]!r} instead")
    out = {k: renames.get(v, v) for k, v in mapping.items()}
    for old, new in renames.items():
        out.setdefault(old, new)
    return {k: v for k, v in sorted(out.items()) if k != v}


@dataclass(frozen=True)
class LabelSets:
    """Every label set version of one head, oldest first (empty: version 0 only)."""

    region: str
    model: str
    versions: list[LabelSet] = field(default_factory=list)

    @property
    def current(self) -> int:
        """The newest version (0 when nothing was renamed)."""
        return self.versions[-1].version if self.versions else 0

    @property
    def mapping(self) -> dict[str, str]:
        """The map from version 0 to the newest names."""
        return dict(self.versions[-1].mapping) if self.versions else {}

    def map_from(self, version: int | None) -> dict[str, str]:
        """Return the map from the names of ``version`` (None: 0) to the newest names."""
        start = version or 0
        out: dict[str, str] = {}
        for ls in self.versions:
            if ls.version > start:
                out = {k: ls.renames.get(v, v) for k, v in out.items()}
                for old, new in ls.renames.items():
                    out.setdefault(old, new)
        return {k: v for k, v in out.items() if k != v}

    def relabel(self, label: str, version: int | None = None) -> str:
        """Return the newest name of ``label`` given under label set ``version`` (None: 0)."""
        if not self.versions or (version or 0) >= self.current:
            return label
        return self.map_from(version).get(label, label)

    def names(self, labels: Iterable[str]) -> list[str]:
        """Return the newest names of a head's trained ``labels``, sorted, without duplicates (merges)."""
        mapping = self.mapping
        return sorted({mapping.get(label, label) for label in labels})

    def next(self, renames: Mapping[str, str], actor: str | None = None) -> LabelSet:
        """Return version n+1 made by ``renames`` (not stored)."""
        return LabelSet(self.current + 1, dict(renames), compose(self.mapping, renames), actor=actor)

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "model": self.model, "current": self.current, "mapping": self.mapping,
                "versions": [ls.to_json() for ls in self.versions]}


def _table(settings: Any) -> Any:
    from psycopg2 import sql

    return sql.SQL("{}.label_sets").format(sql.Identifier(settings.pg_schema))


def read_label_sets(settings: Any, region: str, model: str, conn: Any = None) -> LabelSets:
    """Read every label set version of (region, model) from PostgreSQL.

    A schema without the table (migrations not applied yet) has only version 0. Raise
    ``psycopg2.Error`` when the database cannot be reached.
    """
    import psycopg2
    from psycopg2 import sql

    from ops.postgres.db import pg_connect

    own = conn is None
    conn = conn or pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("SELECT version, renames, mapping, created_at, actor FROM {} "
                                    "WHERE region = %s AND model = %s ORDER BY version").format(_table(settings)),
                            (region, model))
            except psycopg2.errors.UndefinedTable:
                return LabelSets(region, model)
            rows = cur.fetchall()
    finally:
        if own:
            conn.close()
    return LabelSets(region, model, [LabelSet(int(v), dict(r), dict(m), at, actor) for v, r, m, at, actor in rows])


def add_label_set(settings: Any, region: str, model: str, renames: Mapping[str, str],
                  actor: str | None = None) -> LabelSets:
    """Store version n+1 of (region, model) made by ``renames``; return every version.

    One transaction under an advisory lock per head, so two concurrent calls make n+1 and n+2.
    Raise :class:`LabelSetError` for a rename that cannot apply, ``psycopg2.Error`` otherwise.
    """
    from ops.postgres.db import pg_connect

    conn = pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"label-sets:{settings.pg_schema}:{region}/{model}",))
            sets = read_label_sets(settings, region, model, conn=_NoCommit(conn))
            new = sets.next(renames, actor)
            from psycopg2 import sql

            cur.execute(sql.SQL("INSERT INTO {} (region, model, version, renames, mapping, actor) "
                                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING created_at").format(_table(settings)),
                        (region, model, new.version, json.dumps(new.renames), json.dumps(new.mapping), actor))
            row = cur.fetchone()
            stored = LabelSet(new.version, new.renames, new.mapping, row[0] if row else None, actor)
    finally:
        conn.close()
    return LabelSets(region, model, [*sets.versions, stored])


class _NoCommit:
    """A connection whose ``with`` block neither commits nor rolls back: reads inside a caller's transaction."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __enter__(self) -> Any:
        return self._conn

    def __exit__(self, *exc: object) -> None:
        return None

    def cursor(self) -> Any:
        return self._conn.cursor()

    def close(self) -> None:
        return None
