"""``phrasestream up | status | stop | clean``: the local services and this app id's daemons."""

from __future__ import annotations

import argparse

from schemas.settings import Settings
from streams.cli.output import fail, say


def cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    from ops.services import up

    up(settings)
    return 0


def cmd_status(settings: Settings, _: argparse.Namespace) -> int:
    from ops.daemons import daemon_status
    from ops.services import status

    status(settings)
    for daemon in daemon_status(settings):
        print(daemon.line())
    return 0


def cmd_stop(settings: Settings, args: argparse.Namespace) -> int:
    from ops.daemons import stop_daemons
    from ops.services import stop_all

    stop_daemons(settings, say=say)
    if not args.keep_services:
        stop_all(settings)
    return 0


def cmd_clean(settings: Settings, args: argparse.Namespace) -> int:
    from ops.daemons import stop_daemons
    from ops.processes import ServiceError
    from ops.services import clean

    stop_daemons(settings, say=say)
    try:
        removed = clean(settings, everything=args.all)
    except ServiceError as exc:
        return fail(exc, 1)
    for path in removed:
        print(f"removed   {path}")
    if not removed:
        print("nothing to remove")
    return 0
