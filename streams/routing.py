"""Review routing: which of a head's answers go to a human, on ``phrases.review``.

Each head has a rule (``schemas.review.ReviewRule``): the registry pointer's ``review`` when
``phrasestream review-rule`` set one, else the rule in the head's training configuration
(``models.heads.rule.review_rule``), else the default. For each answer of a batch:

- **doubt**: the margin between the two best probabilities is below ``rule.margin``
  (``margin``), the answer is ``oos`` (``oos``), or the shadow head answered another label
  (``shadow``);
- **the random slice**: a hash of (phrase id, region, model) falls below ``rule.random_rate``
  (``random``). The hash, not a random draw, decides: every worker, and a replay after a
  crash, picks the same phrases, and a routed phrase replayed gets the same ``item_id`` (the
  review page stores it once). Its ``sampling_weight`` is ``1 / random_rate``: the slice,
  weighted, is an unbiased sample of every answer of the head.

Budgets: per head and clock hour (UTC), at most ``budget_per_hour`` doubtful items and
``random_budget_per_hour`` random-slice items leave a worker (per worker: the budget is not
shared between workers). A random-slice item over its budget may still go as a doubtful one
(without the slice's weight). What a budget drops is counted
(``phrasestream_review_dropped_total{kind="doubtful"|"random"}``); while it drops random items,
the slice no longer holds every answer with the same chance: the review page's estimate says
so by the drop count beside it.

:class:`BatchExpert` is what one batch runs after each head (``streams.pipeline.classify``):
the shadow head (``streams.shadows``), the routing, and the evidence of the rows that asked
for it (``"explain": true``) or were routed, in one call of ``models.heads.explain.evidence``.
A rule that can route nothing, no shadow and no explain row cost one check per head run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from schemas.messages import CleanedPhrase, RegistryPointer
from schemas.review import ReviewItem, ReviewReason, ReviewRule, ShadowSpec, item_id
from streams.shadows import ShadowRun, run_shadow, unit_hash
from streams.state.memos import EvidenceMemo

log = logging.getLogger("phrasestream.worker")

OOS = "oos"
Key = tuple[str, str]
"""(region, model)."""
Evidence = Callable[..., list[dict[str, Any]]]
"""``models.heads.explain.evidence(head, features, texts, labels=None)``: one dict per row."""

OFF_RULE = ReviewRule(margin=0.0, oos=False, shadow_disagreement=False, random_rate=0.0)
"""A rule that routes nothing (the bench's baseline; ``phrasestream review-rule`` can set it)."""


def in_random_slice(phrase_id: str, region: str, model: str, rate: float) -> bool:
    """Say whether this head's answer to this phrase is in the random slice of ``rate``."""
    return rate > 0 and unit_hash("review", phrase_id, region, model) < rate


def margin_of(top_k: Sequence[tuple[str, float]]) -> float:
    """Return the margin between the two best probabilities (1.0 when there is one label)."""
    if len(top_k) < 2:
        return 1.0
    return float(top_k[0][1]) - float(top_k[1][1])


def routes_nothing(rule: ReviewRule) -> bool:
    """Say whether ``rule`` can route no answer at all (so its head skips routing)."""
    return rule.margin <= 0 and not rule.oos and not rule.shadow_disagreement and rule.random_rate <= 0


def rule_for(pointer: RegistryPointer | None, head: Any) -> ReviewRule:
    """Return the rule in force for a head: the pointer's, else its training configuration's, else the default."""
    if pointer is not None and pointer.review is not None:
        return pointer.review
    try:
        from models.heads.rule import review_rule
    except ImportError:  # a models/ without rules: the default
        return ReviewRule()
    try:
        return review_rule(getattr(head, "metadata", None) or {})
    except ValueError as exc:  # pydantic's ValidationError: a rule this version cannot read
        log.error("head %s: its review rule is not readable (%s); routing with the default rule",
                  getattr(head, "ref", "?"), str(exc).splitlines()[0])
        return ReviewRule()


class Budgets:
    """Items routed per (region, model, kind) in the current clock hour; thread-safe."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, str, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[str, str, str], limit: int, now: float) -> bool:
        """Take one item of ``key``'s budget of ``limit`` for the hour of ``now``; say whether there was room."""
        hour = int(now // 3600)
        with self._lock:
            seen_hour, used = self._used.get(key, (hour, 0))
            if seen_hour != hour:
                used = 0
            if used >= limit:
                return False
            self._used[key] = (hour, used + 1)
            return True


class Pick(NamedTuple):
    """One answer the rule routes: its position among the head's rows, why, and whether it is in the slice."""

    row: int
    reasons: list[ReviewReason]
    random_slice: bool
    margin: float


@dataclass
class ExpertOut:
    """What the expert loop adds to a batch: review items, shadow predictions, and their counts."""

    reviews: list[tuple[bytes, bytes]] = field(default_factory=list)
    shadows: list[tuple[bytes, bytes]] = field(default_factory=list)
    routed: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    dropped: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    shadow_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    shadow_failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    evidence_rows: int = 0

    def add(self, other: ExpertOut) -> None:
        """Append what ``other`` holds."""
        self.reviews += other.reviews
        self.shadows += other.shadows
        self.routed.update(other.routed)
        self.dropped.update(other.dropped)
        self.shadow_counts.update(other.shadow_counts)
        self.shadow_failures.update(other.shadow_failures)
        self.evidence_rows += other.evidence_rows


def pick(rule: ReviewRule, region: str, model: str, ids: Sequence[str], answers: Sequence[Any],
         shadow_labels: Mapping[int, str], budgets: Budgets, out: ExpertOut, now: float | None = None) -> list[Pick]:
    """Return the answers ``rule`` routes, within the budgets; count what is routed and dropped in ``out``."""
    now = time.time() if now is None else now
    picks: list[Pick] = []
    for i, (phrase_id, answer) in enumerate(zip(ids, answers)):
        margin = margin_of(answer.top_k)
        reasons: list[ReviewReason] = []
        if margin < rule.margin:
            reasons.append("margin")
        if rule.oos and answer.label == OOS:
            reasons.append("oos")
        if rule.shadow_disagreement and shadow_labels.get(i, answer.label) != answer.label:
            reasons.append("shadow")
        sliced = in_random_slice(phrase_id, region, model, rule.random_rate)
        if not reasons and not sliced:
            continue
        if sliced:
            if budgets.take((region, model, "random"), rule.random_budget_per_hour, now):
                picks.append(Pick(i, [*reasons, "random"], True, margin))
                continue
            out.dropped[(region, model, "random")] += 1
        if reasons:
            if budgets.take((region, model, "doubtful"), rule.budget_per_hour, now):
                picks.append(Pick(i, reasons, False, margin))
            else:
                out.dropped[(region, model, "doubtful")] += 1
    for p in picks:
        for reason in p.reasons:
            out.routed[(region, model, reason)] += 1
    return picks


def _pairs(top_k: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(label, round(float(p), 6)) for label, p in top_k]


@dataclass
class BatchExpert:
    """The expert loop's work for one batch, after each head: shadow, routing, evidence (see the module doc).

    ``rules`` and ``shadows`` are the head set's, taken once for the batch; ``evidence`` is
    ``models.heads.explain.evidence`` (imported when first needed).
    """

    rules: Mapping[Key, ReviewRule]
    shadows: Mapping[Key, tuple[Any, ShadowSpec]]
    budgets: Budgets
    evidence: Evidence | None = None
    memo: EvidenceMemo | None = None
    out: ExpertOut = field(default_factory=ExpertOut)
    _failed: set[str] = field(default_factory=set)

    def needs_two(self, region: str, model: str) -> bool:
        """Say whether this head's rule needs two labels per answer (for the margin)."""
        rule = self.rules.get((region, model))
        return rule is not None and rule.margin > 0

    def after_head(self, head: Any, region: str, model: str, rows: Sequence[int], phrases: Sequence[CleanedPhrase],
                   vectors: np.ndarray, answers: Sequence[Any], live_seconds: float, top_k: int,
                   cache_hits: Sequence[bool], embedder_version: str, predicted_at: datetime,
                   memo: Any = None) -> list[dict[str, Any] | None] | None:
        """Run the shadow, route, and compute evidence for one head's rows; return each row's evidence (or None)."""
        key = (region, model)
        rule = self.rules.get(key)
        shadow = self.shadows.get(key)
        explain = [j for j, r in enumerate(rows) if phrases[r].explain]
        route = rule is not None and not routes_nothing(rule)
        if not explain and shadow is None and not route:
            return None
        version = head.ref.version
        shadow_run: ShadowRun | None = None
        if shadow is not None:
            shadow_run = self._shadow(shadow, region, model, version, rows, phrases, vectors, answers,
                                      live_seconds, top_k, cache_hits, embedder_version, predicted_at, memo)
        picks: list[Pick] = []
        if route and rule is not None:
            try:
                picks = pick(rule, region, model, [phrases[r].id for r in rows], answers,
                             shadow_run.labels if shadow_run else {}, self.budgets, self.out)
            except Exception:  # noqa: BLE001 - logged by _once; routing is beside serving: predictions go out anyway
                self._once(f"routing {region}/{model}", "routing failed for a batch of %s/%s", region, model)
        wanted = sorted({*explain, *(p.row for p in picks)})
        found = self._evidence(head, rows, phrases, vectors, wanted) if wanted else {}
        if picks and rule is not None:
            self._items(rule, head, region, model, rows, phrases, answers, picks, found, shadow_run, predicted_at)
        if not explain:
            return None
        per_row: list[dict[str, Any] | None] = [None] * len(rows)
        for j in explain:
            per_row[j] = found.get(j)
        return per_row

    def _once(self, what: str, message: str, *args: Any) -> None:
        """Log a failure once per batch and what (with its traceback)."""
        if what not in self._failed:
            self._failed.add(what)
            log.warning(message, *args, exc_info=True)

    def _shadow(self, shadow: tuple[Any, ShadowSpec], region: str, model: str, live_version: str,
                rows: Sequence[int], phrases: Sequence[CleanedPhrase], vectors: np.ndarray, answers: Sequence[Any],
                live_seconds: float, top_k: int, cache_hits: Sequence[bool], embedder_version: str,
                predicted_at: datetime, memo: Any) -> ShadowRun | None:
        head, spec = shadow
        try:
            done = run_shadow(head, spec, live_version, rows, phrases, vectors, answers, live_seconds, top_k,
                              cache_hits, embedder_version, predicted_at, memo)
        except Exception:  # noqa: BLE001 - logged by _once; a shadow never costs a live prediction
            self.out.shadow_failures[(region, model, spec.version)] += 1
            self._once(f"shadow {region}/{model}", "shadow head %s/%s:%s failed on a batch; the live answers "
                       "are served", region, model, spec.version)
            return None
        if done.payloads:
            self.out.shadows += done.payloads
            self.out.shadow_counts[(region, model, spec.version)] += len(done.payloads)
        return done

    def _evidence(self, head: Any, rows: Sequence[int], phrases: Sequence[CleanedPhrase], vectors: np.ndarray,
                  wanted: Sequence[int]) -> dict[int, dict[str, Any]]:
        try:
            if self.evidence is None:
                from models.heads.explain import evidence

                self.evidence = evidence
            picked = [rows[j] for j in wanted]
            texts = [phrases[r].clean_text for r in picked]
            if self.memo is None:
                found = self.evidence(head, vectors[picked], texts)
            else:
                found = self.memo.evidence(head, vectors[picked], texts, self.evidence)
        except Exception:  # noqa: BLE001 - logged by _once; evidence is an addition: answers go out without it
            self._once(f"evidence {head.ref}", "evidence for head %s failed on a batch; served without it", head.ref)
            return {}
        self.out.evidence_rows += len(wanted)
        return dict(zip(wanted, found))

    def _items(self, rule: ReviewRule, head: Any, region: str, model: str, rows: Sequence[int],
               phrases: Sequence[CleanedPhrase], answers: Sequence[Any], picks: Sequence[Pick],
               found: Mapping[int, dict[str, Any]], shadow_run: ShadowRun | None, predicted_at: datetime) -> None:
        version, key = head.ref.version, f"{region}/{model}".encode()
        for p in picks:
            phrase, answer = phrases[rows[p.row]], answers[p.row]
            shadow_label = shadow_run.labels.get(p.row) if shadow_run else None
            try:
                item = ReviewItem(
                    item_id=item_id(region, model, version, phrase.id), id=phrase.id, region=region, model=model,
                    model_version=version, clean_text=phrase.clean_text, label=answer.label,
                    probability=round(float(answer.probability), 6), top_k=_pairs(answer.top_k),
                    margin=round(p.margin, 6), reasons=p.reasons, random_slice=p.random_slice,
                    random_rate=rule.random_rate,
                    sampling_weight=(1.0 / rule.random_rate) if p.random_slice else None,
                    evidence=found.get(p.row),
                    shadow_version=shadow_run.version if shadow_label is not None and shadow_run else None,
                    shadow_label=shadow_label, predicted_at=predicted_at)
            except ValueError:  # pydantic refused a field: a bug, never the phrase's fault
                self._once(f"item {region}/{model}", "a review item of %s/%s could not be built", region, model)
                continue
            self.out.reviews.append((key, item.to_bytes()))


@dataclass
class Expert:
    """The worker's expert loop: the budgets (per worker, across batches) and where the rules and shadows come from.

    ``source`` is the ``streams.heads.HeadSet`` (its ``rules`` and ``shadows``, replaced whole
    when the registry changes); :meth:`batch` takes them once for a batch.
    """

    source: Any
    budgets: Budgets = field(default_factory=Budgets)
    evidence: Evidence | None = None
    memo: EvidenceMemo | None = None
    """Evidence computed before, per head version and text (None: computed every time)."""

    def batch(self) -> BatchExpert:
        """Return the expert loop's work for one batch."""
        return BatchExpert(self.source.rules, self.source.shadows, self.budgets, self.evidence, self.memo)
