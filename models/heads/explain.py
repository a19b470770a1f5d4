"""Why a head gave a label: the terms that pushed it, the readout's part, the nearest training examples.

A head averages the probabilities of its members (``models.heads.serve``). A ``linear`` member
computes, for class ``c``::

    logit[c] = b[c] + dense @ W[:, c] + sum over TF-IDF blocks B of  sum_t x_B[t] * W_B[t, c]

where ``dense`` is the (standardised) readout and ``x_B`` the TF-IDF row of block ``B``. The
text weight of training is folded into ``W_B`` when the head is written, so the stored weights
are the ones to multiply. That sum is exact, as eli5 shows a linear model:

- ``<BIAS>`` is the intercept ``b[c]``: the baseline is the logit of a phrase with no known
  term and a zero readout, before the temperature and the softmax;
- each term's contribution is ``x_B[t] * W_B[t, c]``, named ``word:<n-gram>`` or
  ``char:<n-gram>`` (the block's name, then the vectorizer's vocabulary entry);
- the readout part is ``dense @ W[:, c]``, one number: the share of the encoder's readout (the
  sentence embedding and the pools of the lower layers the head reads).

``bias + readout + sum(contributions)`` is that member's logit for ``c`` (to float rounding).
Other members (the hidden-layer network) are not decomposed; the evidence names the member it
explains and its weight in the average.

:func:`evidence` is the compact, JSON-ready form the stream attaches to a prediction (``"explain":
true``) and the review items carry: it needs the readout the worker computed anyway, the cleaned
texts, and the neighbour index stored with the head; it never runs the embedder. The full
explanation, :func:`explain`, takes the embedder too: it adds every term, the index built on
first use for an older head, and leave-one-word-out on the readout (:mod:`models.heads.occlusion`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.heads.neighbors import index_for, sentence_columns
from models.heads.serve import Head, Member, TextFeatures

TOP_TERMS = 5
"""Terms in the stream's evidence: the five largest contributions by absolute value."""
NEIGHBORS = 3
"""Nearest training examples shown per label."""
NO_INDEX_NOTE = ("this head has no neighbour index (trained before indexes were stored); "
                 "`phrasestream explain` builds one from its training snapshot")

_terms_lock = threading.Lock()
_term_names: weakref.WeakKeyDictionary[TextFeatures, list[str]] = weakref.WeakKeyDictionary()


def term_names(features: TextFeatures) -> list[str]:
    """The vocabulary of one TF-IDF block in column order (built once per vectorizer)."""
    with _terms_lock:
        names = _term_names.get(features)
        if names is None:
            names = [""] * features.dim
            for term, i in dict(features.vectorizer.vocabulary).items():  # {term: column}, as TextFeatures gives it
                names[int(i)] = str(term)
            _term_names[features] = names
        return names


@dataclass
class Decomposition:
    """One linear member's logit for one class, split into its exact parts."""

    member: str
    member_weight: float
    temperature: float
    label: str
    logit: float
    bias: float
    readout: float
    terms: list[tuple[str, float]]
    """Every active term's contribution, largest absolute value first."""

    @property
    def total(self) -> float:
        """``bias + readout + sum(terms)``: equals :attr:`logit` (the identity the tests check)."""
        return self.bias + self.readout + sum(c for _, c in self.terms)


def linear_member(head: Head) -> Member | None:
    """The member whose logit is decomposed: the heaviest ``linear`` one (None if there is none)."""
    linear = [m for m in head.members if m.kind == "linear"]
    return max(linear, key=lambda m: m.weight) if linear else None


def decompose(head: Head, features: np.ndarray, texts: Sequence[str] | None, label_idx: Sequence[int],
              text_rows: dict[str, Any] | None = None, top: int | None = None) -> list[Decomposition | None]:
    """Decompose the linear member's logit of class ``label_idx[i]`` for each row ``i``.

    ``features`` are the readouts ``[n, feature_dim]``; ``texts`` the cleaned texts (when the
    head uses TF-IDF); ``text_rows`` their TF-IDF rows when already computed. ``terms`` holds
    every active term, or the ``top`` largest by absolute value (the parts then sum to the logit
    only with all terms). Returns ``None`` for every row when the head has no linear member.
    """
    member = linear_member(head)
    if member is None:
        return [None] * len(label_idx)
    dense = head._dense(features)
    if text_rows is None:
        needed = [n for n in member.text_features]
        if needed and texts is None:
            raise ValueError(f"head {head.ref} uses TF-IDF features: give the cleaned texts")
        text_rows = {n: head.text[n].transform(list(texts or [])) for n in needed}
    a = member.arrays
    total_weight = sum(m.weight for m in head.members) or 1.0
    logits = member.logits(dense, text_rows)
    out: list[Decomposition | None] = []
    for i, c in enumerate(label_idx):
        c = int(c)
        blocks, cols_all, contribs = [], [], []
        for b, name in enumerate(member.text_features):
            m = text_rows[name]  # CSR: row i's columns and tf-idf values, sliced without a copy
            lo, hi = int(m.indptr[i]), int(m.indptr[i + 1])
            cols = m.indices[lo:hi]
            contribs.append(m.data[lo:hi].astype(np.float64) * a[f"W_{name}"][cols, c])
            cols_all.append(cols)
            blocks.append(np.full(hi - lo, b))
        terms: list[tuple[str, float]] = []
        if contribs:
            contrib, col, block = np.concatenate(contribs), np.concatenate(cols_all), np.concatenate(blocks)
            order = np.argsort(-np.abs(contrib), kind="stable")[:top]  # names only for the terms kept
            for j in order:
                name = member.text_features[int(block[j])]
                terms.append((f"{name}:{term_names(head.text[name])[int(col[j])]}", float(contrib[j])))
        out.append(Decomposition(
            member=member.name, member_weight=member.weight / total_weight, temperature=member.temperature,
            label=head.labels[c], logit=float(logits[i, c]), bias=float(a["b"][c]),
            readout=float(dense[i] @ a["W"][:, c]), terms=terms))
    return out


