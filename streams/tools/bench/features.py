"""The bench's expert-loop stage: what explanations, review routing and a shadow head cost a worker.

One scratch worker with a registry topic of its own (the live pointers copied, so the real
heads are served and the shared registry is never touched) caches ``FEATURE_COUNT`` phrases,
then serves them again, each time under new ids, with one feature on, in this order:

- ``baseline``: every head's rule routes nothing (``streams.routing.OFF_RULE``), no shadow;
- ``review``: ``global/intent`` routes with ``margin 0.2`` and a random slice of 2%, budgets
  high enough that nothing is dropped (what routing costs while under budget; a budget caps it);
- ``shadow``: ``global/intent`` runs a shadow head on 100% of the phrases (rule off);
- ``explain``: every phrase asks ``"explain": true`` (rule off, no shadow), then
  ``explain_again``: the same phrases explained again (the evidence memo's answers).

Each gives the hit path (a burst of ``BURST_COUNT`` cached phrases: ``hit_path_<name>_msgs_s``)
and the latency of light traffic (``LIGHT_COUNT`` other phrases at ``LIGHT_RATE`` a second:
``latency_p50_ms_100_<name>``, p95, p99 and the max), read as the rest of the bench reads them
(``measure.through_worker``). The four runs go ``ROUNDS`` times, in turn, each round on phrases
of its own; a figure is the best of the rounds (the highest rate, the lowest percentile: this
shared machine's other work only slows a run), except the max latency (the worst) and the
counts (summed); each round's value is kept under ``<figure>_rounds``. The live heads' answers are in the answer
memo for every run (the phrases were served before); what each feature computes is new to
it: no shadow answer, and no evidence except the review run's routed rows, was computed for
these texts before. The rule and the shadow change by a new pointer on the worker's registry
topic, as ``review-rule`` and ``promote --shadow`` change them; the stage waits for the
worker's log line that says it follows.

The shadow is another version of ``global/intent`` trained for the same embedder and
precision; when there is none, a copy of the live version under a scratch version name (the
same weights: the cost of a head is what is measured), removed at the end.

Run alone: ``python -m streams.tools.bench.features`` (one JSON line).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.measure import percentile
from schemas.messages import RegistryPointer
from schemas.review import ReviewRule, ShadowSpec
from schemas.settings import Settings
from streams.routing import OFF_RULE
from streams.tools.bench.measure import through_worker
from streams.tools.bench.scratch import Scratch

log = logging.getLogger("phrasestream.bench")

ROUNDS = 2
BURST_COUNT = 2_000
LIGHT_RATE, LIGHT_COUNT = 100, 1_000
"""Light traffic of this stage: this many cached phrases at this rate (10 s)."""
FEATURE_COUNT = ROUNDS * (BURST_COUNT + LIGHT_COUNT)
"""Phrases of this stage (the miss set, cached first): each round a burst of ``BURST_COUNT``, light traffic of
``LIGHT_COUNT`` more, phrases of its own."""
REVIEW_RULE = ReviewRule(margin=0.2, random_rate=0.02, budget_per_hour=1_000_000, random_budget_per_hour=1_000_000)
"""The rule of the ``review`` run: a realistic share of answers routed, none dropped by a budget."""
WAIT_S = 120.0


def shadow_candidate(settings: Settings, region: str, model: str, tag: str) -> tuple[ShadowSpec, Callable[[], None]]:
    """Return a shadow spec for (region, model) and what removes what was made for it.

    The newest other local version trained for the live one's embedder and precision; else a
    copy of the live version under ``<version>-shadow<tag>`` (metadata's ref rewritten: its
    checksums cover every other file).
    """
    from models.heads import HeadRef, read_metadata
    from models.heads.artifact import embedder_precision_of
    from models.registry.bundles import pack, sha256_bytes
    from models.registry.lifecycle import live_pointers

    live = live_pointers(settings)[(region, model)]
    live_dir = HeadRef(region, model, live.version).path(settings.models_root)
    live_meta = read_metadata(live_dir)
    want = (live_meta.get("embedder_version"), embedder_precision_of(live_meta))
    folder: Path | None = None
    for other in sorted(live_dir.parent.iterdir(), reverse=True):
        if other.name == live.version or other.name.startswith(".") or not (other / "metadata.json").is_file():
            continue
        meta = read_metadata(other)
        if (meta.get("embedder_version"), embedder_precision_of(meta)) == want:
            folder = other
            break
    made: Path | None = None
    if folder is None:
        made = folder = live_dir.parent / f"{live.version}-shadow{tag}"
        shutil.copytree(live_dir, folder)
        meta_path = folder / "metadata.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["ref"] = str(HeadRef(region, model, folder.name))
        meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    data = pack(folder)

    def remove() -> None:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)

    return ShadowSpec(version=folder.name, percent=100.0, bundle_sha256=sha256_bytes(data),
                      bundle_bytes=len(data)), remove


def _wait_log(path: Path, line: str, start: int) -> None:
    """Wait for ``line`` in the worker's log past byte ``start`` (the worker follows a new pointer)."""
    deadline = time.monotonic() + WAIT_S
    while line not in path.read_text(errors="replace")[start:]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bench worker did not log {line!r} within {WAIT_S:.0f} s; see {path}")
        time.sleep(0.2)


def _renamed(messages: list[tuple[str, bytes]], suffix: str, explain: bool = False) -> list[tuple[str, bytes]]:
    out = []
    for pid, value in messages:
        new = f"{pid}-{suffix}"
        body = value.replace(pid.encode(), new.encode(), 1)
        if explain:
            body = body[:-1] + b',"explain":true}'
        out.append((new, body))
    return out


