"""Unit tests of retrain.train.evaluate.summarise and its CSV report, against hand-computed numbers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from retrain.train.evaluate import ClassMetrics, Report, summarise

A = pytest.approx


def by_label(report: Report) -> dict[str, ClassMetrics]:
    return {c.label: c for c in report.per_class}


# y_true: a a a b b c     per class (tp / predicted / true):
# y_pred: a a b b c c     a: 2/2/3  b: 1/2/2  c: 1/2/1  d: 0/0/0
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_per_class_precision_recall_f1_support():
    r = summarise(Y_TRUE, Y_PRED, ["a", "b", "c", "d"])
    assert [c.label for c in r.per_class] == ["a", "b", "c", "d"], "rows follow the classes given"
    m = by_label(r)
    assert (m["a"].precision, m["a"].recall, m["a"].f1, m["a"].support) == (A(1.0), A(2 / 3, abs=1e-6), A(0.8), 3)
    assert (m["b"].precision, m["b"].recall, m["b"].f1, m["b"].support) == (A(0.5), A(0.5), A(0.5), 2)
    assert (m["c"].precision, m["c"].recall, m["c"].f1, m["c"].support) == (A(0.5), A(1.0), A(2 / 3, abs=1e-6), 1)
    # never true, never predicted: zero division counts as 0
    assert (m["d"].precision, m["d"].recall, m["d"].f1, m["d"].support) == (0.0, 0.0, 0.0, 0)
    assert all(isinstance(c.support, int) for c in r.per_class)
    assert m["a"].recall == round(2 / 3, 6), "figures are rounded to 6 decimals"


def test_summary_accuracy_weighted_and_macro_f1():
    r = summarise(Y_TRUE, Y_PRED, ["a", "b", "c", "d"])
    assert r.summary["n"] == 6
    assert r.summary["accuracy"] == A(4 / 6, abs=1e-6)
    assert r.summary["weighted_f1"] == A((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6, abs=1e-6)
    # macro F1 over the classes that occur in y_true (a, b, c): d, absent, does not drag it down
    assert r.summary["macro_f1"] == A((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert set(r.summary) == {"n", "accuracy", "weighted_f1", "macro_f1"}, "no oos figures without an oos class"


def test_a_prediction_outside_the_classes_is_an_error():
    r = summarise(["a", "b"], ["a", "zzz"], ["a", "b"])
    assert r.summary["accuracy"] == A(0.5)
    m = by_label(r)
    assert (m["b"].precision, m["b"].recall, m["b"].support) == (0.0, 0.0, 1)
    assert [c.label for c in r.per_class] == ["a", "b"]


def test_in_scope_accuracy_and_oos_recall_and_precision():
    # rows:    0  1    2  3    4    5
    y_true = ["x", "x", "y", "oos", "oos", "oos"]
    y_pred = ["x", "oos", "y", "oos", "x", "oos"]
    r = summarise(y_true, y_pred, ["oos", "x", "y"])
    s = r.summary
    assert s["accuracy"] == A(4 / 6, abs=1e-6)
    assert s["in_scope_accuracy"] == A(2 / 3, abs=1e-6)  # rows 0-2: x, y right, x -> oos wrong
    assert s["oos_recall"] == A(2 / 3, abs=1e-6)  # rows 3-5: two predicted oos
    assert s["oos_precision"] == A(2 / 3, abs=1e-6)  # predicted oos: rows 1, 3, 5; two truly oos
    # in-scope rows only, over their true labels: x p=1 r=1/2 f1=2/3 (support 2), y f1=1 (support 1)
    assert s["in_scope_weighted_f1"] == A((2 * 2 / 3 + 1) / 3, abs=1e-6)
    m = by_label(r)
    assert (m["oos"].precision, m["oos"].recall, m["oos"].support) == (A(2 / 3, abs=1e-6), A(2 / 3, abs=1e-6), 3)
    assert (m["x"].precision, m["x"].recall, m["x"].f1) == (A(0.5), A(0.5), A(0.5))  # row 4 is a false x
    assert s["weighted_f1"] == A((3 * 2 / 3 + 2 * 0.5 + 1 * 1.0) / 6, abs=1e-6)
    assert s["macro_f1"] == A((2 / 3 + 0.5 + 1.0) / 3, abs=1e-6)


def test_oos_figures_are_none_when_there_is_nothing_to_measure():
    no_oos_rows = summarise(["x", "y"], ["x", "x"], ["oos", "x", "y"]).summary
    assert no_oos_rows["oos_recall"] is None and no_oos_rows["oos_precision"] is None
    assert no_oos_rows["in_scope_accuracy"] == A(0.5)
    only_oos = summarise(["oos", "oos"], ["oos", "x"], ["oos", "x"]).summary
    assert only_oos["in_scope_accuracy"] is None and only_oos["in_scope_weighted_f1"] is None
    assert only_oos["oos_recall"] == A(0.5) and only_oos["oos_precision"] == A(1.0)


def test_no_rows():
    r = summarise([], [], ["a", "oos"])
    assert r.summary == {"n": 0, "accuracy": None, "weighted_f1": None, "macro_f1": None, "in_scope_accuracy": None,
                         "in_scope_weighted_f1": None, "oos_recall": None, "oos_precision": None}
    assert r.per_class == []
    assert r.to_csv_text().splitlines() == [
        "label,precision,recall,f1,support", "__n__,,,0,", "__accuracy__,,,,", "__weighted_f1__,,,,",
        "__macro_f1__,,,,", "__in_scope_accuracy__,,,,", "__in_scope_weighted_f1__,,,,", "__oos_recall__,,,,",
        "__oos_precision__,,,,"]


def test_lengths_must_match():
    with pytest.raises(ValueError):
        summarise(["a", "b"], ["a"], ["a", "b"])


def read_back(text: str) -> tuple[list[ClassMetrics], dict[str, str]]:
    per_class, summary = [], {}
    for row in csv.DictReader(io.StringIO(text)):
        label = row["label"]
        if label.startswith("__") and label.endswith("__"):
            summary[label[2:-2]] = row["f1"]
        else:
            per_class.append(ClassMetrics(label, float(row["precision"]), float(row["recall"]), float(row["f1"]),
                                          int(row["support"])))
    return per_class, summary


def test_csv_round_trip_of_the_per_class_rows(tmp_path: Path):
    # labels with a comma and a quote must survive CSV quoting
    classes = ["a", 'say "hi", please', "oos", "never"]
    y_true = ["a", "a", 'say "hi", please', "oos", "oos", "a", 'say "hi", please']
    y_pred = ["a", "oos", 'say "hi", please', "oos", "a", "a", "a"]
    r = summarise(y_true, y_pred, classes)
    r.to_csv(tmp_path / "report.csv")
    text = (tmp_path / "report.csv").read_text(encoding="utf-8")
    assert text == r.to_csv_text()
    assert text.splitlines()[0] == "label,precision,recall,f1,support"
    per_class, summary = read_back(text)
    assert per_class == r.per_class  # values are rounded to 6 decimals, so .6f loses nothing
    assert list(summary) == list(r.summary)
    for key, value in r.summary.items():
        assert (summary[key] == "") if value is None else (float(summary[key]) == value), key
    assert summary["n"] == "7"
