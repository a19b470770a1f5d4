"""Unit tests of retrain.drift.reference (drift reference statistics) and retrain.reports.error_analysis (error analysis HTML)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from retrain.drift.reference import (
    CONFIDENCE_EDGES,
    TEXT_LENGTH_EDGES,
    WORD_COUNT_EDGES,
    histogram_counts,
    histogram_shares,
    reference_stats,
)
from retrain.reports.error_analysis import EvalRows, oos_detection, write_report

ROOT = Path(__file__).resolve().parents[2]
EVIL = "<script>alert(1)</script>"
CLASSES = ["balance", "book_flight", "book_hotel", "never_predicted", "oos"]


# ----------------------------------------------------------------------------- reference


@pytest.fixture
def ref_inputs() -> dict:
    rng = np.random.default_rng(7)
    n = 60
    y_pred = [CLASSES[i] for i in rng.choice([0, 1, 2, 4], size=n, p=[0.4, 0.3, 0.2, 0.1])]
    confidence = rng.random(n)
    confidence[:4] = [0.0, 0.05, 0.95, 1.0]  # edges: the exact values must land where np.histogram puts them
    words = ["what", "is", "my", "balance", "book", "a", "flight", "to", "paris", "tonight"]
    texts = [" ".join(rng.choice(words, size=int(k))) for k in rng.integers(0, 25, size=n)]
    texts[0] = "x" * 700  # past the last finite length edge
    unk_rate = np.where(rng.random(n) < 0.2, rng.random(n) * 0.3, 0.0)
    embeddings = rng.normal(size=(n, 384)).astype(np.float32)
    embeddings[1] = 0.0  # a zero vector stays zero instead of dividing by 0
    return {
        "classes": CLASSES,
        "y_pred": y_pred,
        "confidence": confidence,
        "texts": texts,
        "unk_rate": unk_rate,
        "embeddings": embeddings,
        "oos_label": "oos",
        "oos_threshold": 0.3,
    }


def test_reference_shares_sum_to_one(ref_inputs: dict) -> None:
    stats = reference_stats(**ref_inputs)
    for shares in (
        stats["label_distribution"].values(),
        stats["confidence_histogram"]["shares"],
        stats["text_length"]["shares"],
        stats["word_count"]["shares"],
    ):
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)


def test_reference_label_distribution_covers_every_class(ref_inputs: dict) -> None:
    stats = reference_stats(**ref_inputs)
    assert list(stats["label_distribution"]) == CLASSES
    assert stats["label_distribution"]["never_predicted"] == 0.0
    n = len(ref_inputs["y_pred"])
    assert stats["n"] == n
    assert stats["label_distribution"]["balance"] == round(ref_inputs["y_pred"].count("balance") / n, 6)


def test_reference_centroid_equals_numpy_mean_of_unit_vectors(ref_inputs: dict) -> None:
    stats = reference_stats(**ref_inputs)
    emb = ref_inputs["embeddings"].astype(np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.where(norms > 0, emb / np.where(norms > 0, norms, 1.0), 0.0)
    expected = unit.mean(axis=0)
    assert stats["dim"] == 384
    assert len(stats["embedding_centroid"]) == 384
    np.testing.assert_allclose(stats["embedding_centroid"], expected, rtol=0, atol=5e-7)
    assert stats["centroid_norm"] == pytest.approx(np.linalg.norm(expected), abs=5e-7)


def test_reference_histogram_counts_equal_np_histogram(ref_inputs: dict) -> None:
    stats = reference_stats(**ref_inputs)
    chars = [len(t) for t in ref_inputs["texts"]]
    words = [len(t.split()) for t in ref_inputs["texts"]]
    for key, values, edges in (
        ("confidence_histogram", ref_inputs["confidence"], CONFIDENCE_EDGES),
        ("text_length", chars, TEXT_LENGTH_EDGES),
        ("word_count", words, WORD_COUNT_EDGES),
    ):
        expected, _ = np.histogram(values, bins=np.array(edges, dtype=np.float64))
        assert stats[key]["counts"] == expected.tolist(), key
        assert sum(stats[key]["counts"]) == len(values)


def test_reference_round_trips_through_json_exactly(ref_inputs: dict) -> None:
    stats = reference_stats(**ref_inputs)
    text = json.dumps(stats, allow_nan=False)
    assert json.loads(text) == stats
    assert stats["schema"] == 1
    assert stats["text_length"]["edges"][-1] is None  # inf is stored as null
    assert stats["confidence_histogram"]["edges"] == [round(0.05 * i, 2) for i in range(21)]


def test_reference_oos_figures_match_a_hand_count(ref_inputs: dict) -> None:
    stats = reference_stats(**ref_inputs)
    n = len(ref_inputs["y_pred"])
    assert stats["oos_rate"] == round(ref_inputs["y_pred"].count("oos") / n, 6)
    below = int((ref_inputs["confidence"] < 0.3).sum())
    assert stats["confidence_histogram"]["share_below_oos_threshold"] == round(below / n, 6)
    unk = ref_inputs["unk_rate"]
    assert stats["unk_rate"] == {
        "mean": round(float(unk.mean()), 6),
        "share_with_unk": round(float((unk > 0).mean()), 6),
    }


def test_reference_without_oos_has_null_oos_figures(ref_inputs: dict) -> None:
    stats = reference_stats(**{**ref_inputs, "oos_label": None, "oos_threshold": None})
    assert stats["oos_rate"] is None
    assert stats["confidence_histogram"]["share_below_oos_threshold"] is None


def test_histogram_shares_accepts_the_stored_edges(ref_inputs: dict) -> None:
    stored = json.loads(json.dumps(reference_stats(**ref_inputs)))
    chars = [len(t) for t in ref_inputs["texts"]]
    assert histogram_shares(chars, stored["text_length"]["edges"]) == stored["text_length"]["shares"]
    assert histogram_counts([0, 4, 5, 499, 500, 10**6], TEXT_LENGTH_EDGES)[:2] == [2, 1]
    assert histogram_counts([0, 4, 5, 499, 500, 10**6], TEXT_LENGTH_EDGES)[-2:] == [1, 2]
    assert histogram_shares([], WORD_COUNT_EDGES) == [0.0] * (len(WORD_COUNT_EDGES) - 1)


def test_reference_rejects_inputs_of_different_lengths(ref_inputs: dict) -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        reference_stats(**{**ref_inputs, "texts": ref_inputs["texts"][:-1]})
    with pytest.raises(ValueError, match="not in classes"):
        reference_stats(**{**ref_inputs, "classes": CLASSES[:-1]})


# ----------------------------------------------------------------------------- report


class _Tables(HTMLParser):
    """Collect the text of every cell, per table id (or class), and the text of elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or a.get("class") or "?"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        if tag in ("td", "span") and a.get("id"):
            self._id = a["id"]
            self.ids[self._id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        if tag in ("td", "span"):
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._id is not None:
            self.ids[self._id] += data


def _parse(html: str) -> _Tables:
    p = _Tables()
    p.feed(html)
    return p


REPORT_CLASSES = ["balance", "book_flight", "book_hotel", EVIL, "never_seen", "oos"]


ROWS = [
    # text, true, predicted, confidence, max in-scope probability (the oos score)
    ("what is my balance", "balance", "balance", 0.9, 0.9),
    ("how much money do i have", "balance", "balance", 0.8, 0.8),
    ("balance please", "balance", "oos", 0.5, 0.4),
    ("book a flight to paris", "book_flight", "book_flight", 0.7, 0.7),
    ("i need a flight to rome", "book_flight", "book_hotel", 0.6, 0.6),
    ("fly me to lisbon", "book_flight", "book_hotel", 0.55, 0.55),
    ("plane tickets to oslo", "book_flight", "book_hotel", 0.45, 0.45),
    ("fourth flight example", "book_flight", "book_hotel", 0.35, 0.35),
    ("a room in madrid", "book_hotel", "book_hotel", 0.95, 0.95),
    (f"{EVIL} hello", EVIL, "balance", 0.4, 0.4),
    ("tell me a joke", "oos", "oos", 0.6, 0.2),
    ("what is the meaning of life", "oos", "balance", 0.3, 0.3),
    ("sing a song", "oos", "oos", 0.7, 0.1),
    ("the weather on mars", "oos", "book_hotel", 0.25, 0.25),
]
"""A known confusion (book_flight -> book_hotel, 4 times), an injected label and text, 4 true oos rows."""

OOS_SCORES = np.array([row[4] for row in ROWS])


@pytest.fixture
def rows() -> EvalRows:
    texts, y_true, y_pred, conf, _ = zip(*ROWS)
    return EvalRows(list(texts), list(y_true), list(y_pred), np.array(conf))


def test_report_is_written_and_self_contained(tmp_path: Path, rows: EvalRows) -> None:
    path = write_report(tmp_path / "out", title="global/intent v1", classes=REPORT_CLASSES, rows=rows)
    assert path == tmp_path / "out" / "index.html"
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert html.count('src="data:image/png;base64,') == 1
    assert "http://" not in html and "https://" not in html
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]


