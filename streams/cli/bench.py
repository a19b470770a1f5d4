"""``phrasestream bench``: every speed figure in one run (``streams.tools.bench``)."""

from __future__ import annotations

import argparse

from schemas.settings import Settings


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from ops.services import up
    from retrain.train.demo_heads import ensure_demo_heads
    from streams.tools.bench import bench_command

    up(settings)  # the bench starts its own workers, in scratch topics; the demo's worker may idle
    ensure_demo_heads(settings, progress=True)
    return bench_command(settings, count=args.count, as_json=args.json, st_python=args.st_python)
