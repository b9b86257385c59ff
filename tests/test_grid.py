"""Axis specs and grids: properties (hypothesis) and the point order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossmap.errors import LossmapError
from lossmap.grid import Grid, parse_axis

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(lo=finite, width=st.floats(min_value=1e-3, max_value=1e6), count=st.integers(min_value=2, max_value=500))
def test_valid_specs_give_inclusive_even_axes(lo, width, count):
    hi = lo + width
    spec = f"{lo!r}:{hi!r}:{count}"
    axis = parse_axis(spec)
    assert axis.dtype == np.float64 and axis.shape == (count,)
    assert axis[0] == lo and axis[-1] == pytest.approx(hi, rel=1e-12, abs=1e-12)
    assert np.all(np.diff(axis) > 0)
    np.testing.assert_allclose(np.diff(axis), width / (count - 1), rtol=1e-6, atol=1e-9 * max(1.0, abs(lo)))


@given(text=st.text(max_size=30))
@settings(max_examples=300)
def test_any_text_parses_or_raises_lossmap_error(text):
    try:
        axis = parse_axis(text)
    except LossmapError as exc:
        assert str(exc)  # a message, never another exception type
    else:
        assert axis.ndim == 1 and axis.size >= 1 and np.all(np.isfinite(axis))


@given(values=st.lists(finite, min_size=1, max_size=50, unique=True))
def test_sequences_are_taken_as_given_when_increasing(values):
    values = sorted(values)
    np.testing.assert_array_equal(parse_axis(values), np.asarray(values))
    if len(values) > 1:
        with pytest.raises(LossmapError, match="increasing"):
            parse_axis(values[::-1])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "malformed"),
        ("-1:1", "malformed"),
        ("a:1:3", "numbers"),
        ("-1:1:2.5", "whole number"),
        ("-1:1:0", "at least 1"),
        ("1:-1:5", "less than max"),
        ("0:1:1", "min == max"),
        ("nan:1:3", "finite"),
        ([], "non-empty"),
        ([0.0, float("inf")], "non-finite"),
    ],
)
def test_malformed_specs_name_the_problem(spec, message):
    with pytest.raises(LossmapError, match=message):
        parse_axis(spec, "x axis")


def test_single_point_axis():
    np.testing.assert_array_equal(parse_axis("0.5:0.5:1"), [0.5])


def test_non_square_grid_order_and_serpentine():
    g = Grid.from_specs("-1:1:3", "0:1:2")
    assert g.shape == (3, 2) and g.size == 6 and g.ndim == 2
    c = g.coefficients()
    # flat index p = i * ny + j  <->  (x[i], y[j])
    for p, (a, b) in enumerate(c):
        assert (a, b) == (g.x[p // 2], g.y[p % 2])
    order = g.serpentine()
    assert sorted(order.tolist()) == list(range(6))
    steps = np.abs(np.diff(c[order], axis=0))
    assert np.all((steps > 0).sum(axis=1) == 1)  # every step moves along one axis only, to a neighbour
    line = Grid.from_specs("-1:1:4")
    assert line.shape == (4,) and line.serpentine().tolist() == [0, 1, 2, 3]
