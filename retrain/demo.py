"""Train and activate the demo heads on the vendored CLINC150 data.

=========  ========  ===============================  =======================
region     model     training data                    classes
=========  ========  ===============================  =======================
global     intent    data_full train + oos_train      150 intents + ``oos``
global     domain    the same, mapped to domains      10 domains + ``oos``
eu         intent    data_imbalanced train + oos      150 intents + ``oos``
eu         domain    the same, mapped to domains      10 domains + ``oos``
=========  ========  ===============================  =======================

Every head is early-stopped on val + oos_val. The test split (test + oos_test) is never
trained on: it only gives ``report_test.csv`` and the test metrics.

Texts go through ``schemas.cleaning.clean`` (the cleaner the stream uses) and are embedded
once; the embeddings are cached as float32 ``.npy`` (no pickle) under
``<models_root>/embcache/<embedder_version>/<sha256 of the text list>.npy``.

CLI: ``python -m retrain.demo [--force] [--quiet]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.datasets import Clinc150, load_clinc150
from models.heads import HeadError, HeadRef, LabeledVectors, TrainedHead, TrainParams, read_metadata, train_head
from models.registry import Registry
from schemas.cleaning import clean

if TYPE_CHECKING:  # pragma: no cover
    from schemas.settings import Settings


class EmbedderLike(Protocol):
    version: str
    dim: int

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class DemoHead:
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

# TrainParams' defaults were tuned on the validation split (never on test); see TrainParams.
DEMO_PARAMS: dict[str, TrainParams] = {
    "intent": TrainParams(),
    "domain": TrainParams(),
}

EMBED_CHUNK = 256


# --------------------------------------------------------------------------------------------
# Embedding cache


def text_list_key(texts: Sequence[str]) -> str:
    """Return the cache key of an ordered text list: sha256 of its JSON, 32 hex digits."""
    h = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()[:32]


def embcache_dir(models_root: Path | str, embedder_version: str) -> Path:
    return Path(models_root) / "embcache" / embedder_version


def embed_cached(
    embedder: EmbedderLike,
    texts: Sequence[str],
    cache_dir: Path | str,
    progress: bool = True,
    chunk: int = EMBED_CHUNK,
) -> np.ndarray:
    """Embed ``texts`` (in order), reusing ``<cache_dir>/<key>.npy`` if it is there.

    The array is saved and loaded with ``allow_pickle=False``; a cached file of the wrong
    shape or dtype is ignored and rewritten.
    """
    texts = list(texts)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{text_list_key(texts)}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.dtype == np.float32 and arr.shape == (len(texts), embedder.dim):
                return arr
        except (OSError, ValueError):
            pass
    from tqdm.auto import tqdm

    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress, file=sys.stderr) as bar:
        for i in range(0, len(texts), chunk):
            part = texts[i : i + chunk]
            out[i : i + len(part)] = np.asarray(embedder.embed_batch(part), dtype=np.float32)
            bar.update(len(part))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{path.stem}.{secrets.token_hex(4)}.tmp.npy"
    try:
        with open(tmp, "wb") as f:
            np.save(f, out, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DemoData:
    """The three splits of one demo head as (raw text, label) pairs."""

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]


def demo_data(spec: DemoHead) -> DemoData:
    ds: Clinc150 = load_clinc150(spec.variant)  # type: ignore[arg-type]
    splits = {name: ds.with_oos(name) for name in ("train", "val", "test")}
    if spec.target == "domain":
        splits = {name: ds.to_domains(rows) for name, rows in splits.items()}
    elif spec.target != "intent":
        raise ValueError(f"unknown demo target {spec.target!r}")
    return DemoData(**splits)


def demo_texts(specs: Sequence[DemoHead] = DEMO_HEADS) -> list[str]:
    """Return the sorted distinct cleaned texts of every split of every demo head."""
    seen: set[str] = set()
    for spec in specs:
        data = demo_data(spec)
        for rows in (data.train, data.val, data.test):
            seen.update(clean(text) for text, _ in rows)
    return sorted(seen)


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class DemoRun:
    """What :func:`build_demo_heads` did."""

    refs: list[HeadRef]
    trained: list[TrainedHead] = field(default_factory=list)
    skipped: bool = False
    embed_seconds: float = 0.0
    train_seconds: float = 0.0
    n_texts: int = 0


def _active_demo_refs(registry: Registry, embedder_version: str) -> list[HeadRef] | None:
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
        if meta.get("embedder_version") != embedder_version:
            return None
        refs.append(ref)
    return refs


def demo_heads_current(settings: Settings, embedder_version: str) -> bool:
    """Say whether every demo head is active and built for ``embedder_version`` (no TensorFlow)."""
    return _active_demo_refs(Registry(settings.models_root), embedder_version) is not None


def build_demo_heads(
    settings: Settings,
    embedder: EmbedderLike,
    progress: bool = True,
    force: bool = False,
    params: dict[str, TrainParams] | None = None,
) -> DemoRun:
    """Train and activate the four demo heads unless they are all active for this embedder."""
    registry = Registry(settings.models_root)
    if not force:
        refs = _active_demo_refs(registry, embedder.version)
        if refs is not None:
            return DemoRun(refs=refs, skipped=True)
    params = {**DEMO_PARAMS, **(params or {})}

    t0 = time.perf_counter()
    texts = demo_texts()
    vectors = embed_cached(
        embedder, texts, embcache_dir(settings.models_root, embedder.version), progress=progress
    )
    row = {text: i for i, text in enumerate(texts)}
    embed_seconds = time.perf_counter() - t0
    _say(progress, f"embedded {len(texts)} distinct texts in {embed_seconds:.1f}s (embedder {embedder.version})")

    def labeled(rows: list[tuple[str, str]]) -> LabeledVectors:
        idx = np.fromiter((row[clean(text)] for text, _ in rows), dtype=np.int64, count=len(rows))
        return LabeledVectors([t for t, _ in rows], [label for _, label in rows], vectors[idx])

    run = DemoRun(refs=[], embed_seconds=embed_seconds, n_texts=len(texts))
    t1 = time.perf_counter()
    for spec in DEMO_HEADS:
        data = demo_data(spec)
        train, val, test = labeled(data.train), labeled(data.val), labeled(data.test)
        labels = sorted(set(train.labels) | set(val.labels) | set(test.labels))
        head_params = params[spec.target]
        trained = train_head(
            settings.models_root,
            spec.region,
            spec.model,
            embedder_version=embedder.version,
            train=train,
            val=val,
            test=test,
            params=head_params,
            labels=labels,
            extra_metadata={
                "dataset": f"CLINC150 data_{spec.variant} (CC BY 3.0)",
                "target": spec.target,
                "cleaner": "schemas.cleaning.clean",
                "splits": {"train": "train+oos_train", "val": "val+oos_val", "test": "test+oos_test"},
            },
        )
        registry.activate(trained.ref)
        run.trained.append(trained)
        run.refs.append(trained.ref)
        _say(progress, format_head_line(trained))
    run.train_seconds = time.perf_counter() - t1
    return run


def train_demo_heads(
    settings: Settings, embedder: EmbedderLike, progress: bool = True, force: bool = False
) -> list[HeadRef]:
    """Return the active demo heads, training and activating them first if needed.

    Nothing is done if every demo head is active and was built for ``embedder.version``
    (unless ``force``).
    """
    return build_demo_heads(settings, embedder, progress=progress, force=force).refs


def format_head_line(trained: TrainedHead) -> str:
    test = trained.metrics["test"]
    val = trained.metrics["val"]
    in_scope = test.get("in_scope_accuracy")
    return (
        f"{trained.ref}: test accuracy {test['accuracy']:.4f}, weighted F1 {test['weighted_f1']:.4f}, "
        f"in-scope accuracy {in_scope:.4f}, in-scope weighted F1 {test.get('in_scope_weighted_f1') or 0:.4f}, "
        f"oos recall {test.get('oos_recall') or 0:.4f} "
        f"(val accuracy {val['accuracy']:.4f}; {trained.epochs_run} epochs, {trained.train_seconds:.1f}s)"
    )


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrain.demo", description="Train the CLINC150 demo heads.")
    parser.add_argument("--force", action="store_true", help="train even if the demo heads are already active")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-head lines")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from models.embedder import load_embedder
    from schemas.settings import Settings

    settings = Settings()
    t0 = time.perf_counter()
    embedder = load_embedder(settings)
    load_seconds = time.perf_counter() - t0
    run = build_demo_heads(settings, embedder, progress=not args.quiet, force=args.force)
    if run.skipped:
        print("demo heads already active for embedder", embedder.version)
        for ref in run.refs:
            print(" ", ref)
        return 0
    print(f"embedder {embedder.version}: loaded in {load_seconds:.1f}s")
    print(f"embedding: {run.n_texts} texts in {run.embed_seconds:.1f}s; training: {run.train_seconds:.1f}s")
    for trained in run.trained:
        print(format_head_line(trained))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
