"""Score a head's predictions with scikit-learn's metrics.

The summary every head carries (``metadata.json`` ``metrics``, the ``--json`` line of
``phrasestream train``, the retraining gate) is :func:`summarise`: accuracy, weighted and
macro F1 over every class, and, when the classes include ``oos``, the in-scope accuracy (on
rows whose true label is not ``oos``) and the recall and precision of ``oos``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.heads import OOS


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Report:
    """The metrics of one labelled set: a summary and one row per class."""

    summary: dict[str, float | int | None]
    per_class: list[ClassMetrics]

    def to_csv_text(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["label", "precision", "recall", "f1", "support"])
        for c in self.per_class:
            w.writerow([c.label, f"{c.precision:.6f}", f"{c.recall:.6f}", f"{c.f1:.6f}", c.support])
        for key, value in self.summary.items():
            w.writerow([f"__{key}__", "", "", "" if value is None else f"{value:.6f}" if isinstance(value, float)
                        else value, ""])
        return out.getvalue()

    def to_csv(self, path: Path | str) -> None:
        Path(path).write_text(self.to_csv_text(), encoding="utf-8")


def _r(x: float) -> float:
    return round(float(x), 6)


def summarise(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> Report:
    """Return the metrics of ``y_pred`` against ``y_true`` over ``classes`` (zero division: 0)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    y_true = list(y_true)
    y_pred = list(y_pred)
    classes = list(classes)
    n = len(y_true)
    summary: dict[str, float | int | None] = {"n": n}
    if n == 0:
        summary.update(accuracy=None, weighted_f1=None, macro_f1=None)
        if OOS in classes:
            summary.update(in_scope_accuracy=None, in_scope_weighted_f1=None, oos_recall=None, oos_precision=None)
        return Report(summary, [])
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    per_class = [ClassMetrics(c, _r(p[i]), _r(r[i]), _r(f[i]), int(s[i])) for i, c in enumerate(classes)]
    summary["accuracy"] = _r(accuracy_score(y_true, y_pred))
    summary["weighted_f1"] = _r(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    # macro over the classes that occur in the true labels: a class absent from the set says nothing
    true_classes = sorted(set(y_true))
    summary["macro_f1"] = _r(f1_score(y_true, y_pred, labels=true_classes, average="macro", zero_division=0))
    if OOS in classes:
        t = np.asarray(y_true, dtype=object)
        q = np.asarray(y_pred, dtype=object)
        ins = t != OOS
        summary["in_scope_accuracy"] = _r(np.mean(t[ins] == q[ins])) if ins.any() else None
        in_labels = sorted(set(t[ins]))
        summary["in_scope_weighted_f1"] = (
            _r(f1_score(list(t[ins]), list(q[ins]), labels=in_labels, average="weighted", zero_division=0))
            if ins.any() else None)
        oos = ~ins
        summary["oos_recall"] = _r(np.mean(q[oos] == OOS)) if oos.any() else None
        predicted_oos = q == OOS
        summary["oos_precision"] = _r(np.mean(t[predicted_oos] == OOS)) if predicted_oos.any() else None
    return Report(summary, per_class)
