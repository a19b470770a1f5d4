"""``phrasestream review-rule``: show or change a head's review rule, without retraining.

The rule in force is the registry pointer's ``review`` when set, else the rule in the live
head's training configuration (``models.heads.rule.review_rule``). A change writes a new
pointer with the same live version (action ``configure``, ``models.registry.shadows``), so every
worker routes by the new rule within seconds; ``--reset`` goes back to the training rule.

Exit codes: 0 done, 1 a service failed, 2 a bad value or a head without a live version.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from streams.cli.output import fail, say

FLAGS = {"margin": "margin", "random_rate": "random_rate", "budget": "budget_per_hour",
         "random_budget": "random_budget_per_hour", "oos": "oos", "shadow_disagreement": "shadow_disagreement"}
"""Command-line flag (argparse dest) -> ``ReviewRule`` field."""


def changes_of(args: argparse.Namespace) -> dict[str, Any]:
    """Return the rule fields the flags change (``on``/``off`` as booleans); empty when none."""
    out: dict[str, Any] = {}
    for dest, field in FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[field] = value == "on" if value in ("on", "off") else value
    return out


def changed_rule(current: Any, changes: dict[str, Any]) -> Any:
    """Return ``current`` with ``changes`` applied, validated (``pydantic.ValidationError`` if a value is bad)."""
    from schemas.review import ReviewRule

    return ReviewRule.model_validate({**current.model_dump(), **changes})


def one_line(exc: Exception) -> str:
    """Return a pydantic validation error as one line naming each bad field."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc).strip().replace("\n", " ")


def describe(rule: Any, source: str) -> str:
    """Return the rule as a few lines for a person."""
    return "\n".join([
        f"review rule ({'changed with review-rule' if source == 'registry' else 'from the head training configuration'}):",
        f"  margin below           {rule.margin:g}  (doubtful: the two best probabilities are closer than this)",
        f"  oos answers            {'on' if rule.oos else 'off'}",
        f"  shadow disagreement    {'on' if rule.shadow_disagreement else 'off'}",
        f"  random slice rate      {rule.random_rate:g}  (weight 1/rate: the unbiased live-accuracy estimate)",
        f"  budget per hour        {rule.budget_per_hour} doubtful, {rule.random_budget_per_hour} random",
    ])


def review_rule_command(settings: Any, args: argparse.Namespace) -> int:
    """Print the review rule in force for --region/--model, or change it (flags) or reset it (--reset)."""
    import psycopg2
    from pydantic import ValidationError

    from models.heads import HeadRef
    from models.registry.lifecycle import LifecycleError, RefusedHead, UnknownHead
    from models.registry.shadows import ShadowRefused, rule_in_force, set_review_rule

    changes = changes_of(args)
    if args.reset and changes:
        return fail("--reset goes alone: it drops every change and goes back to the training rule", 2)
    try:
        HeadRef(args.region, args.model, "v1")  # the names' rules
        if changes:  # a bad value is refused before any service is asked
            from schemas.review import ReviewRule

            changed_rule(ReviewRule(), changes)
        current, source, pointer = rule_in_force(settings, args.region, args.model)
        if args.reset:
            if pointer.review is None:
                say(f"{args.region}/{args.model} already follows its training rule")
            else:
                done = set_review_rule(settings, args.region, args.model, None)
                current, source = rule_in_force(settings, args.region, args.model)[:2]
                say(f"review rule of {args.region}/{args.model} reset (registry seq {done.pointer.seq})")
        elif changes:
            rule = changed_rule(current, changes)
            done = set_review_rule(settings, args.region, args.model, rule)
            current, source = rule, "registry"
            say(f"review rule of {args.region}/{args.model} changed: "
                + ", ".join(f"{k}={v}" for k, v in sorted(changes.items())) + f" (registry seq {done.pointer.seq})")
    except ValidationError as exc:
        return fail(f"bad review rule: {one_line(exc)}", 2)
    except (ShadowRefused, UnknownHead, RefusedHead, ValueError) as exc:
        return fail(one_line(exc), 2)
    except LifecycleError as exc:
        return fail(one_line(exc), 1)
    except psycopg2.Error as exc:
        return fail(f"PostgreSQL: {one_line(exc)} (is it up? `phrasestream up`)", 1)
    if args.json:
        print(json.dumps({"region": args.region, "model": args.model, "source": source,
                          "rule": current.model_dump(mode="json")}), flush=True)
    else:
        say(describe(current, source))
    return 0