def test_report_contains_every_class_name(tmp_path: Path, rows: EvalRows) -> None:
    html = write_report(tmp_path, title="t", classes=REPORT_CLASSES, rows=rows).read_text(encoding="utf-8")
    table = _parse(html).tables["per-class-table"]
    assert sorted(r[0] for r in table[1:]) == sorted(REPORT_CLASSES)


def test_report_per_class_numbers_equal_sklearn_and_worst_f1_comes_first(tmp_path: Path, rows: EvalRows) -> None:
    html = write_report(tmp_path, title="t", classes=REPORT_CLASSES, rows=rows).read_text(encoding="utf-8")
    table = _parse(html).tables["per-class-table"]
    assert table[0][:5] == ["class", "precision", "recall", "F1", "support"]
    by_label = {r[0]: r for r in table[1:]}
    p, r, f, s = precision_recall_fscore_support(rows.y_true, rows.y_pred, labels=REPORT_CLASSES, zero_division=0)
    i = REPORT_CLASSES.index("book_flight")
    assert by_label["book_flight"][1:5] == [f"{p[i]:.3f}", f"{r[i]:.3f}", f"{f[i]:.3f}", str(s[i])]
    assert by_label["book_flight"][1:5] == ["1.000", "0.200", "0.333", "5"]
    assert by_label["book_flight"][6] == "book_hotel (4)"
    f1_column = [float(row[3]) for row in table[1:]]
    assert f1_column == sorted(f1_column)


