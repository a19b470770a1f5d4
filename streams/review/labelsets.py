"""``phrasestream label-map``: show a head's label sets, or make the next one from ``--rename OLD=NEW``.

    phrasestream label-map --region eu --model intent                       # show
    phrasestream label-map --region eu --model intent --rename card_declined=card_refused
    phrasestream label-map --region eu --model intent --rename a=ab --rename b=ab --json   # merge

The versions and their composition are ``models.labelsets``. Exit codes: 0 done, 1
PostgreSQL failed, 2 bad flags or a rename that cannot apply (one ``error: ...`` line).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from models.heads import HeadRef
from models.labelsets import LabelSetError, LabelSets, add_label_set, parse_renames, read_label_sets


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return code


def _print(sets: LabelSets) -> None:
    print(f"{sets.region}/{sets.model}: label set {sets.current}")
    for ls in sets.versions:
        renames = ", ".join(f"{k} -> {v}" for k, v in ls.renames.items())
        when = ls.created_at.isoformat(timespec="seconds") if ls.created_at else "-"
        print(f"  {ls.version:>3}  {when}  {renames}" + (f"  (by {ls.actor})" if ls.actor else ""))
    if sets.mapping:
        print("map applied when retrain replays (old -> newest):")
        for old, new in sets.mapping.items():
            print(f"  {old} -> {new}")
    else:
        print("no renames: labels are used as trained")


def label_map_command(settings: Any, args: Any) -> int:
    """Show the label sets of --region/--model, or store the next one made by the --rename flags."""
    import psycopg2

    try:
        HeadRef(args.region, args.model, "v1")
    except ValueError as exc:
        return _fail(str(exc))
    try:
        if args.rename:
            renames = parse_renames(args.rename)
            actor = os.environ.get("USER") or None
            sets = add_label_set(settings, args.region, args.model, renames, actor=actor)
        else:
            sets = read_label_sets(settings, args.region, args.model)
    except LabelSetError as exc:
        return _fail(str(exc))
    except psycopg2.Error as exc:
        return _fail(f"PostgreSQL: {str(exc).strip()}", 1)
    if args.json:
        print(json.dumps(sets.to_json()), flush=True)
    else:
        _print(sets)
    return 0
