"""Summary numbers against closed forms on synthetic quadratic landscapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from lossmap import stats, store
from lossmap.errors import LossmapError


def bowl(a=2.0, b=0.5, c=0.0, x=np.linspace(-1, 1, 201), y=np.linspace(-1, 1, 201)):
    """loss = c + a·x² + b·y² (2-D) or c + a·x² (y=None) as a lossmap landscape."""
    x = np.asarray(x, dtype=np.float64)
    if y is None:
        loss = c + a * x**2
        return xr.Dataset(
            {"loss": (("x",), loss), "accuracy": (("x",), 1 - loss / loss.max())},
            coords={"x": x},
            attrs={"lossmap_format": store.FORMAT, "lossmap_format_version": 1, "ndim": 1, "metrics": '["loss", "accuracy"]'},
        )
    y = np.asarray(y, dtype=np.float64)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    loss = c + a * xx**2 + b * yy**2
    return xr.Dataset(
        {"loss": (("x", "y"), loss), "accuracy": (("x", "y"), 1 - loss / loss.max())},
        coords={"x": x, "y": y},
        attrs={"lossmap_format": store.FORMAT, "lossmap_format_version": 1, "ndim": 2, "metrics": '["loss", "accuracy"]'},
    )


def test_rise_radius_matches_sqrt_rise_over_curvature():
    a, b, rise = 2.0, 0.5, 0.2
    s = stats.summarize(bowl(a, b), rise=rise)
    # linear interpolation of a parabola between grid points (h = 0.01) errs by at most a·h²/4 / slope
    assert s["rise_radius_xpos"] == pytest.approx(math.sqrt(rise / a), abs=2e-4)
    assert s["rise_radius_xneg"] == pytest.approx(math.sqrt(rise / a), abs=2e-4)
    assert s["rise_radius_ypos"] == pytest.approx(math.sqrt(rise / b), abs=2e-4)
    assert s["rise_radius_yneg"] == pytest.approx(math.sqrt(rise / b), abs=2e-4)
    assert s["centre"] == 0.0 and s["centre_x"] == 0.0 and s["centre_y"] == 0.0
    assert s["min"] == 0.0 and s["max"] == pytest.approx(a + b)
    assert (s["argmin_x"], s["argmin_y"]) == (0.0, 0.0)


def test_rise_radius_is_interpolated_not_snapped_to_grid():
    # coarse grid (h = 0.25): a grid-snapped answer would be 0.5 or 0.75, the interpolated one lies between
    s = stats.summarize(bowl(1.0, 1.0, x=np.linspace(-1, 1, 9), y=np.linspace(-1, 1, 9)), rise=0.36)
    # between x=0.5 (0.25) and 0.75 (0.5625): 0.5 + (0.36-0.25)/(0.3125)·0.25
    assert s["rise_radius_xpos"] == pytest.approx(0.5 + 0.11 / 0.3125 * 0.25, rel=1e-12)


def test_default_rise_is_a_tenth_of_one_plus_centre():
    s = stats.summarize(bowl(4.0, 1.0, c=1.5))
    assert s["rise"] == pytest.approx(0.1 * 2.5)
    assert s["rise_radius_xpos"] == pytest.approx(math.sqrt(0.25 / 4.0), abs=2e-4)
    assert s["centre"] == pytest.approx(1.5)


def test_rise_never_reached_is_nan_and_asymmetric_landscape():
    x = np.linspace(-1, 1, 201)
    ds = bowl(1.0, 1.0, x=x, y=x)
    ds["loss"] = ds.loss.where(ds.x >= 0, 0.0)  # flat for x < 0
    s = stats.summarize(ds, rise=0.25)
    assert math.isnan(s["rise_radius_xneg"])
    assert s["rise_radius_xpos"] == pytest.approx(0.5, abs=2e-4)


def test_nan_before_rise_gives_nan_and_inf_counts_as_exceeded():
    x = np.linspace(-1, 1, 21)
    ds = bowl(1.0, 1.0, x=x, y=x)
    loss = ds.loss.values.copy()
    loss[12, 10] = np.nan  # x = 0.2 on the centre row, before x² reaches 0.5
    loss[10, 13] = np.inf  # y = 0.3
    ds["loss"] = (("x", "y"), loss)
    s = stats.summarize(ds, rise=0.5)
    assert math.isnan(s["rise_radius_xpos"])
    assert s["rise_radius_ypos"] == pytest.approx(0.3)
    assert s["rise_radius_yneg"] == pytest.approx(math.sqrt(0.5), abs=3e-3)
    assert s["max"] == pytest.approx(2.0)  # finite only


def test_ball_mean_matches_disc_average():
    a, b = 2.0, 0.5
    s = stats.summarize(bowl(a, b))
    r = 0.5  # half of the half-width 1
    assert s["ball_radius"] == r
    # continuous disc average of a·x²+b·y² is (a+b)·r²/4 = 0.15625; a factor-2 error is far outside
    assert s["ball_mean_increase"] == pytest.approx((a + b) * r**2 / 4, rel=0.02)
    assert s["ball_points"] == pytest.approx(math.pi * (r / 0.01) ** 2, rel=0.02)


def test_ball_mean_1d_and_explicit_radius_and_offset_centre():
    # interpolation-style axis [-0.5, 1.5]: centre at 0, radius given
    x = np.linspace(-0.5, 1.5, 2001)
    s = stats.summarize(bowl(3.0, c=0.7, x=x, y=None), radius=0.3)
    assert s["centre"] == pytest.approx(0.7)
    assert s["ball_mean_increase"] == pytest.approx(3.0 * 0.3**2 / 3, rel=0.01)
    assert "rise_radius_ypos" not in s and "centre_y" not in s
    assert s["rise_radius_xpos"] == pytest.approx(math.sqrt(0.1 * 1.7 / 3.0), abs=1e-5)


def test_centre_is_nearest_grid_point_to_origin_and_argmin_elsewhere():
    x = np.linspace(-1, 1, 10)  # no exact 0: nearest is ±0.111
    ds = bowl(1.0, 1.0, x=x, y=x)
    ds["loss"] = ((ds.x - 0.78) ** 2 + (ds.y + 0.56) ** 2).transpose("x", "y")
    s = stats.summarize(ds)
    assert abs(s["centre_x"]) == pytest.approx(1 / 9) and abs(s["centre_y"]) == pytest.approx(1 / 9)
    z = ds.loss.values
    i, j = np.unravel_index(np.argmin(z), z.shape)
    assert (s["argmin_x"], s["argmin_y"]) == (x[i], x[j])


def test_attach_writes_flat_prefixed_attrs_that_survive_a_file(tmp_path):
    ds = bowl(2.0, 0.5)
    ds.attrs["summary_stale"] = 1.0
    out = stats.attach(ds, rise=0.2)
    assert out is ds
    assert "summary_stale" not in ds.attrs
    assert ds.attrs["summary_metric"] == "loss"
    assert ds.attrs["summary_rise_radius_xpos"] == pytest.approx(math.sqrt(0.1), abs=2e-4)
    back = store.load(store.save(ds, tmp_path / "s.nc"))
    assert back.attrs["summary_ball_mean_increase"] == pytest.approx(ds.attrs["summary_ball_mean_increase"])
    assert back.attrs["summary_rise_radius_xpos"] == pytest.approx(math.sqrt(0.1), abs=2e-4)


def test_bad_arguments_raise_lossmap_error():
    ds = bowl(1.0, 1.0, x=np.linspace(-1, 1, 5), y=np.linspace(-1, 1, 5))
    with pytest.raises(LossmapError, match="'nope'"):
        stats.summarize(ds, metric="nope")
    with pytest.raises(LossmapError, match="rise"):
        stats.summarize(ds, rise=-1)


def test_require_comparable_names_the_differing_grid():
    a = bowl(x=np.linspace(-1, 1, 5), y=np.linspace(-1, 1, 5))
    b = bowl(x=np.linspace(-1, 1, 7), y=np.linspace(-1, 1, 5))
    stats.require_comparable([a, a.copy()], ["a", "b"])
    with pytest.raises(LossmapError, match=r"b has a different x grid \(-1:1:7\)"):
        stats.require_comparable([a, b], ["a", "b"])
    with pytest.raises(LossmapError, match="1-D"):
        stats.require_comparable([a, bowl(y=None, x=np.linspace(-1, 1, 5))], ["a", "c"])
    with pytest.raises(LossmapError, match="metrics"):
        stats.require_comparable([a, a.drop_vars("accuracy")], ["a", "d"])


def test_require_same_grid_is_public_and_leaves_the_metrics_alone():
    """The grid check alone (what a figure of one metric needs) is part of the module's public names."""
    assert "require_same_grid" in stats.__all__
    a = bowl(x=np.linspace(-1, 1, 5), y=np.linspace(-1, 1, 5))
    stats.require_same_grid([a, a.drop_vars("accuracy")], ["a", "d"])
    with pytest.raises(LossmapError, match="x grid"):
        stats.require_same_grid([a, bowl(x=np.linspace(-1, 1, 7), y=np.linspace(-1, 1, 5))], ["a", "b"])