def test_report_lists_a_confused_pair_with_its_examples(tmp_path: Path, rows: EvalRows) -> None:
    html = write_report(tmp_path, title="t", classes=REPORT_CLASSES, rows=rows).read_text(encoding="utf-8")
    pairs = _parse(html).tables["pairs"]
    top = pairs[1]
    assert top[0] == "book_flight" and top[2] == "book_hotel" and top[3] == "4"
    assert "i need a flight to rome" in top[5]
    assert "plane tickets to oslo" in top[5]
    assert "fourth flight example" not in top[5]  # three examples at most


def test_report_escapes_labels_and_texts(tmp_path: Path, rows: EvalRows) -> None:
    html = write_report(tmp_path, title=f"title {EVIL}", classes=REPORT_CLASSES, rows=rows).read_text(encoding="utf-8")
    assert EVIL not in html
    assert "alert(1)" in html  # it is shown, escaped
    assert escape(EVIL) in html
    assert html.count("<script") == 1  # the page's own sort script
    pairs = _parse(html).tables["pairs"]
    assert any(row[0] == EVIL and f"{EVIL} hello" in row[5] for row in pairs[1:])


def test_report_has_no_oos_section_without_oos_label(tmp_path: Path, rows: EvalRows) -> None:
    html = write_report(tmp_path, title="t", classes=REPORT_CLASSES, rows=rows).read_text(encoding="utf-8")
    assert 'id="oos"' not in html and 'href="#oos"' not in html
    html = write_report(
        tmp_path, title="t", classes=REPORT_CLASSES[:-1], rows=_without_oos(rows), oos_label="oos"
    ).read_text(encoding="utf-8")
    assert 'id="oos"' not in html  # oos_label given but not a class of this head


