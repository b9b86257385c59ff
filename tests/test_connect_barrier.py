"""Barrier definitions and the adaptive search for a path's worst point, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossmap.connect import barriers, entezari_barrier, frankle_barrier, locate_max
from lossmap.errors import LossmapError


def test_hand_made_curve_closed_forms():
    # L(α) = 1 + 2α + 8α(1 − α): L(A) = 1, L(B) = 3. Entezari: the excess over the chord is 8α(1 − α),
    # largest (2) at α = ½. Frankle: L(α) − 2 = 2α − 1 + 8α(1 − α), whose derivative 10 − 16α vanishes
    # at α = 5/8, where it is 1/4 + 15/8 = 17/8.
    alphas = np.linspace(0, 1, 41)
    values = 1 + 2 * alphas + 8 * alphas * (1 - alphas)
    res = barriers(alphas, values)
    assert res.entezari == pytest.approx(2.0, abs=1e-12) and res.entezari_alpha == pytest.approx(0.5)
    assert res.frankle == pytest.approx(17 / 8, abs=1e-12) and res.frankle_alpha == pytest.approx(5 / 8)
    assert (res.value_a, res.value_b) == (1.0, 3.0)


def test_error_barrier_on_a_step_path():
    # errors 10 %, 10 %, 90 %, 30 %, 20 % at α = 0, ¼, ½, ¾, 1
    alphas, errors = [0, 0.25, 0.5, 0.75, 1], [0.1, 0.1, 0.9, 0.3, 0.2]
    assert frankle_barrier(alphas, errors) == pytest.approx((0.9 - 0.15, 0.5))
    assert entezari_barrier(alphas, errors) == pytest.approx((0.9 - 0.15, 0.5))
    # with given endpoint values, and α outside [0, 1] ignored
    h, at = entezari_barrier([-0.5, 0, 0.5, 1, 1.5], [9.0, 0.0, 1.0, 2.0, 9.0], value_a=0.0, value_b=2.0)
    assert (h, at) == (0.0, 0.0)


def _logistic_loss(w, x, y):
    z = x @ w
    return float(np.mean(np.logaddexp(0.0, -y * z)))


def test_convex_logistic_regression_has_no_entezari_barrier():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), rng.choice([-1.0, 1.0], size=200)
    wa, wb = rng.normal(size=5), 3 * rng.normal(size=5)
    evaluate = lambda al: np.array([_logistic_loss((1 - a) * wa + a * wb, x, y) for a in al])  # noqa: E731
    peak = locate_max(evaluate, np.linspace(0, 1, 25), refine_rounds=6, score="entezari")
    res = barriers(peak.alphas, peak.values)
    la, lb = res.value_a, res.value_b
    assert abs(la - lb) > 0.1
    # convexity: L(α) ≤ (1 − α)L(A) + αL(B); the endpoints give exactly 0
    assert abs(res.entezari) <= 1e-12
    assert res.frankle <= abs(la - lb) / 2 + 1e-12
    assert res.frankle == pytest.approx(abs(la - lb) / 2, abs=1e-12)  # reached at the worse endpoint


def test_narrow_peak_missed_by_the_grid_is_located():
    center, width = 0.4321, 0.01
    calls = []

    def evaluate(al):
        calls.append(len(al))
        return 0.1 + np.exp(-(((al - center) / width) ** 2))

    grid = np.linspace(0, 1, 25)
    assert evaluate(grid).max() < 0.3  # the grid sees less than a fifth of the peak
    peak = locate_max(evaluate, grid, refine_rounds=12)
    assert peak.alpha == pytest.approx(center, abs=1e-4)
    assert peak.score == pytest.approx(1.1, abs=1e-6)
    assert sum(calls[1:]) - 25 <= 3 * 12  # at most three new points per round
    assert np.all(np.diff(peak.alphas) > 0)


def test_two_column_values_and_column_choice():
    evaluate = lambda al: np.stack([np.sin(np.pi * al), -((al - 0.8) ** 2)], axis=1)  # noqa: E731
    first = locate_max(evaluate, np.linspace(0, 1, 5), refine_rounds=30)
    second = locate_max(evaluate, np.linspace(0, 1, 5), refine_rounds=30, column=1)
    assert first.alpha == pytest.approx(0.5, abs=1e-5) and second.alpha == pytest.approx(0.8, abs=1e-5)
    assert first.values.shape == (first.alphas.size, 2)


def test_bad_input_is_refused_with_one_line():
    for call in (
        lambda: locate_max(lambda a: a, [0.5]),
        lambda: barriers([0.5], [1.0]),
        lambda: barriers([0.2, 0.5], [1.0, 2.0]),  # no α = 0: L(A) unknown
        lambda: locate_max(lambda a: a[:1], [0, 1]),
        lambda: locate_max(lambda a: a, [0, 1], score="median"),
    ):
        with pytest.raises(LossmapError) as err:
            call()
        assert "\n" not in str(err.value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12))
def test_barriers_match_a_plain_loop(values):
    alphas = np.linspace(0, 1, len(values))
    la, lb = values[0], values[-1]
    fr = max(v - 0.5 * (la + lb) for v in values)
    en = max(v - ((1 - a) * la + a * lb) for a, v in zip(alphas, values))
    res = barriers(alphas, values)
    assert res.frankle == pytest.approx(fr, abs=1e-9)
    assert res.entezari == pytest.approx(en, abs=1e-9)
    assert res.entezari >= 0 and res.frankle >= abs(la - lb) / 2 - 1e-12
