"""The command behind ``phrasestream retrain``: replay ``phrases.labeled``, train, gate, promote.

::

    phrasestream retrain --region R --model M (--since 90d | --from DATE [--to DATE])
        [--tolerance 0.005] [--test-fraction 0.2] [--config FILE] [--reason TEXT] [--no-promote] [--json] [--quiet]
    phrasestream retrain --region R --model M --compare-windows 30d,90d,1y,all [--json]

The steps are named functions in their own modules: the window (``retrain.replay.windows``), the
Kafka read (``retrain.replay.reader``), selection, deduplication and the time split
(``retrain.replay.select``), scoring and the gate (``retrain.replay.gate``). This module wires
them to the trainer, the embedder and ``models.registry.lifecycle``, and prints. Progress
and warnings go to standard error, the result to standard output (with ``--json`` the last
line is one JSON object). ``--no-promote`` builds, scores and gates the candidate but never
promotes it (``decision`` is ``not_promoted``, ``gate_passed`` what the gate said): the expert
loop runs it in shadow first (``promote --shadow``). Exit codes: 0 the command ran (the
candidate was promoted or kept out of service: see ``decision``); 1 Kafka could not be read or the promotion failed; 2 bad
flags or too few labelled examples (one ``error: ...`` line on standard error).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from models.heads import HeadRef
from retrain.replay.gate import Score, gate, score
from retrain.replay.reader import Replay, ReplayError, read_window
from retrain.replay.select import (
    MIN_TRAIN_CLASSES,
    Deduped,
    Example,
    NotEnoughData,
    check_enough,
    deduplicate,
    relabel,
    time_split,
    trains_only,
)
from retrain.replay.windows import Window, WindowError, between_window, compare_windows, from_ms, iso, since_window

USAGE_ERROR = 2
FAILED = 1

DEFAULT_TOLERANCE = 0.005
DEFAULT_TEST_FRACTION = 0.2


def _fail(msg: str, code: int = USAGE_ERROR) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return code


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _check_flags(*, since: str | None, date_from: str | None, date_to: str | None, compare: str | None,
                 tolerance: float, test_fraction: float) -> str | None:
    """Return what is wrong with the flags (one line), or None."""
    if compare is not None:
        if since or date_from or date_to:
            return "--compare-windows sets its own windows: leave out --since, --from and --to"
    elif since and (date_from or date_to):
        return "give either --since or --from/--to, not both"
    elif date_to and not date_from:
        return "--to needs --from (the window is [--from, --to))"
    elif not since and not date_from:
        return "give a window: --since 90d, --from DATE [--to DATE], or --compare-windows 30d,90d,1y,all"
    if not 0 <= tolerance < 1:
        return f"--tolerance must be at least 0 and below 1 (weighted F1 points), got {tolerance:g}"
    if not 0 < test_fraction < 1:
        return f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction:g}"
    return None


def retrain_command(settings: Any, *, region: str, model: str, since: str | None = None,
                    date_from: str | None = None, date_to: str | None = None, compare: str | None = None,
                    tolerance: float = DEFAULT_TOLERANCE, test_fraction: float = DEFAULT_TEST_FRACTION,
                    config_path: str | None = None, reason: str | None = None, as_json: bool = False,
                    progress: bool = True, embedder: Any = None, now: datetime | None = None,
                    no_promote: bool = False) -> int:
    """Retrain (region, model) on a window of ``phrases.labeled``; gate and promote; return the exit code.

    ``embedder`` defaults to ``models.embedder.load_embedder(settings)`` (tests pass one in);
    ``now`` (aware) ends the ``--since`` and ``--compare-windows`` windows, default: the time now.
    ``no_promote``: gate the candidate but leave the live head as it is, whatever the gate says.
    """
    from retrain.train.commands import _load_config

    problem = _check_flags(since=since, date_from=date_from, date_to=date_to, compare=compare,
                           tolerance=tolerance, test_fraction=test_fraction)
    if problem:
        return _fail(problem)
    try:
        HeadRef(region, model, "v1")
    except ValueError as exc:
        return _fail(str(exc))
    now = (now or datetime.now(UTC)).astimezone(UTC)
    try:
        if compare is not None:
            windows = compare_windows(compare, now)
        elif since:
            windows = [since_window(since, now)]
        else:
            windows = [between_window(date_from or "", date_to, now)]
    except WindowError as exc:
        return _fail(str(exc))
    widest = windows[-1]
    try:
        config = _load_config(config_path, {"region": region, "model": model, "data": {"history": widest.label}})
    except ValueError as exc:
        return _fail(str(exc))

    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    topic = settings.topic_labeled
    say(f"replaying {topic} for {region}/{model}, {widest.describe()} (end excluded)")
    try:
        replay = read_window(settings, topic, widest, region, model, progress=progress)
    except ReplayError as exc:
        return _fail(str(exc), FAILED)
    for warning in replay.warnings:
        _warn(warning)
    label_map = _apply_label_map(settings, region, model, replay)
    deduped = deduplicate(replay.selection.examples)
    train, test = time_split(deduped.examples, test_fraction)
    try:
        check_enough(len(deduped.examples), train, test, widest)
    except NotEnoughData as exc:
        return _fail(str(exc))
    say(f"read {len(replay.selection.examples)} example(s); dropped {deduped.n_dropped} duplicate(s) "
        f"({deduped.n_same_label} same label, {deduped.n_relabelled} relabelled later); "
        f"{len(train)} to train ({sum(map(trains_only, train))} of them doubtful review answers, which always "
        f"train), the newest {len(test)} to test (from {iso(from_ms(test[0].timestamp_ms))})")

    if embedder is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from models.embedder import load_embedder

        embedder = load_embedder(settings, warm=False)
    base = {**_base_result(region, model, widest, replay, deduped, train, test), "label_map": label_map}
    if compare is not None:
        return _compare(settings, config, embedder, windows, train, test, base, as_json=as_json, progress=progress)
    return _retrain(settings, config, embedder, train, test, base, tolerance=tolerance, reason=reason,
                    as_json=as_json, progress=progress, no_promote=no_promote)


def _apply_label_map(settings: Any, region: str, model: str, replay: Replay) -> dict[str, Any]:
    """Give the replayed examples their labels' newest names (``label-map``; PostgreSQL): return what
    was applied. When the label sets cannot be read the labels stay as produced, with a warning."""
    import psycopg2

    from models.labelsets import read_label_sets

    try:
        sets = read_label_sets(settings, region, model)
    except psycopg2.Error as exc:
        warning = f"the label sets of {region}/{model} cannot be read ({str(exc).strip()}); labels are used as produced"
        replay.warnings.append(warning)
        _warn(warning)
        return {"version": None, "mapping": {}, "n_relabelled": 0}
    examples, changed = relabel(replay.selection.examples, sets.relabel)
    replay.selection.examples[:] = examples
    return {"version": sets.current, "mapping": sets.mapping, "n_relabelled": changed}


def _base_result(region: str, model: str, window: Window, replay: Replay, deduped: Deduped,
                 train: Sequence[Example], test: Sequence[Example]) -> dict[str, Any]:
    sel = replay.selection
    return {
        "region": region, "model": model, "topic": replay.topic, "window": window.to_json(),
        "n_read": len(sel.examples), "n_invalid": sel.n_invalid, "invalid_reasons": dict(sel.invalid_reasons),
        "n_duplicates": deduped.n_dropped, "n_duplicates_same_label": deduped.n_same_label,
        "n_relabelled": deduped.n_relabelled, "n_examples": len(deduped.examples),
        "n_train": len(train), "n_test": len(test),
        "test_slice": {"start": iso(from_ms(test[0].timestamp_ms)), "end": iso(from_ms(test[-1].timestamp_ms))},
        "warnings": list(replay.warnings),
    }


def _train(settings: Any, config: Any, embedder: Any, train: Sequence[Example], test: Sequence[Example],
           base: dict[str, Any], progress: bool) -> Any:
    """Train one candidate on ``train``, evaluated on ``test``; raise ValueError (the trainer's)."""
    from retrain.train.trainer import make_trainer

    region = config.region
    retrain_info = {key: base[key] for key in ("topic", "window", "n_read", "n_invalid", "n_duplicates", "n_test",
                                               "test_slice")}
    return make_trainer(config).train(
        settings.models_root, embedder, [e.to_row(region) for e in train], [e.to_row(region) for e in test],
        progress=progress, extra_metadata={"retrain": {**retrain_info, "n_train": len(train)}},
        data_summary={"source": f"kafka:{base['topic']}", "window": base["window"], "n_train": len(train),
                      "n_test": len(test)})


def _features(settings: Any, embedder: Any, test: Sequence[Example]) -> Any:
    """Return the test slice's features: ``embedder.features_batch`` through the training cache."""
    from retrain.train.features import cached_features

    features, _ = cached_features(embedder, [e.clean_text for e in test], settings.models_root, progress=False)
    return features


def _score_folder(folder: Any, embedder: Any, ref: HeadRef, features: Any, test: Sequence[Example]) -> Score:
    from models.heads import load_head

    return score(load_head(folder, embedder_version=embedder.version, embedder_precision=embedder.precision), ref.version, features, test)


class LiveUnknown(RuntimeError):
    """Which head is live, or its files, cannot be had right now (Kafka or PostgreSQL unreachable)."""


def score_live(settings: Any, region: str, model: str, embedder: Any, features: Any,
               test: Sequence[Example]) -> tuple[HeadRef | None, Score | None, str | None]:
    """Return (live ref, its score on the test slice, why it has none) for (region, model).

    A head that is not there, or was built for another embedder, or whose files fail their
    checks, has no score (the reason says which). Raise :class:`LiveUnknown` when the live
    version or its files cannot be fetched: then nothing is decided.
    """
    import psycopg2

    from models.heads import EmbedderMismatch, HeadError, read_metadata
    from models.registry.bundles import BundleError
    from models.registry.lifecycle import LifecycleError, head_folder, live_ref

    try:
        ref = live_ref(settings, region, model)
    except LifecycleError as exc:
        raise LiveUnknown(f"cannot read which head of {region}/{model} is live: {exc}") from None
    if ref is None:
        return None, None, f"no head of {region}/{model} is live"
    try:
        folder = head_folder(settings, ref)
    except (BundleError, HeadError, OSError, psycopg2.Error) as exc:
        raise LiveUnknown(f"cannot fetch the files of the live head {ref}: {exc}") from None
    try:
        return ref, _score_folder(folder, embedder, ref, features, test), None
    except EmbedderMismatch:
        try:
            built_for = read_metadata(folder).get("embedder_version")
        except HeadError:
            built_for = "another version"
        return ref, None, (f"the live head {ref} was built for embedder {built_for}, not the running "
                           f"{embedder.version}, so it cannot be scored")
    except (HeadError, ValueError) as exc:
        return ref, None, f"the live head {ref} cannot be scored ({exc})"


def _retrain(settings: Any, config: Any, embedder: Any, train: Sequence[Example], test: Sequence[Example],
             base: dict[str, Any], *, tolerance: float, reason: str | None, as_json: bool, progress: bool,
             no_promote: bool = False) -> int:
    from models.heads import HeadError
    from models.registry.lifecycle import LifecycleError, promote

    try:
        trained = _train(settings, config, embedder, train, test, base, progress)
    except ValueError as exc:
        return _fail(str(exc))
    features = _features(settings, embedder, test)
    try:
        candidate = _score_folder(trained.path, embedder, trained.ref, features, test)
    except (HeadError, ValueError) as exc:
        return _fail(f"the candidate {trained.ref} cannot be scored: {exc}", FAILED)
    try:
        live_ref, live, live_problem = score_live(settings, config.region, config.model, embedder, features, test)
    except LiveUnknown as exc:
        return _fail(f"{exc}; nothing was decided, the candidate {trained.ref} stays built", FAILED)
    warnings = base["warnings"]
    if live_problem and live_ref is not None:
        warnings.append(live_problem)
        _warn(live_problem)
    decision = gate(candidate, live, tolerance, live_problem or "no live head")
    if decision.promote and not no_promote:
        why = f"window {base['window']['label']}: {decision.reason}"
        why = f"{reason}; {why}" if reason else why
        metrics = {"weighted_f1": candidate.weighted_f1, "accuracy": candidate.accuracy,
                   "n_train": len(train), "n_test": candidate.n, "tolerance": tolerance,
                   "live_weighted_f1": live.weighted_f1 if live else None,
                   "live_accuracy": live.accuracy if live else None}
        try:
            promote(settings, trained.ref, reason=why, action="retrain", metrics=metrics)
        except LifecycleError as exc:
            return _fail(f"the gate passed {trained.ref} ({decision.reason}) but promoting it failed: {exc}; "
                         f"it stays built: `phrasestream promote --region {config.region} --model {config.model} "
                         f"--version {trained.ref.version}` once that is fixed", FAILED)
    result = {
        **base,
        "candidate": {**candidate.to_json(), "ref": str(trained.ref), "path": str(trained.path)},
        "live": live.to_json() if live else None,
        "live_version": live_ref.version if live_ref else None,
        "tolerance": tolerance,
        "decision": "not_promoted" if no_promote else "promoted" if decision.promote else "kept_live",
        "gate_passed": decision.promote,
        "reason": decision.reason,
    }
    if as_json:
        print(json.dumps(result), flush=True)
        return 0
    _print_result(result, trained.ref)
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _print_result(r: dict[str, Any], ref: HeadRef) -> None:
    w = r["window"]
    asked = "" if ".." in w["label"] else f"{w['label']}: "
    print(f"window     {asked}{w['start']} .. {w['end']} (end excluded)")
    print(f"read       {r['n_read']} example(s) of {r['region']}/{r['model']} from {r['topic']}"
          + (f"; skipped {r['n_invalid']} invalid" if r["n_invalid"] else "")
          + f"; dropped {r['n_duplicates']} duplicate(s) ({r['n_relabelled']} relabelled later)")
    lm = r.get("label_map") or {}
    if lm.get("version"):
        print(f"labels     label set {lm['version']}: {lm['n_relabelled']} example(s) renamed "
              f"({', '.join(f'{k}={v}' for k, v in lm['mapping'].items())})")
    print(f"split      {r['n_train']} train, {r['n_test']} test (the newest: {r['test_slice']['start']} .. "
          f"{r['test_slice']['end']})")
    c = r["candidate"]
    print(f"candidate  {c['ref']:<44} weighted F1 {_fmt(c['weighted_f1'])}  accuracy {_fmt(c['accuracy'])}")
    live = r["live"]
    if live:
        live_ref = f"{r['region']}/{r['model']}:{live['version']}"
        print(f"live       {live_ref:<44} weighted F1 {_fmt(live['weighted_f1'])}  accuracy {_fmt(live['accuracy'])}")
    else:
        print(f"live       {r['live_version'] or 'none'} (not scored)")
    gate_said = "" if r["decision"] != "not_promoted" else f" (the gate {'passes' if r['gate_passed'] else 'fails'} it)"
    print(f"decision   {r['decision']}{gate_said}: {r['reason']}")
    if r["decision"] != "promoted":
        promote = f"phrasestream promote --region {ref.region} --model {ref.model} --version {ref.version}"
        print(f"the candidate stays built, not live: `{promote} --shadow` runs it beside the live head, "
              f"`{promote}` makes it live")


def _compare(settings: Any, config: Any, embedder: Any, windows: Sequence[Window], train: Sequence[Example],
             test: Sequence[Example], base: dict[str, Any], *, as_json: bool, progress: bool) -> int:
    """Train one candidate per window on its part of ``train``; score all on ``test``; promote none."""
    from models.heads import HeadError

    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    features = _features(settings, embedder, test)
    rows: list[dict[str, Any]] = []
    built: dict[tuple[int, ...], dict[str, Any]] = {}  # the same training examples train one candidate
    for window in windows:
        part = [e for e in train if window.contains(e.timestamp_ms)]
        row: dict[str, Any] = {"window": window.label, "start": iso(window.start), "end": iso(window.end), "n_train": len(part),
                               "version": None, "weighted_f1": None, "accuracy": None, "note": None}
        key = tuple(sorted(id(e) for e in part))
        n_classes = len({e.label for e in part})
        if key in built:
            same = built[key]
            row.update({k: same[k] for k in ("version", "weighted_f1", "accuracy")},
                       note=f"the same examples as {same['window']}")
        elif n_classes < MIN_TRAIN_CLASSES:
            row["note"] = f"skipped: {len(part)} example(s) of {n_classes} label(s); training needs {MIN_TRAIN_CLASSES}"
        else:
            say(f"window {window.label}: training on {len(part)} example(s)")
            cfg = config.model_copy(update={"data": config.data.model_copy(update={"history": window.label})})
            try:
                trained = _train(settings, cfg, embedder, part, test, {**base, "window": window.to_json()}, progress)
                s = _score_folder(trained.path, embedder, trained.ref, features, test)
            except (HeadError, ValueError) as exc:
                row["note"] = f"skipped: {exc}"
            else:
                row.update(version=s.version, weighted_f1=s.weighted_f1, accuracy=s.accuracy)
                built[key] = row
        rows.append(row)
    try:
        live_ref, live, live_problem = score_live(settings, config.region, config.model, embedder, features, test)
    except LiveUnknown as exc:  # the comparison stands without it
        live_ref, live, live_problem = None, None, None
        base["warnings"].append(str(exc))
        _warn(str(exc))
    if live_problem and live_ref is not None:
        base["warnings"].append(live_problem)
        _warn(live_problem)
    result = {**base, "windows": rows, "live": live.to_json() if live else None,
              "live_version": live_ref.version if live_ref else None, "decision": "none",
              "reason": "--compare-windows never promotes: promote a version with `phrasestream promote`"}
    if as_json:
        print(json.dumps(result), flush=True)
        return 0
    t = base["test_slice"]
    print(f"test slice: the newest {base['n_test']} example(s) of {base['window']['label']} ({t['start']} .. {t['end']})")
    print(f"{'window':<8} {'n_train':>7} {'weighted F1':>11} {'accuracy':>8}  version")
    for r in rows:
        note = f"  ({r['note']})" if r["note"] else ""
        print(f"{r['window']:<8} {r['n_train']:>7} {_fmt(r['weighted_f1']):>11} {_fmt(r['accuracy']):>8}  "
              f"{r['version'] or ''}{note}")
    if live:
        print(f"{'live':<8} {'':>7} {_fmt(live.weighted_f1):>11} {_fmt(live.accuracy):>8}  {live.version}")
    print("none is promoted: promote one with `phrasestream promote --region R --model M --version V`")
    return 0
