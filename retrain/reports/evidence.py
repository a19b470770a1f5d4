"""The evidence beside the error-analysis page's most confused examples: why the head said what it said.

For each wrong evaluation row shown on the page, ``phrasestream report`` asks
``models.heads.explain.evidence`` why the head gave its (wrong) label rather than the true one:
the terms that pushed the predicted label (contributions to the linear member's logit, with
``<BIAS>`` and the readout's part), and the nearest training examples of the predicted label
and of the true label. Near neighbours of the wrong label that read like the phrase often show
a labelling problem in the training data rather than a model problem.

:func:`wrong_row_evidence` computes it from the features of the evaluation texts (the training
feature cache holds them; missing ones are embedded once); :func:`evidence_html` renders one.
A head trained before neighbour indexes were stored gets one built from its training snapshot
and the same cache (:class:`CachedReadout`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from models.heads import Head

log = logging.getLogger("phrasestream.report")


def eval_features(head: Head, texts: Sequence[str], models_root: Path, settings: Any = None) -> np.ndarray:
    """Return the readout of each cleaned text in the head's embedder precision.

    The training feature cache (``retrain.train.features``) holds the evaluation texts of a head
    trained here; texts it lacks (a head fetched from another machine) are embedded by the
    embedder, loaded only then (``settings`` is needed for that).
    """
    from retrain.train.features import FeatureCache, cache_dir, cached_features

    dim = len(head.readout) * 384
    cache = FeatureCache(cache_dir(models_root, head.embedder_version, head.embedder_precision), dim)
    feats, found = cache.lookup(list(texts))
    if found.all():
        return feats
    if settings is None:
        raise LookupError(f"{int((~found).sum())} evaluation texts are not in the feature cache")
    from models.embedder import load_embedder

    embedder = load_embedder(settings, precision=head.embedder_precision, warm=False)
    if embedder.version != head.embedder_version:
        raise LookupError(f"the embedder here is {embedder.version}, the head's is {head.embedder_version}")
    return cached_features(embedder, list(texts), models_root, progress=False)[0]


class CachedReadout:
    """The readout of texts from the feature cache (the embedder only for what it lacks), to build
    the neighbour index of a head trained before indexes were stored
    (``models.heads.neighbors.index_for``): its training texts are in the cache."""

    def __init__(self, head: Head, models_root: Path, settings: Any = None) -> None:
        self.head, self.models_root, self.settings = head, models_root, settings
        self.readout = head.readout

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        return eval_features(self.head, texts, self.models_root, self.settings)


def wrong_row_evidence(head: Head, clean_texts: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str],
                       features: np.ndarray) -> list[dict[str, Any] | None]:
    """Return the evidence of each wrong row (``None`` for a right one): its label against the true one."""
    from models.heads.explain import evidence

    wrong = [i for i, (t, p) in enumerate(zip(y_true, y_pred)) if t != p and p in head.labels]
    out: list[dict[str, Any] | None] = [None] * len(clean_texts)
    if not wrong:
        return out
    found = evidence(head, features[wrong], [clean_texts[i] for i in wrong], [y_pred[i] for i in wrong],
                     against=[y_true[i] for i in wrong])
    for i, ev in zip(wrong, found):
        out[i] = ev
    return out


def _neighbors(title: str, rows: list[list[Any]] | None) -> str:
    if not rows:
        return ""
    items = "".join(f'<li>{escape(str(text))} <span class="conf">({cos:.2f})</span></li>' for text, _, cos in rows)
    return f'<div class="ev-n">{title}<ul class="examples">{items}</ul></div>'


def evidence_html(ev: dict[str, Any], true_label: str) -> str:
    """Render one row's evidence as a collapsed ``<details>`` (terms, bias, readout, neighbours)."""
    label, other = escape(ev["label"]), escape(ev["runner_up"])
    parts = []
    if ev.get("terms") is not None:
        terms = ", ".join(f"<code>{escape(t)}</code> {v:+.3f}" for t, v in ev["terms"])
        parts.append(f"<div>terms for {label}: {terms or 'none'}; <code>&lt;BIAS&gt;</code> {ev['bias']:+.3f}, "
                     f"readout {ev['readout']:+.3f}, logit {ev['logit']:+.3f} "
                     f"(vs {other}: {ev['runner_up_logit']:+.3f})</div>")
    parts.append(_neighbors(f"nearest training examples of {label}:", ev.get("neighbors")))
    parts.append(_neighbors(f"nearest training examples of {other}"
                            + (" (the true label)" if ev["runner_up"] == true_label else "") + ":",
                            ev.get("neighbors_runner_up")))
    if ev.get("note"):
        parts.append(f'<div class="conf">{escape(ev["note"])}</div>')
    return f'<details class="evidence"><summary>evidence</summary>{"".join(parts)}</details>'