def _r(x: float) -> float:
    return round(float(x), 4)


def evidence(head: Head, features: np.ndarray, texts: Sequence[str], labels: Sequence[str] | None = None,
             *, against: Sequence[str | None] | None = None, top_terms: int = TOP_TERMS,
             neighbors: int = NEIGHBORS) -> list[dict[str, Any]]:
    """Return one compact JSON-ready dict per row: why row ``i`` got ``labels[i]`` (default: its prediction).

    Each dict: ``label``, ``runner_up`` (the most probable other label), ``probability`` of both,
    ``member`` (the linear member explained and its weight in the average), ``logit`` and
    ``runner_up_logit`` of that member, ``terms`` (``[[term, contribution], ...]``, the
    ``top_terms`` largest by absolute value), ``bias``, ``readout``, ``neighbors`` and
    ``neighbors_runner_up`` (``[[text, label, cosine], ...]``). Without a linear member,
    ``terms`` is None; without a stored neighbour index, ``neighbors`` is None; a ``note`` says
    why. No embedder is run: this is what the stream attaches.

    ``against`` replaces the runner-up of row ``i`` by ``against[i]`` when it is another label
    of the head (the error-analysis page compares a wrong prediction with the true label).
    """
    texts = list(texts)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 1:
        features = features[None, :]
    if not len(features):
        return []
    probs = head.predict_proba(features, texts if head.needs_texts else None)
    pred, _ = head.decide(probs)
    if labels is None:
        idx = [int(p) for p in pred]
    else:
        if len(labels) != len(features):
            raise ValueError(f"{len(labels)} labels for {len(features)} rows")
        unknown = [x for x in labels if x not in head.labels]
        if unknown:
            raise ValueError(f"label(s) {sorted(set(unknown))} are not labels of head {head.ref}")
        idx = [head.labels.index(x) for x in labels]
    if against is not None and len(against) != len(idx):
        raise ValueError(f"{len(against)} labels to compare with for {len(idx)} rows")
    runner = []
    for i, c in enumerate(idx):
        other = against[i] if against is not None else None
        if other is not None and other in head.labels and other != head.labels[c]:
            runner.append(head.labels.index(other))
            continue
        order = np.argsort(-probs[i], kind="stable")
        runner.append(int(order[0] if order[0] != c else order[1]) if len(order) > 1 else c)
    member = linear_member(head)
    text_rows = ({n: head.text[n].transform(texts) for n in member.text_features} if member is not None else {})
    parts = decompose(head, features, texts, idx, text_rows, top=top_terms)
    runner_parts = decompose(head, features, texts, runner, text_rows, top=0)
    index = index_for(head)
    sentence = features[:, sentence_columns(head.readout)] if index is not None else None
    near = (index.nearest_many(np.concatenate([sentence, sentence]), [head.labels[c] for c in idx + runner],
                               neighbors) if index is not None and sentence is not None else [])
    out: list[dict[str, Any]] = []
    for i, (c, r) in enumerate(zip(idx, runner)):
        label, other = head.labels[c], head.labels[r]
        ev: dict[str, Any] = {"label": label, "runner_up": other, "probability": _r(probs[i, c]),
                              "runner_up_probability": _r(probs[i, r])}
        notes: list[str] = []
        d, dr = parts[i], runner_parts[i]
        if d is None:
            ev.update(terms=None, bias=None, readout=None)
            notes.append("this head has no linear member: no term contributions")
        else:
            ev.update(member=[d.member, _r(d.member_weight)], logit=_r(d.logit),
                      runner_up_logit=_r(dr.logit) if dr is not None else None,
                      terms=[[t, _r(v)] for t, v in d.terms[:top_terms]], bias=_r(d.bias), readout=_r(d.readout))
        if index is None or sentence is None:
            ev.update(neighbors=None, neighbors_runner_up=None)
            notes.append(NO_INDEX_NOTE)
        else:
            ev["neighbors"], ev["neighbors_runner_up"] = near[i], near[len(idx) + i]
        if notes:
            ev["note"] = "; ".join(notes)
        out.append(ev)
    return out


