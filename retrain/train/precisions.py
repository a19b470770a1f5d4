"""What a precision costs in accuracy: one head recipe trained on each precision's features (JSON).

``python -m retrain.train.precisions [--variant full|imbalanced] [--precisions fp32,int8] --models-dir DIR``
trains the global/intent demo recipe (:func:`~retrain.train.demo_heads.demo_config`) on the
CLINC150 train split (with ``oos_train``) only, once per precision, evaluates it on the test
split (with ``oos_test``), and prints the in-scope accuracy and the rest of each, and each
precision's in-scope accuracy minus fp32's in points. The heads and the feature caches are
written under ``DIR`` (not activated anywhere); give a scratch folder. This is how int8 was
admitted to ``embed_precision=auto`` (``models.embedder.cpu.INT8_ON_AUTO``: within 0.3 points).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def compare(models_dir: Path, variant: str, precisions: Sequence[str]) -> dict[str, Any]:
    """Train and evaluate the recipe on each precision's features; return the figures."""
    from models.datasets import load_clinc150
    from models.embedder.runtime import load_embedder, with_precision
    from retrain.train.demo_heads import DEMO_HEADS, demo_config, demo_rows
    from retrain.train.trainer import make_trainer
    from schemas.settings import Settings

    data = load_clinc150(variant)  # type: ignore[arg-type]
    train, test = demo_rows(data.with_oos("train")), demo_rows(data.with_oos("test"))
    fp32 = load_embedder(Settings(), precision="fp32", warm=False)
    out: dict[str, Any] = {"variant": variant, "n_train": len(train), "n_test": len(test),
                           "recipe": "demo_config(global/intent)", "embedder": fp32.version}
    for precision in precisions:
        started = time.perf_counter()
        trained = make_trainer(demo_config(DEMO_HEADS[0])).train(
            models_dir, with_precision(fp32, precision), train, test, progress=False)
        ev = trained.metrics["eval"]
        out[precision] = {key: ev.get(key) for key in ("in_scope_accuracy", "accuracy", "oos_recall", "macro_f1")}
        out[precision]["seconds"] = round(time.perf_counter() - started, 1)
    if "fp32" in out:
        for precision in precisions:
            gap = (out[precision]["in_scope_accuracy"] - out["fp32"]["in_scope_accuracy"]) * 100
            out[precision]["in_scope_points_vs_fp32"] = round(gap, 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrain.train.precisions", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="a scratch folder for the heads and caches")
    parser.add_argument("--variant", choices=("full", "imbalanced"), default="full", help="CLINC150 variant")
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated (default fp32,int8)")
    args = parser.parse_args(argv)
    from models.embedder.tfenv import prepare_tensorflow

    prepare_tensorflow()
    print(json.dumps(compare(args.models_dir, args.variant, args.precisions.split(","))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
