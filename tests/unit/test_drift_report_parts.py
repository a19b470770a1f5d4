"""The service-free parts of the drift report: reference sides, metrics, moved labels, HTML, CLI flags."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from retrain.drift import stats as drift
from retrain.drift.compare import compare, moved_labels
from retrain.drift.page import render_html
from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES, reference_stats
from retrain.drift.report import format_summary
from retrain.drift.sides import Side, side_from_reference
from streams.cli import main

LABELS = ["a", "b", "c", "oos"]


def _reference() -> dict:
    rng = np.random.default_rng(0)
    y = ["a"] * 400 + ["b"] * 300 + ["c"] * 200 + ["oos"] * 100
    stats = reference_stats(classes=LABELS, y_pred=y, confidence=rng.beta(5, 1, size=1000),
                            texts=["hello there"] * 1000, unk_rate=np.zeros(1000), embeddings=rng.normal(size=(1000, 8)) + 1,
                            oos_label="oos", oos_threshold=0.5)
    return json.loads(json.dumps(stats))


def _side(labels: dict[str, float], ref: Side) -> Side:
    n = int(sum(labels.values()))
    scale = n / ref.n
    return Side(n=n, labels=labels, confidence_counts=[c * scale for c in ref.confidence_counts],
                below_oos=ref.below_oos * scale, length_counts=[c * scale for c in ref.length_counts],
                oos=labels.get("oos", 0.0), hours=[], versions={"v1": n})


def test_side_from_reference_turns_shares_back_into_counts():
    ref = side_from_reference(_reference())
    assert ref.n == 1000
    assert ref.labels == {"a": 400.0, "b": 300.0, "c": 200.0, "oos": 100.0}
    assert len(ref.confidence_counts) == len(CONFIDENCE_EDGES) - 1 and sum(ref.confidence_counts) == 1000
    assert len(ref.length_counts) == len(TEXT_LENGTH_EDGES) - 1
    assert ref.oos == pytest.approx(100.0)
    assert ref.centroid is not None and len(ref.centroid) == 8


def test_compare_flags_a_moved_label_mix_and_not_the_same_mix():
    ref = side_from_reference(_reference())
    same = compare(ref, _side({"a": 4000, "b": 3000, "c": 2000, "oos": 1000}, ref))
    moved = compare(ref, _side({"a": 1000, "b": 1000, "c": 7000, "oos": 1000}, ref))
    assert not same["labels.psi"]["flag"] and not same["labels.js_distance"]["flag"]
    assert moved["labels.psi"]["flag"] and moved["labels.js_distance"]["flag"]
    r, c = np.array([400, 300, 200, 100.0]), np.array([1000, 1000, 7000, 1000.0])
    assert moved["labels.psi"]["value"] == pytest.approx(drift.psi(r, c), abs=1e-6)
    assert moved["labels.psi"]["threshold"] == drift.PSI_THRESHOLD
    # no serving rollups on the current side: the embedding and unknown-piece metrics are not available
    assert moved["embedding.cosine_distance"]["available"] is False and not moved["embedding.cosine_distance"]["flag"]
    assert moved["inputs.share_with_unk"]["available"] is False


def test_an_oos_rise_of_five_points_flags_only_when_it_is_clear_of_noise():
    ref = side_from_reference(_reference())  # 10 % oos
    big = compare(ref, _side({"a": 3500, "b": 2500, "c": 2000, "oos": 2000}, ref))["oos_rate"]
    small_n = compare(ref, _side({"a": 7, "b": 6, "c": 4, "oos": 3}, ref))["oos_rate"]
    assert big["flag"] and big["delta"] == pytest.approx(0.1)
    assert small_n["delta"] == pytest.approx(0.05) and not small_n["flag"]  # 20 rows: z far below 3


def test_moved_labels_lists_the_biggest_rises_and_falls():
    ref = side_from_reference(_reference())
    moved = moved_labels(ref, _side({"a": 1000, "b": 1000, "c": 7000, "oos": 1000}, ref))
    assert [x["label"] for x in moved["up"]] == ["c"]
    assert [x["label"] for x in moved["down"]] == ["a", "b"]
    assert moved["up"][0] == {"label": "c", "before": 0.2, "after": 0.7, "delta": 0.5}


def test_the_page_embeds_its_plots_and_the_text_summary_names_every_metric():
    ref = side_from_reference(_reference())
    cur = _side({"a": 1000, "b": 1000, "c": 7000, "oos": 1000}, ref)
    hour = datetime(2026, 11, 28, 10, tzinfo=UTC)
    cur.hours = [{"hour": hour, "n": 10000, "cache_hit_rate": 0.5, "oos_rate": 0.1, "p50_ms": 3.0, "p99_ms": 9.0}]
    cur.version_hours = [(hour, "v1", 10000)]
    metrics = compare(ref, cur)
    summary = {"region": "global", "model": "intent", "drift": True, "flags": ["labels.psi"], "metrics": metrics,
               "window": {"start": "s", "end": "e", "length": "7d"}, "rows": {"current": cur.n, "reference": ref.n},
               "reference": {"kind": "training", "version": "v1"}, "oos_threshold": 0.5,
               "labels_moved": moved_labels(ref, cur), "report": "/x/report.html",
               "operations": {"cache_hit_rate": 0.5, "latency_ms": {"p50": 3.0, "p99": 9.0},
                              "versions": {"v1": {"rows": cur.n, "share": 1.0}}, "hours": []}}
    page = render_html(summary, ref, cur)
    assert page.count("data:image/png;base64,") == 6
    assert "DRIFT: labels.psi" in page
    text = format_summary(summary)
    assert all(name in text for name in metrics)


@pytest.mark.parametrize("flags", [["--region", "global"], ["--region", "global", "--model", "intent", "--current",
                                                              "3m", "--out", "x"],
                                   ["--region", "Bad Name", "--model", "intent", "--current", "7d", "--out", "x"]])
def test_the_cli_refuses_bad_flags_with_exit_2_before_touching_services(flags, capsys):
    assert main(["drift-report", *flags]) == 2
    assert capsys.readouterr().err.startswith("error:")