def _topic_size(settings: Settings, topic: str) -> int:
    from ops.kafka.clients import client_config
    from ops.kafka.offsets import end_offsets

    return sum(end_offsets(client_config(settings), topic).values())


def feature_costs(settings: Settings, scratch: Scratch, messages: list[tuple[str, bytes]],
                  heads_per_phrase: int, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure the four runs of the module doc on one scratch worker; return their figures."""
    from models.registry.lifecycle import live_pointers
    from models.registry.pointers import publish
    from ops.kafka.topics import create_topic

    registry = f"bench-{scratch.tag}-feat.models.registry"
    work = scratch.settings(scratch.env("feat", PHRASESTREAM_TOPIC_REGISTRY=registry))
    create_topic(work, registry, 1, {"cleanup.policy": "compact"})
    pointers = {key: p.model_copy(update={"review": OFF_RULE}) for key, p in live_pointers(settings).items()}
    for pointer in pointers.values():
        publish(work, pointer)
    key = ("global", "intent")
    spec, remove = shadow_candidate(settings, *key, scratch.tag)
    out: dict[str, Any] = {"features_count": len(messages), "features_shadow_version": spec.version,
                           "features_review_rule": REVIEW_RULE.model_dump()}
    try:
        proc, ws, log_path = scratch.start_worker("feat", PHRASESTREAM_TOPIC_REGISTRY=registry)
        say(f"expert loop: caching {len(messages)} phrases")
        through_worker(ws, _renamed(messages, "warm"), heads_per_phrase)

        def change(pointer: RegistryPointer, line: str) -> None:
            start = log_path.stat().st_size
            pointers[key] = pointer
            publish(work, pointer)
            _wait_log(log_path, line, start)

        live, seq = pointers[key], pointers[key].seq

        def review() -> None:
            change(live.model_copy(update={"seq": seq + 1, "review": REVIEW_RULE}),
                   "review rule of global/intent: margin < 0.2")

        def shadow() -> None:
            change(live.model_copy(update={"seq": seq + 1, "review": OFF_RULE, "shadow": spec}),
                   f"shadow head global/intent:{spec.version} runs beside")

        def explain() -> None:
            change(live.model_copy(update={"seq": seq + 1, "review": OFF_RULE}),
                   f"shadow head global/intent:{spec.version} ended")

        runs: list[tuple[str, Callable[[], None] | None, bool]] = [
            ("baseline", None, False), ("review", review, False), ("shadow", shadow, False),
            ("explain", explain, True), ("explain_again", None, True)]
        per_round = BURST_COUNT + LIGHT_COUNT
        seen: dict[str, list[Any]] = {}
        for r in range(ROUNDS):
            burst = messages[r * per_round:r * per_round + BURST_COUNT]
            rest = messages[r * per_round + BURST_COUNT:(r + 1) * per_round]
            for name, setup, explaining in runs:
                if setup is not None:
                    seq += 1
                    setup()
                say(f"expert loop, round {r + 1}: {name}")
                reviews, shadows = _topic_size(ws, ws.topic_review), _topic_size(ws, ws.topic_shadow)
                hit = through_worker(ws, _renamed(burst, f"{name}-{r}", explaining), heads_per_phrase)
                seen.setdefault(f"hit_path_{name}_msgs_s", []).append(round(hit.phrases_s, 1))
                sent = len(burst)
                if rest and name != "explain_again":
                    light = through_worker(ws, _renamed(rest, f"{name}-{r}-light", explaining), heads_per_phrase,
                                           rate=LIGHT_RATE)
                    sent += len(rest)
                    for q in (50, 95, 99):
                        seen.setdefault(f"latency_p{q}_ms_{LIGHT_RATE}_{name}", []).append(
                            percentile(light.latencies_ms, q))
                    seen.setdefault(f"latency_max_ms_{LIGHT_RATE}_{name}", []).append(round(max(light.latencies_ms), 2))
                for what, topic in (("review_items", ws.topic_review), ("shadow_predictions", ws.topic_shadow)):
                    before = reviews if what == "review_items" else shadows
                    seen.setdefault(f"features_{name}_{what}", []).append(_topic_size(ws, topic) - before)
                seen.setdefault(f"features_{name}_phrases", []).append(sent)
        for figure, values in seen.items():  # best of the rounds; the worst stall and the counts in full
            if figure.startswith("hit_path_") or figure.startswith("latency_max_"):
                out[figure] = max(values)
            elif figure.startswith("latency_"):
                out[figure] = min(values)
            else:
                out[figure] = sum(values)
            out[f"{figure}_rounds"] = values
        scratch.stop(proc)
    finally:
        remove()
    base = out["hit_path_baseline_msgs_s"]
    for name in ("explain", "explain_again", "review", "shadow"):
        out[f"hit_path_{name}_ratio"] = round(out[f"hit_path_{name}_msgs_s"] / base, 3) if base else None
    return out


def main() -> int:
    """Run this stage alone on the live heads (its own scratch topics), print one JSON line."""
    from models.registry.lifecycle import live_pointers
    from ops.logs import configure_logging
    from ops.logs import progress as show_progress
    from streams.tools.loadgen import Traffic

    settings = Settings()
    configure_logging(settings)
    heads_per_phrase = sum(1 for region, _ in live_pointers(settings) if region == "global")
    unique = Traffic.make(FEATURE_COUNT, new_share=1.0, variants=0.0, seed=12)
    scratch = Scratch(settings)
    try:
        figures = feature_costs(settings, scratch, unique.messages, heads_per_phrase,
                                lambda msg: show_progress(log, msg, show=True, tag="bench"))
    finally:
        scratch.cleanup()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
