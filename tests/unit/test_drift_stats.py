"""The drift statistics of ``retrain.drift.stats`` against direct numpy/scipy computations on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cosine, jensenshannon
from scipy.stats import wasserstein_distance

from retrain.drift import stats as drift
from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES

REF = np.array([30, 25, 20, 15, 10], dtype=float)
CUR = np.array([10, 15, 20, 25, 30], dtype=float)
EDGES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_psi_matches_the_formula_on_known_counts():
    p, q = REF / REF.sum(), CUR / CUR.sum()
    expected = np.sum((p - q) * np.log(p / q))
    assert drift.psi(REF, CUR) == pytest.approx(expected, abs=1e-6)
    assert drift.psi([60, 40], [40, 60]) == pytest.approx(0.4 * math.log(1.5), abs=1e-6)


def test_psi_fills_empty_bins_with_the_documented_epsilon_on_that_side_only():
    ref, cur = np.array([50.0, 50.0, 0.0]), np.array([40.0, 40.0, 20.0])
    p = np.array([0.5, 0.5, drift.PSI_EPSILON])
    q = np.array([0.4, 0.4, 0.2])
    assert drift.psi(ref, cur) == pytest.approx(np.sum((p - q) * np.log(p / q)), abs=1e-6)
    assert math.isfinite(drift.psi([1, 0], [0, 1]))


def test_js_distance_matches_scipy_with_the_natural_log():
    assert drift.js_distance(REF, CUR) == pytest.approx(jensenshannon(REF / REF.sum(), CUR / CUR.sum()), abs=1e-6)
    # natural log: disjoint distributions are sqrt(ln 2) apart
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(math.sqrt(math.log(2)), abs=1e-6)


def test_js_distance_handles_empty_bins_without_epsilon():
    ref, cur = [5, 5, 0, 10], [0, 5, 5, 10]
    assert drift.js_distance(ref, cur) == pytest.approx(jensenshannon(np.array(ref) / 20, np.array(cur) / 20), abs=1e-6)


def test_wasserstein_norm_equals_scipy_on_the_expanded_samples():
    centres = drift.bin_centres(EDGES)
    ref_rows = np.repeat(centres, REF.astype(int))
    cur_rows = np.repeat(centres, CUR.astype(int))
    expected = wasserstein_distance(ref_rows, cur_rows) / max(np.std(ref_rows), 0.001)
    assert drift.wasserstein_norm(REF, CUR, centres) == pytest.approx(expected, abs=1e-6)


def test_wasserstein_norm_uses_the_floor_for_a_constant_reference():
    centres = drift.bin_centres(EDGES)
    ref, cur = [0, 0, 10, 0, 0], [0, 0, 0, 10, 0]
    assert drift.wasserstein_norm(ref, cur, centres) == pytest.approx(0.2 / 0.001, abs=1e-6)


def test_bin_centres_of_the_reference_edges():
    conf = drift.bin_centres(CONFIDENCE_EDGES)
    assert len(conf) == len(CONFIDENCE_EDGES) - 1
    assert conf[0] == pytest.approx(0.025) and conf[-1] == pytest.approx(0.975)
    lengths = drift.bin_centres([None if math.isinf(e) else e for e in TEXT_LENGTH_EDGES])
    assert lengths[0] == 2.5 and lengths[-1] == 500.0  # the open last bin stands at its lower edge


def test_cosine_distance_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=384), rng.normal(size=384)
    assert drift.cosine_distance(a, b) == pytest.approx(cosine(a, b), abs=1e-6)
    assert drift.cosine_distance(a, 3 * a) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="zero vector"):
        drift.cosine_distance(a, np.zeros(384))


@pytest.mark.parametrize("stat", ["psi", "js", "wasserstein"])
def test_identical_distributions_give_zero(stat):
    centres = drift.bin_centres(EDGES)
    fn = {"psi": drift.psi, "js": drift.js_distance,
          "wasserstein": lambda r, c: drift.wasserstein_norm(r, c, centres)}[stat]
    assert fn(REF, REF) == pytest.approx(0.0, abs=1e-12)
    assert fn(REF, 3 * REF) == pytest.approx(0.0, abs=1e-12)  # counts or shares: the same


def test_mismatched_or_empty_histograms_are_refused():
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one counted row"):
        drift.js_distance([0, 0], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        drift.psi([1, -1], [1, 1])


def test_null_quantile_is_small_for_big_samples_and_large_for_small_ones():
    k = 150
    ref = np.full(k, 5500 / k)
    big = drift.null_quantile(drift.js_distance, ref, np.full(k, 100_000 / k))
    small = drift.null_quantile(drift.js_distance, ref, np.full(k, 200 / k))
    assert big < drift.JS_THRESHOLD < small
    assert drift.null_quantile(drift.js_distance, ref, np.full(k, 200 / k)) == small  # seeded


def test_flag_needs_the_threshold_and_the_noise_floor():
    assert drift.flag(0.15, 0.1, noise=0.05)
    assert not drift.flag(0.15, 0.1, noise=0.2)
    assert not drift.flag(0.05, 0.1, noise=0.01)
    assert drift.flag(0.1, 0.1)
    assert not drift.flag(None, 0.1)


def test_share_shift_gives_the_delta_and_z():
    delta, z = drift.share_shift(0.10, 1000, 0.20, 1000)
    pooled = 0.15
    assert delta == pytest.approx(0.10)
    assert z == pytest.approx(0.10 / math.sqrt(pooled * (1 - pooled) * (2 / 1000)), abs=1e-9)
    assert drift.share_shift(0.0, 100, 0.0, 100) == (0.0, 0.0)


def test_centroid_noise_floor_shrinks_with_more_rows():
    c = np.full(384, 0.27 / math.sqrt(384))
    few, many = drift.centroid_noise_floor(c, 5500, 50), drift.centroid_noise_floor(c, 5500, 50_000)
    assert 0 < many < few < 1
    assert many < drift.COSINE_THRESHOLD