BASELINE = ("contributions are to the logit of the head's linear member, before its temperature and the "
            "softmax; <BIAS> is that member's intercept for the label (the logit of a phrase with no known "
            "term and a zero readout), <READOUT> the encoder readout's part (its pools of layers 2-6, "
            "standardised: readout · W[:, label]); bias + readout + the terms = the logit")


def explain(head: Head, embedder: Any, text: str, label: str | None = None, *,
            occlude: bool = True) -> dict[str, Any]:
    """Explain the head's answer for one raw phrase: the whole explanation as one JSON-ready dict.

    ``embedder`` is a ``models.embedder.Embedder`` of the head's version and precision (the
    caller checks, e.g. with ``load_head(..., embedder_version=..., embedder_precision=...)``).
    The phrase is cleaned as the worker cleans it. The predicted label is explained, and
    ``label`` too when given (``ValueError`` if it is not one of the head's labels, or if the
    phrase is empty once cleaned). For each: every term's contribution (largest first), the
    bias and the readout part, the logit and the runner-up's, the three nearest training
    examples of the label and of its runner-up (the index is built from the training snapshot
    on first use for a head that stored none), and leave-one-word-out on the readout
    (``occlude``; a secondary signal, see :mod:`models.heads.occlusion`).
    """
    from models.heads.occlusion import CAVEAT, leave_one_word_out
    from schemas.cleaning import clean

    cleaned = clean(text)
    if not cleaned:
        raise ValueError("the phrase is empty once cleaned")
    if label is not None and label not in head.labels:
        raise ValueError(f"{label!r} is not a label of {head.ref}; its labels: {', '.join(head.labels)}")
    feats = np.asarray(embedder.features_batch([cleaned]), dtype=np.float32)
    texts = [cleaned]
    probs = head.predict_proba(feats, texts if head.needs_texts else None)[0]
    pred_idx, conf = head.decide(probs[None, :])
    predicted = head.labels[int(pred_idx[0])]
    order = np.argsort(-probs, kind="stable")
    wanted = [predicted] + ([label] if label is not None and label != predicted else [])
    index = index_for(head, embedder)
    sentence = feats[0, sentence_columns(head.readout)]
    occ = leave_one_word_out(head, embedder, cleaned, wanted, full_features=feats[0]) if occlude else None
    sections: list[dict[str, Any]] = []
    for i, name in enumerate(wanted):
        c = head.labels.index(name)
        r = int(order[0] if order[0] != c else order[1]) if len(order) > 1 else c
        [d] = decompose(head, feats, texts, [c])
        [dr] = decompose(head, feats, texts, [r])
        sec: dict[str, Any] = {"label": name, "why": "predicted" if i == 0 else "asked",
                               "probability": _r(probs[c]), "runner_up": head.labels[r],
                               "runner_up_probability": _r(probs[r])}
        if d is None:
            sec["terms"] = None
            sec["note"] = "this head has no linear member: no term contributions"
        else:
            sec.update(member={"name": d.member, "weight": _r(d.member_weight), "temperature": _r(d.temperature)},
                       logit=_r(d.logit), bias=_r(d.bias), readout=_r(d.readout),
                       terms=[[t, _r(v)] for t, v in d.terms], terms_sum=_r(sum(v for _, v in d.terms)),
                       runner_up_logit=_r(dr.logit) if dr else None,
                       logit_difference=_r(d.logit - dr.logit) if dr else None)
        if index is not None:
            sec["neighbors"] = index.nearest(sentence, name, NEIGHBORS)
            sec["neighbors_runner_up"] = index.nearest(sentence, head.labels[r], NEIGHBORS)
        else:
            sec["neighbors"] = sec["neighbors_runner_up"] = None
        if occ is not None:
            sec["leave_one_word_out"] = occ["by_label"].get(name) or None
        sections.append(sec)
    return {
        "head": str(head.ref), "embedder_version": head.embedder_version,
        "embedder_precision": head.embedder_precision, "text": text, "clean_text": cleaned,
        "prediction": {"label": predicted, "probability": _r(conf[0]),
                       "top_k": [[head.labels[j], _r(probs[j])] for j in order[:3]]},
        "baseline": BASELINE,
        "index": ({"status": "none", "rows": 0} if index is None
                  else {"status": "stored at training" if index.built == "training" else "built on first use "
                        "from the training snapshot (not stored)", "rows": len(index)}),
        "leave_one_word_out": None if occ is None else {"caveat": CAVEAT, "passes": occ["passes"],
                                                        "skipped": occ["skipped"]},
        "explained": sections,
    }
