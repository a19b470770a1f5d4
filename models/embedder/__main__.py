"""``python -m models.embedder build|version``: build the export, or print the version."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable

from models.embedder.tfenv import prepare_tensorflow


def main(argv: Iterable[str] | None = None) -> int:
    """Run ``build`` (build the export if missing; print its version and folder) or ``version``."""
    parser = argparse.ArgumentParser(prog="python -m models.embedder",
                                     description="The MiniLM embedder's TensorFlow export.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the SavedModel export (if missing); print version and path")
    sub.add_parser("version", help="print the version that GRAPH_VERSION and the installed weights give")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cmd == "version":
        from models.embedder.version import current_version

        print(current_version())
        return 0
    prepare_tensorflow()
    logging.basicConfig(level=logging.WARNING)
    from models.embedder.export import build_embedder
    from schemas.settings import Settings

    path = build_embedder(Settings())
    print(path.name)
    print(path.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
