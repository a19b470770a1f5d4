"""``phrasestream promote --shadow [--percent P]`` and ``promote --shadow --stop``: shadow runs.

A shadow is a candidate version every worker runs beside the live one, on the same batches
(the embedding is shared, so the cost is its head), on all phrases or ``--percent`` of them;
its answers go to ``predictions.shadow`` only, and the sink stores them in
``shadow_inferences``. It lives in the registry pointer (``models.registry.shadows``), so every
machine follows. ``phrasestream shadow-report`` compares the two. docs/shadow.md has the rest.

Exit codes: 0 done, 1 a service failed (Kafka, PostgreSQL), 2 a refused request (bad flags, an
unknown version, the live version, no live version, no shadow to stop).
"""

from __future__ import annotations

import argparse
from typing import Any

from streams.cli.output import fail, say


def flag_error(args: argparse.Namespace) -> str | None:
    """Return what is wrong with the flags of ``promote --shadow`` (None: nothing)."""
    if not args.shadow:
        given = [f for f, v in (("--percent", args.percent is not None), ("--stop", args.stop)) if v]
        return f"{' and '.join(given)} only go with --shadow"
    if args.stop:
        if args.version is not None or args.percent is not None:
            return "--shadow --stop takes no --version or --percent: it ends the running shadow"
        return None
    if args.version is None:
        return "promote --shadow needs --version (the candidate to run beside the live one)"
    if args.percent is not None and not 0 < args.percent <= 100:
        return f"--percent must be in (0, 100], got {args.percent:g}"
    return None


def shadow_command(settings: Any, args: argparse.Namespace) -> int:
    """Start (``--shadow --version V [--percent P]``) or stop (``--shadow --stop``) a shadow run."""
    import psycopg2

    from models.heads import HeadRef
    from models.registry.lifecycle import LifecycleError, RefusedHead, UnknownHead
    from models.registry.shadows import ShadowRefused, start_shadow, stop_shadow

    problem = flag_error(args)
    if problem is not None:
        return fail(problem, 2)
    try:
        HeadRef(args.region, args.model, args.version or "v1")  # the names' rules
        if args.stop:
            done, ended = stop_shadow(settings, args.region, args.model, reason=args.reason)
            say(f"stopped the shadow {ended.version} of {args.region}/{args.model} (live: {done.pointer.version}; "
                f"registry seq {done.pointer.seq})")
            return 0
        done = start_shadow(settings, args.region, args.model, args.version, args.percent, reason=args.reason)
    except (ShadowRefused, UnknownHead, RefusedHead, ValueError) as exc:
        return fail(str(exc).strip(), 2)
    except LifecycleError as exc:
        return fail(str(exc).strip(), 1)
    except psycopg2.Error as exc:
        return fail(f"PostgreSQL: {str(exc).strip()} (is it up? `phrasestream up`)", 1)
    spec = done.pointer.shadow
    assert spec is not None  # start_shadow wrote one
    say(f"shadow {spec.version} runs beside {done.pointer.version} for {args.region}/{args.model} on "
        f"{spec.percent:g}% of phrases (registry seq {done.pointer.seq}); its answers go to "
        f"{settings.topic_shadow}; compare with `phrasestream shadow-report --region {args.region} "
        f"--model {args.model}`")
    return 0
