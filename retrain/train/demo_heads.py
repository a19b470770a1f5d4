"""Train and activate the four demo heads on the vendored CLINC150 data (not the demo feed).

The commands that need heads (``phrasestream train`` without ``--data``, ``start``, ``run``,
``demo``, ``bench``) call :func:`ensure_demo_heads`: it trains these heads only when they are
not all active for the running embedder (its version and precision). (The stream of demo phrases that ``phrasestream demo``
produces is another job: ``streams.tools.demo_feed``.)

=========  ========  ===============================  =======================
region     model     training data                    classes
=========  ========  ===============================  =======================
global     intent    data_full train+val (+ oos)      150 intents + ``oos``
global     domain    the same, mapped to domains      10 domains + ``oos``
eu         intent    data_imbalanced train+val + oos  150 intents + ``oos``
eu         domain    the same, mapped to domains      10 domains + ``oos``
=========  ========  ===============================  =======================

They are trained like any user's head (``retrain.train.trainer``, the same defaults), except that they
try only the first candidate of the selection (:data:`DEMO_SELECTION`) and have no hidden-layer
ensemble member (:func:`demo_config`), which keeps ``make test`` short; a head trained on your
data with ``phrasestream train --data`` gets the whole recipe. The validation split for epochs,
temperature and threshold comes out of train+val; the test split (test + oos_test) is never
trained on: it is the evaluation data that gives ``report_eval.csv`` and the metrics.

CLI: ``python -m retrain.train.demo_heads [--force] [--quiet]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from models.datasets import Clinc150, load_clinc150
from models.heads import DEFAULT_PRECISION, HeadError, HeadRef, embedder_precision_of, read_metadata
from models.registry.mirror import Registry
from ops.logs import progress as progress_line
from retrain.train.config import EnsembleConfig, HeadConfig, SelectionConfig, TrainConfig
from retrain.train.data import Row
from retrain.train.features import precision_of
from retrain.train.trainer import Embedder, TrainedHead, make_trainer
from schemas.cleaning import clean

if TYPE_CHECKING:  # pragma: no cover
    from schemas.settings import Settings

log = logging.getLogger("phrasestream.train")


@dataclass(frozen=True)
class DemoHead:
    """One demo head: the slot it is active in and the CLINC150 data it learns."""

    region: str
    model: str
    variant: str
    """CLINC150 variant: ``full`` or ``imbalanced``."""
    target: str
    """``intent`` or ``domain``."""


DEMO_HEADS: tuple[DemoHead, ...] = (
    DemoHead("global", "intent", "full", "intent"),
    DemoHead("global", "domain", "full", "domain"),
    DemoHead("eu", "intent", "imbalanced", "intent"),
    DemoHead("eu", "domain", "imbalanced", "domain"),
)

DEMO_SELECTION = SelectionConfig(candidates=[{}], refit=False)
"""The demo heads train the default candidate only (the others cost minutes per head), and keep
the members fitted on the training rows instead of fitting them again on training + validation
rows (which would double the time of the intent heads)."""


def demo_config(spec: DemoHead) -> TrainConfig:
    """The training configuration of one demo head: the defaults, lightened to keep ``make test`` short.

    Every demo head tries the first candidate only, is not refitted on its validation rows, and
    leaves out the hidden-layer member of the ensemble. The member costs about 40 s of training
    per intent head on 2 cores (50-60 s with a busy core beside it: the largest share of the demo
    heads' time). What it buys, measured on 2026-12-06 (evaluation split, with / without it):
    global/intent in-scope accuracy 0.9596 / 0.9571, oos recall 0.774 / 0.718, accuracy
    0.9258 / 0.9136; eu/intent in-scope 0.9587 / 0.9527, oos recall 0.675 / 0.693, accuracy
    0.9071 / 0.9055. The domain heads (11 classes, 98% in-scope) never had it.
    """
    head = HeadConfig(ensemble=EnsembleConfig(hidden=0))
    return TrainConfig(region=spec.region, model=spec.model, selection=DEMO_SELECTION, head=head)


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DemoData:
    """The splits of one demo head as (raw text, label) pairs: train (train+val) and test."""

    train: list[tuple[str, str]]
    test: list[tuple[str, str]]


def demo_data(spec: DemoHead) -> DemoData:
    ds: Clinc150 = load_clinc150(spec.variant)  # type: ignore[arg-type]
    splits = {name: ds.with_oos(name) for name in ("train", "val", "test")}
    if spec.target == "domain":
        splits = {name: ds.to_domains(rows) for name, rows in splits.items()}
    elif spec.target != "intent":
        raise ValueError(f"unknown demo target {spec.target!r}")
    return DemoData(train=splits["train"] + splits["val"], test=splits["test"])


def demo_rows(pairs: Sequence[tuple[str, str]]) -> list[Row]:
    return [Row(text=t, clean_text=clean(t), label=label, line=i + 1) for i, (t, label) in enumerate(pairs)]


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class DemoRun:
    """What :func:`build_demo_heads` did."""

    refs: list[HeadRef]
    trained: list[TrainedHead] = field(default_factory=list)
    skipped: bool = False
    train_seconds: float = 0.0


def _active_demo_refs(registry: Registry, embedder_version: str, precision: str) -> list[HeadRef] | None:
    active = registry.active()
    refs = []
    for spec in DEMO_HEADS:
        ref = active.get(spec.region, {}).get(spec.model)
        if ref is None:
            return None
        try:
            meta = read_metadata(registry.path_of(ref))
        except HeadError:
            return None
        if meta.get("embedder_version") != embedder_version or embedder_precision_of(meta) != precision:
            return None
        refs.append(ref)
    return refs


def demo_heads_current(settings: Settings, embedder_version: str, precision: str | None = DEFAULT_PRECISION) -> bool:
    """Say whether every demo head is active and built for ``embedder_version`` and ``precision``
    (no TensorFlow); an unknown precision (None: ``auto`` not decided yet) is never current."""
    if precision is None:
        return False
    return _active_demo_refs(Registry(settings.models_root), embedder_version, precision) is not None


def build_demo_heads(
    settings: Settings,
    embedder: Embedder,
    progress: bool = True,
    force: bool = False,
    configs: dict[tuple[str, str], TrainConfig] | None = None,
) -> DemoRun:
    """Train and activate the four demo heads unless they are all active for this embedder."""
    registry = Registry(settings.models_root)
    if not force:
        refs = _active_demo_refs(registry, embedder.version, precision_of(embedder))
        if refs is not None:
            return DemoRun(refs=refs, skipped=True)
    run = DemoRun(refs=[])
    t0 = time.perf_counter()
    for spec in DEMO_HEADS:
        data = demo_data(spec)
        config = (configs or {}).get((spec.region, spec.model)) or demo_config(spec)
        progress_line(log, f"training {spec.region}/{spec.model} on CLINC150 data_{spec.variant}", progress)
        trained = make_trainer(config).train(
            settings.models_root, embedder, demo_rows(data.train), demo_rows(data.test), progress=progress,
            extra_metadata={
                "dataset": f"CLINC150 data_{spec.variant} (CC BY 3.0)",
                "target": spec.target,
                "splits": {"train": "train+val+oos_train+oos_val", "eval": "test+oos_test"},
            })
        registry.activate(trained.ref)
        run.trained.append(trained)
        run.refs.append(trained.ref)
        progress_line(log, format_head_line(trained), progress)
    run.train_seconds = time.perf_counter() - t0
    return run


def train_demo_heads(
    settings: Settings, embedder: Embedder, progress: bool = True, force: bool = False
) -> list[HeadRef]:
    """Return the active demo heads, training and activating them first if needed.

    Nothing is done if every demo head is active and was built for ``embedder.version`` and its
    precision (unless ``force``).
    """
    return build_demo_heads(settings, embedder, progress=progress, force=force).refs


def ensure_demo_heads(settings: Settings, progress: bool = True, force: bool = False) -> None:
    """Build the embedder and train the demo heads unless they are active for this embedder.

    The check needs no TensorFlow (``models.embedder.current_version`` and the precision the
    settings give, ``auto``'s as decided on this CPU; undecided, the embedder is loaded to
    decide it). Heads active here that the registry topic does not name yet are published to it.
    """
    from models.embedder import current_version, load_embedder
    from models.embedder.runtime import known_precision
    from models.registry.lifecycle import change, publish_local

    version = current_version()
    if force or not demo_heads_current(settings, version, known_precision(settings, version)):
        for ref in train_demo_heads(settings, load_embedder(settings, warm=False), progress=progress, force=force):
            change(settings, ref, action="activate", reason="demo head trained on CLINC150")
    for ref in publish_local(settings):  # heads active here that the registry topic does not name yet
        if progress:
            with contextlib.suppress(OSError):  # a closed terminal or pipe is no error
                print(f"published {ref} to {settings.topic_registry}", flush=True)


def format_head_line(trained: TrainedHead) -> str:
    ev = trained.metrics["eval"]
    line = (f"{trained.ref}: eval accuracy {ev['accuracy']:.4f}, weighted F1 {ev['weighted_f1']:.4f}, "
            f"macro F1 {ev['macro_f1']:.4f}")
    if ev.get("in_scope_accuracy") is not None:
        line += (f", in-scope accuracy {ev['in_scope_accuracy']:.4f}, "
                 f"in-scope weighted F1 {ev.get('in_scope_weighted_f1') or 0:.4f}, "
                 f"oos recall {ev.get('oos_recall') or 0:.4f}")
    return line + f" ({trained.n_train} train / {trained.n_eval} eval rows, {trained.train_seconds:.0f}s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrain.train.demo_heads", description="Train the CLINC150 demo heads.")
    parser.add_argument("--force", action="store_true", help="train even if the demo heads are already active")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-head lines")
    args = parser.parse_args(argv)
    from models.embedder.tfenv import prepare_tensorflow

    prepare_tensorflow()  # before TensorFlow loads: quiet logs, no CUDA probe without a GPU
    from models.embedder import load_embedder
    from schemas.settings import Settings

    settings = Settings()
    t0 = time.perf_counter()
    embedder = load_embedder(settings, warm=False)
    load_seconds = time.perf_counter() - t0
    run = build_demo_heads(settings, embedder, progress=not args.quiet, force=args.force)
    if run.skipped:
        print("demo heads already active for embedder", embedder.version)
        for ref in run.refs:
            print(" ", ref)
        return 0
    print(f"embedder {embedder.version}: loaded in {load_seconds:.1f}s; training: {run.train_seconds:.1f}s")
    for trained in run.trained:
        print(format_head_line(trained))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
