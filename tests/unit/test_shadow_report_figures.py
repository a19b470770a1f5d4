"""The shadow report's figures on synthetic rows: agreement, the folded confusion table, the
scores by slice (the random slice weighted, with its interval), the page, and the sink's CSV."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime

import pytest

from retrain.replay.select import Example
from retrain.shadow.figures import OTHER, Labelled, agreement, confusion, match_labels, scores, wilson
from retrain.shadow.page import render_html
from schemas.messages import ShadowPrediction
from streams.sinks.shadow import SHADOW_COLUMNS, shadow_copy_csv

COUNTS = [("a", "a", 50), ("a", "b", 10), ("b", "b", 30), ("c", "a", 5), ("c", "c", 5)]


def test_agreement_is_the_share_of_pairs_with_the_same_label():
    assert agreement(COUNTS) == (100, 85, 0.85)
    assert agreement([]) == (0, 0, None)


def test_confusion_keeps_every_count_in_its_cell():
    table = confusion(COUNTS)
    assert table["rows"] == ["a", "b", "c"] and table["columns"] == ["a", "b", "c"]
    assert table["cells"] == [[50, 10, 0], [0, 30, 0], [5, 0, 5]]
    assert table["disagreements"] == [{"live": "a", "shadow": "b", "n": 10}, {"live": "c", "shadow": "a", "n": 5}]


def test_confusion_folds_the_rare_labels_into_other_and_keeps_the_total():
    counts = [(f"l{i}", f"s{i}", 100 - i) for i in range(12)]
    table = confusion(counts, top=3)
    assert table["rows"] == ["l0", "l1", "l2", OTHER] and table["columns"] == ["s0", "s1", "s2", OTHER]
    assert sum(map(sum, table["cells"])) == sum(n for *_, n in counts)
    assert table["cells"][3][3] == sum(100 - i for i in range(3, 12))


def test_the_random_slice_is_weighted_and_kept_apart_from_the_doubtful_answers():
    items = [
        # random slice: live right on 3 of 4 (weights 10, 10, 10, 30), shadow right on all
        Labelled("t1", "a", "a", "a", "review", "random", 10.0),
        Labelled("t2", "b", "b", "b", "review", "random", 10.0),
        Labelled("t3", "a", "a", "a", "review", "random,margin", 10.0),
        Labelled("t4", "c", "b", "c", "review", "random", 30.0),
        # doubtful: live wrong, shadow right
        Labelled("t5", "c", "oos", "c", "review", "oos"),
        Labelled("t6", "c", "a", "c", "review", "margin"),
        # produced by users
        Labelled("t7", "a", "a", "b", None, None),
    ]
    s = scores(items)
    assert s["all"]["n"] == 7 and s["random_slice"]["n"] == 4 and s["doubtful"]["n"] == 3
    assert s["outside_review"]["n"] == 1
    assert s["random_slice"]["live"]["accuracy"] == pytest.approx(30 / 60)  # weighted: (10+10+10) / 60
    assert s["random_slice"]["shadow"]["accuracy"] == 1.0
    assert s["random_slice"]["effective_n"] == pytest.approx(60 ** 2 / (3 * 100 + 900))
    low, high = s["random_slice"]["live"]["accuracy_ci95"]
    assert low < 0.5 < high
    assert s["doubtful"]["live"]["accuracy"] == pytest.approx(1 / 3)  # t3 (right) is doubtful too
    assert s["doubtful"]["shadow"]["accuracy"] == 1.0
    assert s["all"]["live"]["accuracy"] == pytest.approx(4 / 7)
    assert "accuracy_ci95" not in s["doubtful"]["live"]


def test_an_empty_slice_has_no_scores():
    s = scores([])
    assert s["random_slice"] == {"n": 0, "live": {"accuracy": None, "weighted_f1": None},
                                 "shadow": {"accuracy": None, "weighted_f1": None}}


def test_wilson_interval_contains_the_proportion_and_narrows_with_n():
    a = wilson(0.8, 10)
    b = wilson(0.8, 1000)
    assert a[0] < b[0] < 0.8 < b[1] < a[1]
    assert math.isclose(sum(wilson(0.5, 100)) / 2, 0.5)


def test_labels_match_answers_by_cleaned_text_and_keep_their_provenance():
    examples = [Example("Hi!", "hi", "greet", 1, 0, 0, None, "review", "random", 50.0),
                Example("Bye", "bye", "leave", 2, 0, 1)]
    matched = match_labels(examples, {"hi": ("greet", "oos")})
    assert matched == [Labelled("hi", "greet", "greet", "oos", "review", "random", 50.0)]


def shadow(id: str, **extra: object) -> ShadowPrediction:
    t = datetime(2026, 12, 1, tzinfo=UTC)
    fields = {"id": id, "region": "eu", "model": "m", "model_version": "v2", "label": "a", "probability": 0.5,
              "top_k": [("a", 0.5)], "clean_text": 'say "hi",\nthen go', "embedder_version": "e", "cache_hit": False,
              "latency_ms": 1.0, "received_at": t, "predicted_at": t, "live_version": "v1", **extra}
    return ShadowPrediction.model_validate(fields)


def test_the_sink_csv_reads_back_with_missing_values_as_null():
    data = shadow_copy_csv([shadow("1", live_label="b", head_ms=0.25, live_head_ms=0.5), shadow("2")]).decode()
    rows = list(csv.reader(io.StringIO(data, newline="")))
    assert [len(r) for r in rows] == [len(SHADOW_COLUMNS)] * 2
    first = dict(zip(SHADOW_COLUMNS, rows[0], strict=True))
    assert first["clean_text"] == 'say "hi",\nthen go' and first["live_label"] == "b" and first["head_ms"] == "0.25"
    # COPY reads an unquoted empty field as NULL, a quoted one as text: missing values must be unquoted
    assert data.splitlines()[-1].endswith('"v1",,,')


def test_the_sink_csv_refuses_a_plain_prediction_as_a_row_error():
    from schemas.messages import Prediction

    plain = Prediction.model_validate(shadow("1").model_dump(exclude={"live_version", "live_label", "head_ms",
                                                                      "live_head_ms"}))
    with pytest.raises(ValueError, match="not a shadow prediction"):
        shadow_copy_csv([plain])


def summary() -> dict:
    from retrain.shadow.rows import SHIFT_EDGES

    lab = scores([Labelled("t", "a", "a", "<b>", "review", "random", 2.0)])
    return {
        "region": "eu", "model": "m", "shadow_version": "v2", "live_versions": ["v1"],
        "window": {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z", "label": "24h"},
        "shadow_versions_seen": [{"version": "v2", "rows": 100}], "rows": {"live": 100, "shadow": 100, "paired": 100},
        "agreement": {"paired": 100, "agreeing": 85, "rate": 0.85}, "confusion": confusion([*COUNTS, ("<b>", "a", 1)]),
        "confidence_shift": {"mean": 0.01, "quantiles": {"0.5": 0.0}, "live_mean": 0.7, "shadow_mean": 0.71,
                             "histogram": {"edges": SHIFT_EDGES, "counts": [0] * 9 + [40, 60] + [0] * 9}},
        "head_ms": {"shadow": {"n": 100, "mean": 0.2, "p50": 0.2, "p99": 0.4},
                    "live": {"n": 100, "mean": 0.2, "p50": 0.2, "p99": 0.3}},
        "labelled": {"examples_in_window": 3, "matched": 1, **lab}, "warnings": ["<script>"],
    }


def test_the_page_shows_the_figures_and_escapes_labels():
    html = render_html(summary())
    assert "85.0%" in html and "data:image/png;base64," in html and "random slice" in html
    assert "<b>" not in html.replace("<body>", "") and "&lt;b&gt;" in html and "<script>" not in html


class ShadowTable:
    """shadow_inferences, keyed (id, model, model_version) like ON CONFLICT ... DO NOTHING."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], ShadowPrediction] = {}

    def prepare(self, batch: list) -> list:
        return batch

    def write(self, batch: list[ShadowPrediction]) -> int:
        new = 0
        for p in batch:
            key = (p.id, p.model, p.model_version)
            if key not in self.rows:
                self.rows[key], new = p, new + 1
        return new

    def close(self) -> None:
        pass


def test_the_shadow_runner_stores_a_redelivery_once_and_dead_letters_a_plain_prediction():
    from fakes import FakeConsumer, FakeLetterBox, kafka_message

    from schemas.messages import ErrorKind
    from schemas.settings import Settings
    from streams.sinks.run import shadow_runner

    one = shadow("1").to_bytes()
    plain = shadow("2").model_dump_json(exclude={"live_version"}).encode()  # a live prediction on the wrong topic
    batch = [kafka_message(v, offset, topic="s.topic") for offset, v in enumerate([one, one, plain])]
    consumer, letters, table = FakeConsumer([batch]), FakeLetterBox(), ShadowTable()
    runner = shadow_runner(Settings(sink_group="g", topic_shadow="s.topic"), sink=table, consumer=consumer,
                           producer=letters)  # type: ignore[arg-type]
    assert (runner.topic, runner.group) == ("s.topic", "g-shadow")
    assert runner.step() == 3
    assert list(table.rows) == [("1", "m", "v2")]
    assert (runner.stats.stored, runner.stats.duplicates) == (1, 1)
    [letter] = letters.letters
    assert letter.error_kind is ErrorKind.WRONG_TYPE and "not a valid shadow prediction" in letter.reason
    assert consumer.commits == 1
