"""Static figures: orientation, colour scales, levels, clipping, masking and files, checked against numbers
computed here from the synthetic data (not from the plotting code)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import QuadMesh
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from lossmap.errors import LossmapError
from lossmap.plot import (
    plot_all,
    plot_compare,
    plot_contour,
    plot_heatmap,
    plot_line,
    plot_surface,
    robust_upper,
    save_figure,
)
from lossmap.plot.static import figure_stem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _attrs(ndim, markers, kind="random", **extra):
    return dict(
        lossmap_format="lossmap.landscape", lossmap_format_version=1, ndim=ndim,
        metrics=json.dumps(["loss", "accuracy"]), directions_kind=kind, normalization="filter",
        markers=json.dumps(markers), x_label="α (δ: random, filter-normalized)",
        y_label="β (η: random, filter-normalized)", **extra,
    )


def bowl(nan_inf=True, scale=1.0):
    """Quadratic bowl on a non-square, non-uniform grid (x: 13 points, y: 7 points)."""
    x = np.concatenate([np.linspace(-1.0, 0.0, 9)[:-1], np.linspace(0.0, 1.0, 5)])  # finer on the left
    y = np.linspace(-0.5, 0.5, 7)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = scale * (0.1 + 2.0 * X**2 + 6.0 * Y**2)
    if nan_inf:
        loss[2, 1] = np.nan
        loss[10, 5] = np.inf
        loss[0, 0] = 1e6  # one exploding rim point
    acc = np.clip(1.0 - loss / 4.0, 0.0, 1.0)
    ds = xr.Dataset({"loss": (("x", "y"), loss), "accuracy": (("x", "y"), acc)}, coords={"x": x, "y": y})
    ds.attrs = _attrs(2, {"θ*": [0.0, 0.0]})
    return ds


def linear_x(values_along="x"):
    """loss = x (or y) on a non-square grid: a test of which way the data is drawn."""
    x = np.linspace(-1.0, 1.0, 9)
    y = np.linspace(-0.4, 0.4, 5)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = X.copy() if values_along == "x" else Y.copy()
    ds = xr.Dataset({"loss": (("x", "y"), loss)}, coords={"x": x, "y": y})
    ds.attrs = _attrs(2, {})
    ds.attrs["metrics"] = json.dumps(["loss"])
    return ds


def interpolation():
    x = np.linspace(-0.5, 1.5, 21)
    loss = 2.3 * (1 - x) ** 2 + 0.02
    loss[3] = np.nan
    loss[17] = np.inf
    acc = np.clip(1 - loss / 2.5, 0.1, 1.0)
    ds = xr.Dataset({"loss": ("x", loss), "accuracy": ("x", acc)}, coords={"x": x})
    ds.attrs = _attrs(1, {"A": [0.0], "B": [1.0]}, kind="target")
    ds.attrs["x_label"] = "α (A → B)"
    return ds


def _contour_sets(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet)]


def _mesh(ax):
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh


def _midpoint_edges(c):
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _finite(a):
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


# ------------------------------------------------------------------------------------------ orientation


@pytest.mark.parametrize("stored_order", [("x", "y"), ("y", "x")])
def test_heatmap_draws_x_horizontally_with_midpoint_edges(stored_order):
    ds = linear_x()
    ds["loss"] = ds["loss"].transpose(*stored_order)
    fig, ax = plot_heatmap(ds)
    mesh = _mesh(ax)
    arr = np.asarray(mesh.get_array())
    x, y = ds.x.values, ds.y.values
    assert arr.shape == (y.size, x.size)  # rows are y, columns are x
    np.testing.assert_array_equal(arr, np.broadcast_to(x, (y.size, x.size)))
    coords = mesh.get_coordinates()
    np.testing.assert_allclose(coords[0, :, 0], _midpoint_edges(x), atol=1e-15)
    np.testing.assert_allclose(coords[:, 0, 1], _midpoint_edges(y), atol=1e-15)


def test_heatmap_cell_edges_follow_a_non_uniform_grid():
    ds = bowl(nan_inf=False)
    _, ax = plot_heatmap(ds)
    coords = _mesh(ax).get_coordinates()
    expected = _midpoint_edges(ds.x.values)
    np.testing.assert_allclose(coords[0, :, 0], expected, atol=1e-15)
    assert np.ptp(np.diff(expected)) > 0.05  # the test grid really is non-uniform


@pytest.mark.parametrize("along", ["x", "y"])
def test_contour_lines_of_a_linear_field_are_perpendicular_to_its_axis(along):
    ds = linear_x(along)
    levels = [-0.3, 0.0, 0.2]
    _, ax = plot_contour(ds, levels=levels)
    (cs,) = _contour_sets(ax)
    np.testing.assert_array_equal(cs.levels, levels)
    k, other = (0, 1) if along == "x" else (1, 0)
    other_coord = ds.y.values if along == "x" else ds.x.values
    for level, path in zip(levels, cs.get_paths()):
        v = path.vertices
        assert len(v) >= 2
        np.testing.assert_allclose(v[:, k], level, atol=1e-12)  # loss = x  ⇒  a vertical line at x = level
        assert v[:, other].min() == pytest.approx(other_coord.min())
        assert v[:, other].max() == pytest.approx(other_coord.max())


def test_surface_orientation_x_then_y():
    ds = linear_x("x")
    _, ax = plot_surface(ds, vmin=-1.0, vmax=1.0)
    (surf,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    # faces are averaged corner heights of loss = x: every face value is the midpoint of a cell in x
    mids = (ds.x.values[1:] + ds.x.values[:-1]) / 2
    faces = np.asarray(surf.get_array())
    assert faces.size == (ds.x.size - 1) * (ds.y.size - 1)
    # rows of faces run along x (the surface is built row by row over y)
    np.testing.assert_allclose(faces.reshape(ds.y.size - 1, ds.x.size - 1), np.broadcast_to(mids, (4, 8)), atol=1e-12)
    assert ax.get_xlim3d()[0] <= -1.0 and ax.get_ylim3d()[1] >= 0.4


# ------------------------------------------------------------------------------------------ levels / scales


def test_default_linear_levels_span_min_to_robust_upper():
    ds = bowl()
    _, ax = plot_contour(ds)
    (cs,) = _contour_sets(ax)
    finite = _finite(ds.loss.values)
    lo, hi = finite.min(), np.percentile(finite, 95)
    assert hi < 1e6  # the exploding point is excluded from the range
    assert cs.levels[0] >= lo - 1e-12 and cs.levels[-1] <= hi + 1e-12
    assert cs.levels[-1] > lo + 0.8 * (hi - lo)  # the levels cover most of the range
    steps = np.diff(cs.levels)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    assert 8 <= len(cs.levels) <= 16


def test_levels_count_and_list():
    ds = bowl()
    _, ax = plot_contour(ds, levels=[0.5, 1.0, 2.0])
    np.testing.assert_array_equal(_contour_sets(ax)[0].levels, [0.5, 1.0, 2.0])
    _, ax = plot_contour(ds, levels=6, log=True)
    assert len(_contour_sets(ax)[0].levels) == 6


def test_log_levels_are_geometric_and_non_positive_values_are_floored():
    ds = bowl()
    loss = ds.loss.values.copy()
    loss[5, 3] = 0.0
    loss[6, 3] = -0.2
    ds["loss"] = (("x", "y"), loss)
    _, ax = plot_contour(ds, log=True, levels=9)
    (cs,) = _contour_sets(ax)
    lv = np.asarray(cs.levels)
    ratios = lv[1:] / lv[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)
    finite = _finite(loss)
    floor = finite[finite > 0].min()
    assert lv[0] == pytest.approx(floor, rel=1e-12)
    # the floored values take part in the percentile, exactly as documented
    assert lv[-1] == pytest.approx(np.percentile(np.maximum(finite, floor), 95), rel=1e-12)
    assert cs.norm.vmin == pytest.approx(floor) and type(cs.norm).__name__ == "LogNorm"


def test_heatmap_norm_and_masking():
    ds = bowl()
    _, ax = plot_heatmap(ds, vmin=0.2, vmax=3.0)
    mesh = _mesh(ax)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0.2, 3.0)
    arr = mesh.get_array()
    mask = np.ma.getmaskarray(arr)
    assert mask.shape == (7, 13)
    assert mask[1, 2] and mask[5, 10]  # NaN at (x=2, y=1), inf at (x=10, y=5), stored transposed
    assert mask.sum() == 2
    assert fig_has_colorbar(ax.figure)


def fig_has_colorbar(fig):
    return any(a.get_label() == "<colorbar>" for a in fig.axes)


def test_accuracy_uses_its_full_range():
    ds = bowl()
    _, ax = plot_heatmap(ds, metric="accuracy")
    finite = _finite(ds.accuracy.values)
    assert (_mesh(ax).norm.vmin, _mesh(ax).norm.vmax) == (finite.min(), finite.max())


def test_robust_upper_is_the_95th_percentile_of_finite_values():
    v = np.array([np.nan, np.inf, -np.inf] + list(range(101)), dtype=float)
    assert robust_upper(v) == pytest.approx(95.0)
    assert robust_upper(np.array([2.0] * 30 + [5.0])) == 5.0  # percentile equal to the minimum → maximum


# ------------------------------------------------------------------------------------------ surface


def test_surface_clip_bounds_the_drawn_heights():
    ds = bowl()
    finite = _finite(ds.loss.values)
    bound = np.percentile(finite, 95)
    fig, ax = plot_surface(ds)
    (surf,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    faces = _finite(surf.get_array())
    assert finite.max() > bound  # there is something to clip
    assert faces.max() <= bound + 1e-12
    assert ax.get_zlim()[1] == pytest.approx(bound)
    assert fig_has_colorbar(fig)

    _, ax = plot_surface(ds, vmax=1.0)
    (surf,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    assert _finite(surf.get_array()).max() == pytest.approx(1.0)


def test_surface_log_draws_log10_heights():
    ds = bowl(nan_inf=False)
    _, ax = plot_surface(ds, log=True, vmin=0.1, vmax=10.0)
    (surf,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    faces = _finite(surf.get_array())
    assert faces.min() >= np.log10(0.1) - 1e-12 and faces.max() <= 1.0 + 1e-12
    assert ax.get_zlim() == pytest.approx((-1.0, 1.0))


def test_surface_rejects_a_flat_axes():
    fig = Figure()
    with pytest.raises(LossmapError, match="3-D axes"):
        plot_surface(bowl(), ax=fig.add_subplot())


# ------------------------------------------------------------------------------------------ lines


def test_line_1d_loss_accuracy_and_markers():
    ds = interpolation()
    fig, ax = plot_line(ds)
    (loss_line,) = [ln for ln in ax.lines if ln.get_label() == "loss"]
    expected = ds.loss.values.copy()
    expected[~np.isfinite(expected)] = np.nan
    np.testing.assert_array_equal(loss_line.get_xdata(), ds.x.values)
    np.testing.assert_array_equal(loss_line.get_ydata(), expected)
    twins = [a for a in fig.axes if a is not ax and a.get_ylabel() == "accuracy"]
    assert len(twins) == 1
    (acc_line,) = twins[0].lines
    np.testing.assert_array_equal(acc_line.get_ydata(), ds.accuracy.values)
    vlines = sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_label() != "loss")
    assert vlines == [0.0, 1.0]
    fig.draw_without_rendering()
    (top,) = ax.child_axes  # model names on a top axis, clear of the curves
    assert [t.get_text() for t in top.get_xticklabels()] == ["A", "B"]
    np.testing.assert_array_equal(top.get_xticks(), [0.0, 1.0])
    assert ax.get_xlabel() == "α (A → B)"
    assert "interpolation" in ax.get_title()


def test_line_log_floors_non_positive_values():
    ds = interpolation()
    loss = ds.loss.values.copy()
    loss[0] = 0.0
    ds["loss"] = ("x", loss)
    _, ax = plot_line(ds, log=True, metrics=["loss"])
    assert ax.get_yscale() == "log"
    y = np.asarray(ax.lines[0].get_ydata())
    floor = _finite(loss)[_finite(loss) > 0].min()
    assert y[0] == floor


def test_line_2d_draws_the_two_central_cross_sections():
    ds = bowl()
    _, ax = plot_line(ds, metrics=["loss"])
    solid, dashed = ax.lines[0], ax.lines[1]
    row = ds.loss.sel(y=0.0, method="nearest").values.copy()
    col = ds.loss.sel(x=0.0, method="nearest").values.copy()
    row[~np.isfinite(row)] = np.nan
    col[~np.isfinite(col)] = np.nan
    np.testing.assert_array_equal(solid.get_xdata(), ds.x.values)
    np.testing.assert_array_equal(solid.get_ydata(), row)
    np.testing.assert_array_equal(dashed.get_xdata(), ds.y.values)
    np.testing.assert_array_equal(dashed.get_ydata(), col)


# ------------------------------------------------------------------------------------------ compare


@pytest.mark.parametrize("kind", ["contour", "contourf"])
def test_compare_shares_levels_and_norm(kind):
    a, b = bowl(), bowl(scale=3.0)
    fig = plot_compare([a, b], titles=["small", "large"], kind=kind)
    sets = [cs for ax in fig.axes for cs in _contour_sets(ax) if cs.filled == (kind == "contourf")]
    assert len(sets) == 2
    np.testing.assert_array_equal(sets[0].levels, sets[1].levels)
    assert (sets[0].norm.vmin, sets[0].norm.vmax) == (sets[1].norm.vmin, sets[1].norm.vmax)
    pooled = np.concatenate([_finite(a.loss.values), _finite(b.loss.values)])
    assert sets[0].levels[0] >= pooled.min() - 1e-12
    assert sets[0].levels[-1] <= np.percentile(pooled, 95) + 1e-12
    assert sets[0].levels[-1] > 0.8 * np.percentile(pooled, 95)
    assert sum(a.get_label() == "<colorbar>" for a in fig.axes) == 1


def test_compare_heatmaps_share_one_norm():
    a, b = bowl(), bowl(scale=3.0)
    fig = plot_compare([a, b], kind="heatmap", log=True)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    meshes = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 2
    pooled = np.concatenate([_finite(a.loss.values), _finite(b.loss.values)])
    for m in meshes:
        assert m.norm.vmin == pooled.min()
        assert m.norm.vmax == pytest.approx(np.percentile(pooled, 95))


def test_compare_1d_overlays_curves():
    a, b = interpolation(), interpolation()
    b["loss"] = b.loss * 2
    fig = plot_compare([a, b], titles=["run 1", "run 2"])
    (ax,) = fig.axes[:1]
    curves = [ln for ln in ax.lines if ln.get_label() in ("run 1", "run 2")]
    assert len(curves) == 2
    np.testing.assert_allclose(np.asarray(curves[1].get_ydata()), np.asarray(curves[0].get_ydata()) * 2)


def test_compare_rejects_different_grids_and_metrics():
    a = bowl()
    b = bowl().assign_coords(x=bowl().x.values * 1.01)
    with pytest.raises(LossmapError, match="different x grid"):
        plot_compare([a, b])
    c = bowl().isel(y=slice(0, 6))
    with pytest.raises(LossmapError, match="different y grid"):
        plot_compare([a, c])
    d = bowl().drop_vars("accuracy")
    with pytest.raises(LossmapError, match=r"metric .accuracy. is not in landscape 2 \(it has loss\)"):
        plot_compare([a, d], metric="accuracy")
    with pytest.raises(LossmapError, match="same kind"):
        plot_compare([a, interpolation()])
    with pytest.raises(LossmapError, match="kind"):
        plot_compare([a, a], kind="pie")


# ------------------------------------------------------------------------------------------ errors


def _all_nan(ds):
    ds = ds.copy()
    ds["loss"] = ds.loss * np.nan
    return ds


@pytest.mark.parametrize("draw", [plot_contour, plot_heatmap, plot_surface, plot_line,
                                  lambda ds: plot_contour(ds, filled=True, log=True)])
def test_all_nan_metric_is_a_clear_error(draw):
    with pytest.raises(LossmapError, match="no finite value"):
        draw(_all_nan(bowl()))


def test_user_errors():
    with pytest.raises(LossmapError, match=r"metric .los. is not in the landscape \(it has loss, accuracy\)"):
        plot_contour(bowl(), metric="los")
    with pytest.raises(LossmapError, match="2-D landscape"):
        plot_heatmap(interpolation())
    neg = bowl()
    neg["loss"] = -neg.loss
    with pytest.raises(LossmapError, match="log scale needs positive values"):
        plot_contour(neg, log=True)
    with pytest.raises(LossmapError, match="vmax=1.0 is below vmin=2.0"):
        plot_heatmap(bowl(), vmin=2.0, vmax=1.0)


def test_constant_landscape_still_draws():
    ds = linear_x()
    ds["loss"] = ds.loss * 0 + 1.5
    _, ax = plot_contour(ds, filled=True)
    levels = _contour_sets(ax)[0].levels
    assert levels.size >= 2 and levels[0] < 1.5 < levels[-1]


# ------------------------------------------------------------------------------------------ files


def _png_dpi(data: bytes) -> float:
    pos = data.index(b"pHYs")
    ppu_x, _, unit = struct.unpack(">IIB", data[pos + 4: pos + 13])
    assert unit == 1  # metres
    return ppu_x * 0.0254


def test_save_figure_formats_and_dpi(tmp_path):
    fig, _ = plot_line(interpolation())
    paths = save_figure(fig, tmp_path / "fig", formats=("png", "pdf", "svg"))
    assert paths == [tmp_path / "fig.png", tmp_path / "fig.pdf", tmp_path / "fig.svg"]
    png = paths[0].read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert _png_dpi(png) == pytest.approx(150, abs=0.1)
    assert paths[1].read_bytes().startswith(b"%PDF-")
    assert b"<svg" in paths[2].read_bytes()[:2000]

    fig, _ = plot_line(interpolation())
    assert save_figure(fig, tmp_path / "one.pdf", formats=("png",)) == [tmp_path / "one.pdf"]
    assert not (tmp_path / "one.png").exists()

    fig, _ = plot_line(interpolation())
    with pytest.raises(LossmapError, match="unknown figure format 'jpg'"):
        save_figure(fig, tmp_path / "x", formats=("jpg",))
    fig, _ = plot_line(interpolation())
    with pytest.raises(LossmapError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "x")


def test_figure_stem_adds_the_kind_after_dropping_a_figure_suffix(tmp_path):
    assert figure_stem(tmp_path / "run", "contour") == tmp_path / "run_contour"
    assert figure_stem(tmp_path / "run.PDF", "line") == tmp_path / "run_line"
    assert figure_stem("run.v2", "heatmap") == Path("run.v2_heatmap")  # not a figure suffix: kept


def test_plot_all_1d(tmp_path):
    paths = plot_all(interpolation(), tmp_path / "interp")
    assert paths == [tmp_path / "interp_line.png", tmp_path / "interp_line.pdf"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    assert paths[1].read_bytes().startswith(b"%PDF-")


def test_plot_all_2d_with_nan_inf_and_log(tmp_path):
    paths = plot_all(bowl(), tmp_path / "bowl", formats=("png",), log=True)
    kinds = ["contour", "contourf", "heatmap", "surface", "line"]
    assert paths == [tmp_path / f"bowl_{k}.png" for k in kinds]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_marker_off_grid_is_still_marked_on_the_nearest_cross_section():
    ds = bowl(nan_inf=False).interp(y=np.linspace(-0.5, 0.5, 6))  # even count: no y = 0 row
    ds.attrs = bowl().attrs
    fig, ax = plot_line(ds, metrics=["loss"])
    fig.draw_without_rendering()
    (top,) = ax.child_axes
    assert [t.get_text() for t in top.get_xticklabels()] == ["θ*"]
    np.testing.assert_array_equal(top.get_xticks(), [0.0])


def test_single_row_grid(tmp_path):
    ds = bowl(nan_inf=False).isel(y=[3])
    with pytest.raises(LossmapError, match="at least 2 points"):
        plot_contour(ds)
    paths = plot_all(ds, tmp_path / "row", formats=("png",))
    assert paths == [tmp_path / "row_heatmap.png", tmp_path / "row_line.png"]
    _, ax = plot_heatmap(ds)
    np.testing.assert_allclose(_mesh(ax).get_coordinates()[:, 0, 1], [-0.5, 0.5])  # one cell, unit height


def test_the_package_hands_out_the_static_names_and_nothing_else_without_matplotlib():
    """``lossmap.plot`` names what :mod:`lossmap.plot.static` exports; another name fails without importing
    matplotlib, a real one is imported once and then found in the package itself."""
    code = textwrap.dedent(
        """
        import sys
        import lossmap.plot as plot
        assert not hasattr(plot, "no_such_name") and not hasattr(plot, "_private")
        assert "matplotlib" not in sys.modules
        from lossmap.plot import interactive, scale  # submodules still import
        assert "matplotlib" not in sys.modules
        f = plot.plot_line
        assert vars(plot)["plot_line"] is f and "matplotlib" in sys.modules
        from lossmap.plot import static
        assert plot.__all__ == static.__all__
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
