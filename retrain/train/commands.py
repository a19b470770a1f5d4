"""The training commands behind ``phrasestream train --data`` and ``phrasestream report``.

Both print progress to standard error and their result to standard output; bad input is
one line on standard error and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.heads import EVAL_PREDICTIONS_FILE, LABELS_FILE, HeadError, HeadRef, LabelEncoder, verify_head
from models.registry.mirror import Registry

USAGE_ERROR = 2


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return USAGE_ERROR


def _load_config(path: str | None, overrides: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from retrain.train.config import TrainConfig

    base: dict[str, Any] = {}
    if path:
        try:
            base = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the training configuration {path}: {exc}") from None
        if not isinstance(base, dict):
            raise ValueError(f"the training configuration {path} is not a JSON object")
    data = {**base.get("data", {}), **{k: v for k, v in overrides.pop("data").items() if v is not None}}
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}, "data": data}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"bad training configuration: {where}: {first['msg']}") from None


def train_command(settings: Any, *, data: str, eval_path: str | None, text_col: str | None, label_col: str | None,
                  region: str | None, model: str | None, config_path: str | None, activate: bool, as_json: bool,
                  progress: bool) -> int:
    """Train one head on a CSV/JSONL file; print its figures; return the exit code."""
    from retrain.train.data import DataError, read_labeled

    if not region or not model:
        return _fail("--data needs --region and --model (or a --config that names them)")
    try:
        config = _load_config(config_path, {"region": region, "model": model, "data": {
            "path": data, "eval_path": eval_path, "text_col": text_col, "label_col": label_col}})
    except ValueError as exc:
        return _fail(str(exc))
    src = config.data
    try:
        train = read_labeled(src.path, src.text_col, src.label_col)
        evald = read_labeled(src.eval_path, src.text_col, src.label_col, min_classes=1) if src.eval_path else None
    except DataError as exc:
        return _fail(str(exc))
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    summary = train.summary()
    say(f"read {summary['n_rows']} rows of {summary['n_classes']} classes from {src.path}"
        + (f"; dropped {train.n_empty_text} with an empty text or label" if train.n_empty_text else "")
        + (f"; {summary['n_singletons']} classes have a single example" if train.singletons else ""))
    if evald is not None:
        say(f"read {len(evald.rows)} evaluation rows from {src.eval_path}"
            + (f"; dropped {evald.n_empty_text} with an empty text or label" if evald.n_empty_text else ""))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from models.embedder import load_embedder
    from retrain.train.trainer import make_trainer

    embedder = load_embedder(settings, warm=False)
    try:
        trained = make_trainer(config).train(
            settings.models_root, embedder, train.rows, evald.rows if evald else None, progress=progress,
            data_summary={"train": summary, "eval": evald.summary() if evald else None})
    except ValueError as exc:
        return _fail(str(exc))
    if activate:
        from models.registry.lifecycle import LifecycleError, change

        try:
            change(settings, trained.ref, action="activate", reason="phrasestream train --activate")
        except LifecycleError as exc:
            print(f"error: {trained.ref} was built in {trained.path} but not made live: {exc}", file=sys.stderr)
            return 1
    result = {**trained.summary(), "active": activate, "path": str(trained.path),
              "n_empty_text": train.n_empty_text, "n_singletons": len(train.singletons), **trained.notes}
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")
        if not activate:
            print(f"not active: activate it with `phrasestream train ... --activate`, or promote {trained.ref}")
    return 0


def _pick_version(registry: Registry, region: str, model: str, version: str | None) -> HeadRef:
    versions = registry.versions(region, model)
    if not versions:
        known = sorted({f"{r}/{m}" for r, ms in registry.active().items() for m in ms})
        raise LookupError(f"no head {region}/{model} is built; known heads: {known}")
    if version:
        ref = HeadRef(region, model, version)
        if ref not in versions:
            raise LookupError(f"{region}/{model} has no version {version!r}; built: {[v.version for v in versions]}")
        return ref
    return registry.active_ref(region, model) or versions[-1]


def _evidence(settings: Any, path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None] | None:
    """The evidence of the wrong evaluation rows (``retrain.reports.evidence``), or None with a warning."""
    from models.heads import load_head
    from models.heads.neighbors import has_stored_index, index_for
    from retrain.reports.evidence import CachedReadout, eval_features, wrong_row_evidence

    wrong = [i for i, r in enumerate(rows) if r["label"] != r["pred"]]
    if not wrong:
        return None
    try:
        head = load_head(path)
        if not has_stored_index(head):
            index_for(head, CachedReadout(head, settings.models_root, settings))
        texts = [rows[i]["clean_text"] for i in wrong]
        feats = eval_features(head, texts, settings.models_root, settings)
        found = wrong_row_evidence(head, texts, [rows[i]["label"] for i in wrong], [rows[i]["pred"] for i in wrong],
                                   feats)
    except (HeadError, LookupError, ValueError, OSError, RuntimeError) as exc:  # the page is worth writing without
        print(f"warning: the page shows no evidence: {exc}", file=sys.stderr, flush=True)
        return None
    out: list[dict[str, Any] | None] = [None] * len(rows)
    for i, e in zip(wrong, found):
        out[i] = e
    return out


def report_command(settings: Any, *, region: str, model: str, version: str | None, out: str) -> int:
    """Write the error-analysis page of one head; print where; return the exit code."""
    from retrain.reports.error_analysis import EvalRows, write_report
    from retrain.train.artifacts import read_jsonl_gz

    registry = Registry(settings.models_root)
    try:
        ref = _pick_version(registry, region, model, version)
    except (LookupError, ValueError) as exc:
        return _fail(str(exc))
    path = registry.path_of(ref)
    try:
        meta = verify_head(path)
    except HeadError as exc:
        return _fail(str(exc))
    if not (path / EVAL_PREDICTIONS_FILE).is_file():
        return _fail(f"{ref} has no {EVAL_PREDICTIONS_FILE} (made by an older version): train it again")
    encoder = LabelEncoder.from_json((path / LABELS_FILE).read_text(encoding="utf-8"))
    rows = read_jsonl_gz(path / EVAL_PREDICTIONS_FILE)
    classes = list(encoder.labels) + sorted({r["label"] for r in rows} - set(encoder.labels))
    ev = EvalRows(texts=[r["text"] for r in rows], y_true=[r["label"] for r in rows],
                  y_pred=[r["pred"] for r in rows], confidence=np.array([r["confidence"] for r in rows]),
                  top_k=[[tuple(p) for p in r["top_k"]] for r in rows])
    ev.evidence = _evidence(settings, path, rows)
    oos = meta.get("config", {}).get("oos", {}).get("label", "oos")
    scores = [r.get("oos_score") for r in rows]
    has_scores = oos in classes and all(s is not None for s in scores)
    threshold = meta.get("training", {}).get("oos_threshold")
    summary = {"head": str(ref), "created_at": meta.get("created_at"), "embedder": meta.get("embedder_version"),
               "live": registry.active_ref(region, model) == ref, **(meta.get("metrics", {}).get("eval") or {}),
               "oos_threshold": threshold}
    page = write_report(out, title=f"{ref}: errors on the evaluation data", classes=classes, rows=ev,
                        oos_label=oos if oos in classes else None, oos_threshold=threshold,
                        oos_scores=np.array(scores, dtype=float) if has_scores else None, summary=summary)
    print(page)
    return 0


# --------------------------------------------------------------------------------------------
# the lifecycle: which versions exist, which is live, promote and roll back


METRIC_KEYS = ("accuracy", "weighted_f1", "macro_f1", "in_scope_accuracy", "oos_recall")


def version_rows(settings: Any, region: str | None = None) -> list[dict[str, Any]]:
    """Return one dict per version built here or stored in PostgreSQL, with ``live`` from the registry topic."""
    from models.heads import read_metadata
    from models.registry.bundles import BundleStore
    from models.registry.lifecycle import _local_refs, live_pointers

    metas: dict[HeadRef, dict[str, Any]] = {}
    where: dict[HeadRef, str] = {}
    for ref in _local_refs(settings):
        if region is None or ref.region == region:
            try:
                metas[ref] = read_metadata(ref.path(settings.models_root))
                where[ref] = "here"
            except HeadError:
                continue
    for stored in BundleStore(settings).list(region):
        metas.setdefault(stored.ref, stored.metadata)
        where[stored.ref] = "both" if where.get(stored.ref) == "here" else "database"
    live = live_pointers(settings)
    rows = []
    for ref in sorted(metas, key=lambda r: (r.region, r.model, r.version)):
        meta = metas[ref]
        metrics = (meta.get("metrics") or {}).get("eval") or (meta.get("metrics") or {}).get("test") or {}
        training = meta.get("training") or {}
        pointer = live.get(ref.key)
        rows.append({
            "region": ref.region, "model": ref.model, "version": ref.version,
            "live": pointer is not None and pointer.version == ref.version,
            "live_since": pointer.at.isoformat() if pointer is not None and pointer.version == ref.version else None,
            "created_at": meta.get("created_at"), "format": meta.get("format"),
            "embedder_version": meta.get("embedder_version"), "stored": where[ref],
            "n_classes": meta.get("n_classes"), "n_train": training.get("n_train"),
            "n_eval": training.get("n_eval", training.get("n_test")),
            **{k: metrics.get(k) for k in METRIC_KEYS},
        })
    return rows


def _lifecycle_errors() -> tuple[type[Exception], ...]:
    import psycopg2

    from models.registry.bundles import BundleError
    from models.registry.lifecycle import LifecycleError

    return LifecycleError, BundleError, psycopg2.Error


def models_command(settings: Any, *, region: str | None, as_json: bool) -> int:
    """List the versions with their metrics and which one is live."""
    from models.registry.lifecycle import UnknownHead

    try:
        rows = version_rows(settings, region)
        if region is not None and not rows:
            raise UnknownHead(f"no heads in region {region!r}; regions with heads: "
                              f"{sorted({r['region'] for r in version_rows(settings)})}")
    except UnknownHead as exc:
        return _fail(str(exc))
    except _lifecycle_errors() as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(rows))
        return 0
    print(f"{'region':<10} {'model':<14} {'version':<24} {'live':<4} {'accuracy':>8} {'w-F1':>6} "
          f"{'in-scope':>8} {'oos rec':>7}  {'stored':<8}  created")
    for r in rows:
        def f(x: Any) -> str:
            return "-" if x is None else f"{x:.4f}"
        print(f"{r['region']:<10} {r['model']:<14} {r['version']:<24} {'*' if r['live'] else '':<4} "
              f"{f(r['accuracy']):>8} {f(r['weighted_f1']):>6} {f(r['in_scope_accuracy']):>8} "
              f"{f(r['oos_recall']):>7}  {r['stored']:<8}  {r['created_at']}")
    return 0


def promote_command(settings: Any, *, region: str, model: str, version: str, reason: str | None) -> int:
    """Make one version live on every worker, after checking its files; say what was live before."""
    from models.registry.lifecycle import RefusedHead, UnknownHead, change

    try:
        done = change(settings, HeadRef(region, model, version), action="promote", reason=reason)
    except (UnknownHead, RefusedHead, ValueError) as exc:
        return _fail(str(exc))
    except _lifecycle_errors() as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"promoted {done.ref}" + (f" (was {done.before})" if done.before and done.before != version else ""))
    return 0


def rollback_command(settings: Any, *, region: str, model: str, to: str | None, reason: str | None) -> int:
    """Make the previous live version (or ``to``) live again on every worker."""
    from models.registry.lifecycle import NothingToRollBack, RefusedHead, UnknownHead, rollback

    try:
        HeadRef(region, model, to or "v")
        done = rollback(settings, region, model, to=to, reason=reason)
    except (UnknownHead, NothingToRollBack, RefusedHead, ValueError) as exc:
        return _fail(str(exc))
    except _lifecycle_errors() as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"rolled back {region}/{model} to {done.ref.version}" + (f" (was {done.before})" if done.before else ""))
    return 0
