"""``python -m models.embedder build|version|precisions``: build the export, print the version, or
time the precisions against each other (JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from models.embedder.tfenv import prepare_tensorflow

if TYPE_CHECKING:
    from schemas.settings import Settings


def main(argv: Iterable[str] | None = None) -> int:
    """Run ``build`` (build the export if missing; print its version and folder) or ``version``."""
    parser = argparse.ArgumentParser(prog="python -m models.embedder",
                                     description="The MiniLM embedder's TensorFlow export.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the SavedModel export (if missing); print version and path")
    sub.add_parser("version", help="print the version that GRAPH_VERSION and the installed weights give")
    timing = sub.add_parser("precisions", help="time each precision against fp32 on CLINC150 test phrases (JSON)")
    timing.add_argument("--precisions", default="fp32,int8", help="comma-separated, fp32 first (default fp32,int8)")
    timing.add_argument("--rounds", type=int, default=3, help="rounds; the precisions take turns in each (default 3)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cmd == "version":
        from models.embedder.version import current_version

        print(current_version())
        return 0
    prepare_tensorflow()
    logging.basicConfig(level=logging.WARNING)
    from models.embedder.export import build_embedder
    from schemas.settings import Settings

    if args.cmd == "precisions":
        print(json.dumps(compare_precisions(Settings(), args.precisions.split(","), args.rounds)))
        return 0
    path = build_embedder(Settings())
    print(path.name)
    print(path.resolve())
    return 0


BATCHES = {"bs1": (1, 300), "bs32": (32, 1600)}
"""Batch size and how many CLINC150 test phrases each pass embeds."""


def compare_precisions(settings: Settings, precisions: list[str], rounds: int) -> dict[str, object]:
    """Return phrases/s of each precision per round at batch 1 and 32, and each one's median over fp32's.

    The precisions take turns within a round (the first of them alternating), so that other
    work on the machine falls on all of them; only the ratios mean anything on a shared machine.
    """
    import numpy as np

    from models.datasets import load_clinc150
    from models.embedder.bench import measure_throughput
    from models.embedder.runtime import load_embedder, with_precision
    from schemas.cleaning import clean

    fp32 = load_embedder(settings, precision="fp32")
    embedders = {p: with_precision(fp32, p) for p in precisions}
    texts = [clean(t) for t, _ in load_clinc150("full").test]
    random.Random(0).shuffle(texts)
    rates: dict[str, dict[str, list[float]]] = {key: {p: [] for p in precisions} for key in BATCHES}
    for round_no in range(rounds):
        order = precisions if round_no % 2 == 0 else precisions[::-1]
        for key, (size, count) in BATCHES.items():
            for p in order:
                rates[key][p].append(round(measure_throughput(embedders[p], texts[:count], size, repeats=2), 1))
    out: dict[str, object] = {"version": fp32.version, "phrases_per_s": rates}
    out["median_over_fp32"] = {key: {p: round(float(np.median(r[p]) / np.median(r["fp32"])), 3) for p in precisions}
                               for key, r in rates.items()}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
