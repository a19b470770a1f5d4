"""The progress panel's figures from the stored answers (the estimators are ``streams.review.stats``).

Per head: answers given, expert-vs-model agreement (overall and per routing reason), the live
accuracy estimated from the random slice, and the agreement between experts on double items.
Labels are compared under the newest label set, so a rename does not count as a disagreement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streams.review.stats import rater_agreement, weighted_accuracy

Relabel = Callable[[str, int | None], str]


def _rate(flags: list[bool]) -> dict[str, Any]:
    return {"n": len(flags), "agreement": (sum(flags) / len(flags)) if flags else None}


def head_progress(answers: Iterable[dict[str, Any]], relabel: Relabel) -> dict[str, Any]:
    """Return one head's figures from its answers (oldest first, as ``store.label_answers`` gives them)."""
    rows = list(answers)
    agree: list[bool] = []
    by_reason: dict[str, list[bool]] = defaultdict(list)
    first_label: dict[str, dict[str, Any]] = {}
    per_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    outcomes: dict[str, int] = defaultdict(int)
    for r in rows:
        outcomes[r["outcome"]] += 1
        per_item[r["item_id"]].append(r)
        if r["outcome"] != "label":
            continue
        same = relabel(r["answer"], r["label_set_version"]) == relabel(r["suggestion"], 0)
        r["agrees"] = same
        agree.append(same)
        for reason in r["reasons"]:
            by_reason[reason].append(same)
        first_label.setdefault(r["item_id"], r)
    random_slice = [(r["agrees"], float(r["sampling_weight"])) for r in first_label.values()
                    if r["random_slice"] and r["sampling_weight"]]
    pairs = []
    for item_rows in per_item.values():
        if item_rows[0]["double_review"] and len(item_rows) >= 2:
            a, b = item_rows[0], item_rows[1]
            pairs.append((_answer_key(a, relabel), _answer_key(b, relabel)))
    return {"n_answers": len(rows), "outcomes": dict(outcomes), "model_agreement": _rate(agree),
            "by_reason": {k: _rate(v) for k, v in sorted(by_reason.items())},
            "live_accuracy": weighted_accuracy(random_slice), "experts": rater_agreement(pairs)}


def _answer_key(row: dict[str, Any], relabel: Relabel) -> str:
    """One answer as a category for expert agreement: its label (newest name), or its outcome."""
    return relabel(row["answer"], row["label_set_version"]) if row["outcome"] == "label" else f"({row['outcome']})"


def progress(answers: Iterable[dict[str, Any]], relabels: Mapping[tuple[str, str], Relabel],
             per_hour: list[dict[str, Any]], queues: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the whole panel: answers per hour, open items per head, and :func:`head_progress` per head."""
    by_head: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in answers:
        by_head[(r["region"], r["model"])].append(r)
    heads = []
    for (region, model), rows in sorted(by_head.items()):
        relabel = relabels.get((region, model), lambda label, _v: label)
        heads.append({"region": region, "model": model, **head_progress(rows, relabel)})
    return {"answered_per_hour": per_hour, "answered_last_24h": sum(h["n"] for h in per_hour),
            "open": [{"region": q["region"], "model": q["model"], "n": int(q["n"])} for q in queues],
            "heads": heads}
