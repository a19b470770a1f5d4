"""``phrasestream train | report | models | promote | rollback | retrain``: heads and their versions.

Each command parses its flags here and calls ``retrain/`` (imported when the command runs: the
serving commands never load it).
"""

from __future__ import annotations

import argparse
import sys

from schemas.settings import Settings
from streams.cli.output import fail


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    if args.data or args.config:
        if not args.data:
            return fail("--config needs --data (the labelled phrases to train on)", 2)
        from retrain.train.commands import train_command

        return train_command(settings, data=args.data, eval_path=args.eval, text_col=args.text_col,
                             label_col=args.label_col, region=args.region, model=args.model,
                             config_path=args.config, activate=args.activate, as_json=args.json,
                             progress=not args.quiet)
    given = [f for f in ("eval", "region", "model", "text_col", "label_col") if getattr(args, f)]
    if given or args.activate or args.json:
        flags = ", ".join("--" + f.replace("_", "-") for f in given) or "--activate/--json"
        return fail(f"{flags} only go with --data (without it, train builds the demo heads)", 2)
    from models.registry.lifecycle import LifecycleError, active_heads
    from retrain.train.demo_heads import ensure_demo_heads

    try:
        ensure_demo_heads(settings, progress=not args.quiet, force=args.force)
        live = active_heads(settings)
    except LifecycleError as exc:
        return fail(exc, 1)
    for region, models in live.items():
        print(f"active heads of {region}: {', '.join(models)}")
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import report_command

    return report_command(settings, region=args.region, model=args.model, version=args.version, out=args.out)


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import models_command

    return models_command(settings, region=args.region, as_json=args.json)


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import promote_command

    if args.shadow or args.stop or args.percent is not None:
        from streams.cli.shadow import shadow_command

        return shadow_command(settings, args)
    if args.version is None:
        print("error: promote needs --version (only --shadow --stop goes without one)", file=sys.stderr)
        return 2
    return promote_command(settings, region=args.region, model=args.model, version=args.version, reason=args.reason)


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import rollback_command

    return rollback_command(settings, region=args.region, model=args.model, to=args.to, reason=args.reason)


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.replay.command import retrain_command

    return retrain_command(settings, region=args.region, model=args.model, since=args.since, date_from=args.date_from,
                           date_to=args.date_to, compare=args.compare_windows, tolerance=args.tolerance,
                           test_fraction=args.test_fraction, config_path=args.config, reason=args.reason,
                           as_json=args.json, progress=not args.quiet, no_promote=args.no_promote)
