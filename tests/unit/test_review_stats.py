"""The progress panel's estimators: weighted live accuracy with Wilson's interval, Cohen's kappa, the panel per head."""

import math

import pytest

from streams.review.progress import head_progress
from streams.review.stats import confidence_words, rater_agreement, weighted_accuracy, wilson


def test_wilson_matches_the_textbook_values():
    low, high = wilson(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson(1.0, 10)  # all right: the interval stays below 1 and does not collapse
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)


def test_equal_weights_give_the_plain_proportion_and_n_as_the_effective_size():
    est = weighted_accuracy([(True, 50.0)] * 8 + [(False, 50.0)] * 2)
    assert est["estimate"] == pytest.approx(0.8) and est["n"] == 10 and est["n_eff"] == pytest.approx(10)
    assert (est["low"], est["high"]) == pytest.approx(wilson(0.8, 10))


def test_unequal_weights_weigh_each_item_by_how_many_answers_it_stands_for():
    # one right answer drawn at rate 1/100 and one wrong drawn at rate 1/50
    est = weighted_accuracy([(True, 100.0), (False, 50.0)])
    assert est["estimate"] == pytest.approx(100 / 150)
    assert est["n_eff"] == pytest.approx(150 ** 2 / (100 ** 2 + 50 ** 2))
    assert est["low"] < est["estimate"] < est["high"]


def test_no_random_slice_answers_give_no_estimate_and_a_bad_weight_is_refused():
    assert weighted_accuracy([])["estimate"] is None
    with pytest.raises(ValueError, match="positive"):
        weighted_accuracy([(True, 0.0)])


def test_cohens_kappa_on_a_known_table():
    # 2x2 table: both yes 20, both no 15, (yes, no) 5, (no, yes) 10; p_o = 0.7, p_e = 0.5
    pairs = [("y", "y")] * 20 + [("n", "n")] * 15 + [("y", "n")] * 5 + [("n", "y")] * 10
    out = rater_agreement(pairs)
    assert out["n"] == 50 and out["agreement"] == pytest.approx(0.7)
    assert out["kappa"] == pytest.approx((0.7 - 0.5) / 0.5)


def test_kappa_is_undefined_when_both_always_give_one_label_and_none_without_pairs():
    assert rater_agreement([("a", "a")] * 3) == {"n": 3, "agreement": 1.0, "kappa": None}
    assert rater_agreement([])["kappa"] is None


def test_confidence_is_words_never_a_number():
    words = {confidence_words(p, m) for p, m in ((0.99, 0.9), (0.8, 0.4), (0.5, 0.2), (0.4, 0.02))}
    assert words == {"very sure", "fairly sure", "unsure", "torn between two labels"}
    assert not any(ch.isdigit() for w in words for ch in w)


def _row(item, reviewer, outcome, answer, suggestion="a", reasons=("margin",), random_slice=False, weight=None,
         double=False, version=0):
    return {"item_id": item, "reviewer": reviewer, "outcome": outcome, "answer": answer, "label_set_version": version,
            "suggestion": suggestion, "reasons": list(reasons), "random_slice": random_slice,
            "sampling_weight": weight, "double_review": double}


def test_head_progress_counts_agreement_per_reason_the_random_slice_once_per_item_and_expert_pairs():
    rows = [
        _row("1", "ann", "label", "a", reasons=("random",), random_slice=True, weight=50.0, double=True),
        _row("1", "ben", "label", "b", reasons=("random",), random_slice=True, weight=50.0, double=True),
        _row("2", "ann", "label", "b", reasons=("margin", "oos")),
        _row("3", "ann", "skip", None),
        _row("4", "ann", "label", "a_new", version=1),  # given after a rename of a -> a_new: agrees
    ]
    relabel = lambda label, v: "a_new" if label == "a" and (v or 0) < 1 else label  # noqa: E731
    out = head_progress(rows, relabel)
    assert out["n_answers"] == 5 and out["outcomes"] == {"label": 4, "skip": 1}
    assert out["model_agreement"] == {"n": 4, "agreement": 0.5}
    assert out["by_reason"]["oos"] == {"n": 1, "agreement": 0.0}
    assert out["by_reason"]["random"] == {"n": 2, "agreement": 0.5}
    assert out["live_accuracy"]["n"] == 1 and out["live_accuracy"]["estimate"] == 1.0  # ann's, the first answer
    assert out["experts"]["n"] == 1 and out["experts"]["agreement"] == 0.0
    assert not math.isnan(out["live_accuracy"]["low"])