def test_table_lists_every_number_per_landscape():
    s1 = stats.summarize(bowl(2.0, 0.5, x=np.linspace(-1, 1, 21), y=np.linspace(-1, 1, 21)))
    s2 = stats.summarize(bowl(1.0, 0.5, x=np.linspace(-1, 1, 21), y=np.linspace(-1, 1, 21)))
    text = stats.table([s1, s2], ["sgd", "adam"])
    lines = text.splitlines()
    assert lines[0].split() == ["sgd", "adam"]
    row = next(line for line in lines if line.startswith("max "))
    assert row.split()[1:] == ["2.5", "1.5"]


_GRID = np.linspace(-1, 1, 201)


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.5, 5.0), b=st.floats(0.5, 5.0), c=st.floats(0.0, 3.0), rise=st.floats(0.05, 0.4),
       radius=st.floats(0.2, 0.9))
def test_closed_forms_hold_for_any_bowl(a, b, c, rise, radius):
    s = stats.summarize(bowl(a, b, c, x=_GRID, y=_GRID), rise=rise, radius=radius)
    assert s["centre"] == pytest.approx(c)
    for key, curv in (("rise_radius_xpos", a), ("rise_radius_xneg", a), ("rise_radius_ypos", b), ("rise_radius_yneg", b)):
        # the threshold is reached inside the grid when rise/curvature < 1; interpolation error ≤ h²/(8r)
        assert s[key] == pytest.approx(math.sqrt(rise / curv), abs=2e-4)
    assert s["ball_mean_increase"] == pytest.approx((a + b) * radius**2 / 4, rel=0.03)


def test_table_orders_mixed_1d_and_2d_keys_canonically():
    one = stats.summarize(bowl(1.0, x=np.linspace(-1, 1, 11), y=None))
    two = stats.summarize(bowl(1.0, 1.0, x=np.linspace(-1, 1, 11), y=np.linspace(-1, 1, 11)))
    assert list(two) == [k for k in stats.KEYS]  # summarize itself follows KEYS
    rows = [line.split()[0] for line in stats.table([one, two], ["line", "plane"]).splitlines()[1:]]
    assert rows == list(stats.KEYS)


def test_caveats_name_the_differing_settings():
    a = bowl(x=np.linspace(-1, 1, 5), y=np.linspace(-1, 1, 5))
    b = a.copy()
    a.attrs.update(normalization="filter", seed=3, data="digits:test")
    b.attrs = {**a.attrs, "normalization": "none"}
    assert stats.caveats([a, a.copy()], ["a", "b"]) == []
    assert stats.caveats([a, b], ["sgd", "adam"]) == ["the landscapes differ in normalization (sgd: filter, adam: none)"]
