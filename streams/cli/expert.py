"""The expert loop's commands: ``explain``, ``review``, ``review-rule``, ``label-map``, ``shadow-report``.

Each command's work lives beside its concern and is imported inside the command, so the
worker never loads it: explanations in ``streams.cli.explain`` (``models.heads.explain``
computes them), the review page and its rules and label sets in ``streams.review``, the
shadow report in ``retrain.shadow``. ``promote --shadow`` is ``promote``'s (``streams.cli.training``).
"""

from __future__ import annotations

import argparse
from typing import Any

from schemas.settings import Settings


def add_expert_commands(sub: Any) -> None:
    """Add the expert loop's subcommands to the ``phrasestream`` parser's ``sub``."""
    p = sub.add_parser("explain", help="why a head gives a label: the terms, the readout, the nearest training examples")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True, help="the phrase (raw: it is cleaned as the worker cleans it)")
    p.add_argument("--label", help="also explain this label (default: the predicted one and the runner-up)")
    p.add_argument("--version", help="default: the live version")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("review", help="the review page for domain experts (a web app; 127.0.0.1 by default)")
    p.add_argument("--port", type=int, help="default: PHRASESTREAM_REVIEW_PORT (8080)")
    p.add_argument("--host", help="default: PHRASESTREAM_REVIEW_HOST (127.0.0.1)")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("review-rule", help="show or change a head's review rule, without retraining")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--margin", type=float, help="doubtful below this margin between the two best probabilities")
    p.add_argument("--random-rate", type=float, help="share of all answers in the random slice (0 turns it off)")
    p.add_argument("--budget", type=int, help="doubtful answers routed per head and hour, at most")
    p.add_argument("--random-budget", type=int, help="random-slice answers routed per head and hour, at most")
    p.add_argument("--oos", choices=("on", "off"), help="route oos answers")
    p.add_argument("--shadow-disagreement", choices=("on", "off"), help="route answers the shadow head disagrees with")
    p.add_argument("--reset", action="store_true", help="go back to the rule in the head's training configuration")
    p.add_argument("--json", action="store_true", help="print the rule in force as JSON")
    p.set_defaults(func=cmd_review_rule)

    p = sub.add_parser("label-map", help="rename or merge labels of a head: applied when retrain replays")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="map label OLD to NEW (merge: several OLDs to one NEW); repeatable")
    p.add_argument("--json", action="store_true", help="print the label sets as JSON")
    p.set_defaults(func=cmd_label_map)

    p = sub.add_parser("shadow-report", help="the live head against its shadow: agreement, confidence, latency, "
                       "accuracy on labelled phrases", description="exit codes: 0 report written, 1 a service "
                       "failed, 2 bad flags or an empty window")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--since", default="24h", metavar="DURATION", help="the window ending now (default 24h)")
    p.add_argument("--out", metavar="DIR", help="folder for report.html and summary.json")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.set_defaults(func=cmd_shadow_report)


def cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    from streams.cli.explain import explain_command

    return explain_command(settings, args)


def cmd_review(settings: Settings, args: argparse.Namespace) -> int:
    from streams.review.server import review_command

    return review_command(settings, args)


def cmd_review_rule(settings: Settings, args: argparse.Namespace) -> int:
    from streams.review.rules import review_rule_command

    return review_rule_command(settings, args)


def cmd_label_map(settings: Settings, args: argparse.Namespace) -> int:
    from streams.review.labelsets import label_map_command

    return label_map_command(settings, args)


def cmd_shadow_report(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.shadow.command import shadow_report_command

    return shadow_report_command(settings, args)