def _without_oos(rows: EvalRows) -> EvalRows:
    keep = [i for i, (t, p) in enumerate(zip(rows.y_true, rows.y_pred)) if "oos" not in (t, p)]
    return EvalRows(
        [rows.texts[i] for i in keep],
        [rows.y_true[i] for i in keep],
        [rows.y_pred[i] for i in keep],
        rows.confidence[keep],
    )


def test_report_oos_precision_and_recall_match_a_hand_count(tmp_path: Path, rows: EvalRows) -> None:
    scores = OOS_SCORES
    html = write_report(
        tmp_path,
        title="t",
        classes=REPORT_CLASSES,
        rows=rows,
        oos_label="oos",
        oos_threshold=0.32,
        oos_scores=scores,
    ).read_text(encoding="utf-8")
    # score < 0.32 flags: tell me a joke (0.2, oos), what is the meaning of life (0.3, oos),
    # sing a song (0.1, oos), the weather on mars (0.25, oos) -> 4 flagged, 4 true positives;
    # 4 true oos rows -> precision 4/4, recall 4/4. Not flagged: fourth flight example (0.35).
    parsed = _parse(html)
    assert parsed.ids["oos-precision"] == "1.0000"
    assert parsed.ids["oos-recall"] == "1.0000"
    assert 'id="oos"' in html and html.count('src="data:image/png;base64,') == 2
    chosen = [row for row in parsed.tables["oos-curve"][1:] if row[0] == "0.32"]
    assert chosen == [["0.32", "4", "4", "1.000", "1.000"]]

    # at 0.5: flagged = 0.4 (balance), 0.45, 0.35, 0.4 (EVIL), 0.2, 0.3, 0.1, 0.25 -> 8 flagged, 4 oos
    point = oos_detection(rows.y_true, scores, oos_label="oos", threshold=0.5)
    assert (point.flagged, point.true_positives, point.precision, point.recall) == (8, 4, 0.5, 1.0)
    # at 0.15: only "sing a song" -> precision 1, recall 1/4
    point = oos_detection(rows.y_true, scores, oos_label="oos", threshold=0.15)
    assert (point.flagged, point.precision, point.recall) == (1, 1.0, 0.25)


def test_report_oos_without_scores_shows_the_predicted_label_figures(tmp_path: Path, rows: EvalRows) -> None:
    html = write_report(tmp_path, title="t", classes=REPORT_CLASSES, rows=rows, oos_label="oos").read_text(
        encoding="utf-8"
    )
    # predicted oos: "balance please" (wrong), "tell me a joke", "sing a song" -> precision 2/3; recall 2/4
    assert "0.6667 (2/3)" in html and "0.5000 (2/4)" in html


def test_report_rejects_labels_outside_classes(tmp_path: Path, rows: EvalRows) -> None:
    with pytest.raises(ValueError, match="not in classes"):
        write_report(tmp_path, title="t", classes=["balance"], rows=rows)
    with pytest.raises(ValueError, match="one entry per text"):
        EvalRows(["a"], ["x"], ["x", "y"], np.array([0.5]))


def test_report_renders_without_a_display_and_without_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from retrain.reports.error_analysis import EvalRows, write_report\n"
        "rows = EvalRows(['a', 'b'], ['x', 'y'], ['x', 'x'], np.array([0.9, 0.6]))\n"
        f"write_report({str(tmp_path)!r}, title='t', classes=['x', 'y'], rows=rows)\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "index.html").stat().st_size > 1000


def test_reference_edges_are_the_documented_ones() -> None:
    assert len(CONFIDENCE_EDGES) == 21 and CONFIDENCE_EDGES[0] == 0.0 and CONFIDENCE_EDGES[-1] == 1.0
    assert TEXT_LENGTH_EDGES[:3] == (0, 5, 10) and math.isinf(TEXT_LENGTH_EDGES[-1])
    assert WORD_COUNT_EDGES[-2] == 50 and math.isinf(WORD_COUNT_EDGES[-1])
