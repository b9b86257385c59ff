"""Static figures of a landscape (matplotlib, Agg backend).

Every function takes a landscape :class:`xarray.Dataset` (see :mod:`lossmap.store`) and returns the figure
(and axes) it drew on, so that callers can adjust it or place it in a larger figure via ``ax=``. Figures are plain
:class:`matplotlib.figure.Figure` objects (no pyplot state, no display needed); they are rendered by the Agg
backend when saved, so this works on headless machines and never changes the user's pyplot backend.

Conventions shared by all plots:

* **Orientation.** Metric arrays are stored with dims ``("x", "y")``; they are always drawn with ``x`` on the
  horizontal axis and ``y`` on the vertical axis, and cell edges are the midpoints between coordinates, so
  non-uniform and non-square grids are placed correctly.
* **Missing points.** NaN and ±inf values are masked (drawn as gaps / transparent cells). A metric with no
  finite value at all raises :class:`~lossmap.errors.LossmapError`.
* **Colour range.** Unless ``vmin``/``vmax`` are given, the range runs from the smallest finite value to
  :func:`robust_upper` (the 95th percentile of the finite values) for loss-like metrics, so that a few
  exploding points at the rim do not flatten the basin; values beyond the range are drawn in the colour map's
  end colours (colour bars show an arrow). Metrics whose name contains ``acc`` (higher is better, bounded)
  use their full range.
* **Surface clip.** :func:`plot_surface` clips z to the same upper bound (``min(value, vmax)``), which keeps
  the surface continuous (a flat plateau where it is clipped) and the basin visible.
* **Log scale.** ``log=True`` needs positive values: values ``<= 0`` are raised to a floor equal to the
  smallest positive finite value of the data shown (a metric with no positive value raises
  :class:`~lossmap.errors.LossmapError`). Contour levels are then geometric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sys

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.figure import Figure

from ..errors import LossmapError
from .scale import DEFAULT_LEVELS, MAX_EQUAL_ASPECT_RATIO, ROBUST_PERCENTILE, robust_upper
from .scale import axis_label as _axis_label
from .scale import higher_is_better as _higher_is_better
from .scale import is_2d as _is_2d
from .scale import log_floor as _log_floor
from ..stats import require_same_grid
from ..store import check_output, require_metric
from ..store import meta as _decode_meta

__all__ = [
    "plot_line",
    "plot_contour",
    "plot_heatmap",
    "plot_surface",
    "plot_compare",
    "save_figure",
    "plot_all",
    "figure",
    "kinds_for",
    "KINDS_2D",
    "robust_upper",
    "describe",
    "FORMATS",
    "ROBUST_PERCENTILE",
    "DEFAULT_LEVELS",
]

#: file formats :func:`save_figure` writes
FORMATS = ("png", "pdf", "svg")
PNG_DPI = 150
CMAP = "viridis"


# --------------------------------------------------------------------------------------------------------
# data preparation
# --------------------------------------------------------------------------------------------------------


def _metric_names(ds: xr.Dataset) -> list[str]:
    listed = _decode_meta(ds).get("metrics")
    if isinstance(listed, list) and listed:
        names = [m for m in listed if m in ds.data_vars]
        if names:
            return names
    dims = {("x",), ("x", "y"), ("y", "x")}
    return [str(n) for n, v in ds.data_vars.items() if tuple(v.dims) in dims]


def _raw(ds: xr.Dataset, metric: str) -> np.ndarray:
    """float64 values of ``metric``: shape (nx,) or (nx, ny), non-finite kept as is."""
    require_metric(ds, metric)
    var = ds[metric]
    want = ("x", "y") if _is_2d(ds) else ("x",)
    if set(var.dims) != set(want):
        raise LossmapError(f"metric {metric!r} has dims {tuple(var.dims)}, expected {want}: the landscape is damaged")
    values = np.asarray(var.transpose(*want).values, dtype=np.float64)
    if not np.isfinite(values).any():
        raise LossmapError(
            f"metric {metric!r} has no finite value (all {values.size} points are NaN/inf): "
            "the landscape was not evaluated or diverged everywhere; recompute it or plot another metric"
        )
    return values


def _apply_floor(values: np.ndarray, floor: float) -> np.ndarray:
    out = values.copy()
    with np.errstate(invalid="ignore"):
        out[np.isfinite(out) & (out < floor)] = floor
    return out


def _masked(values: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_invalid(values)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _value_range(
    arrays: Sequence[np.ndarray], metric: str, log: bool, vmin: float | None, vmax: float | None, higher: bool = False
) -> tuple[float, float]:
    """Colour range (vmin, vmax) over ``arrays`` (already floored for log), made non-degenerate."""
    pooled = np.concatenate([_finite(a).ravel() for a in arrays])
    lo = float(pooled.min()) if vmin is None else float(vmin)
    if vmax is not None:
        hi = float(vmax)
    elif higher:
        hi = float(pooled.max())
    else:
        hi = robust_upper(pooled)
        if vmin is not None and hi <= lo:
            hi = float(pooled.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise LossmapError(f"colour range vmin={lo}, vmax={hi} must be finite numbers")
    if log and lo <= 0:
        raise LossmapError(f"vmin={lo} is not positive, which a log scale cannot show: give --vmin > 0 or drop --log")
    if hi < lo:
        raise LossmapError(f"vmax={hi} is below vmin={lo}: swap them or leave one out")
    if hi == lo:  # constant landscape: widen a little so levels and colour bars exist
        if log:
            lo, hi = lo / 1.1, hi * 1.1
        else:
            pad = abs(lo) * 0.01 or 1.0
            lo, hi = lo - pad, hi + pad
    return lo, hi


def _levels(levels: int | Sequence[float] | None, lo: float, hi: float, log: bool) -> np.ndarray:
    """Contour levels: a given list (sorted), else ``levels`` (default 15) geometric (log) or round linear."""
    if levels is not None and not isinstance(levels, (int, np.integer)):
        arr = np.unique(np.asarray(list(levels), dtype=np.float64))
        if arr.size == 0 or not np.isfinite(arr).all():
            raise LossmapError(f"contour levels {list(levels)!r} must be a non-empty list of finite numbers")
        if log and arr.min() <= 0:
            raise LossmapError(f"contour levels {arr.tolist()} include values <= 0, which a log scale cannot show")
        return arr
    n = DEFAULT_LEVELS if levels is None else int(levels)
    if n < 2:
        raise LossmapError(f"levels={n}: give at least 2 contour levels")
    if log:
        return np.geomspace(lo, hi, n)
    nice = ticker.MaxNLocator(nbins=n - 1, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    tol = 1e-9 * (hi - lo)
    nice = nice[(nice >= lo - tol) & (nice <= hi + tol)]
    return nice if nice.size >= 2 else np.linspace(lo, hi, n)


def _norm(lo: float, hi: float, log: bool) -> mcolors.Normalize:
    return mcolors.LogNorm(vmin=lo, vmax=hi) if log else mcolors.Normalize(vmin=lo, vmax=hi)


def _extend(arrays: Sequence[np.ndarray], lo: float, hi: float) -> str:
    pooled = np.concatenate([_finite(a).ravel() for a in arrays])
    below, above = bool((pooled < lo).any()), bool((pooled > hi).any())
    return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[(below, above)]


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges for centres ``c`` (midpoints, ends extrapolated by half a step); works for any spacing."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


# --------------------------------------------------------------------------------------------------------
# labels, titles, markers
# --------------------------------------------------------------------------------------------------------

_NORMALIZATION_TEXT = {
    "filter": "filter-normalized",
    "layer": "layer-normalized",
    "model": "model-normalized",
    "none": "unnormalized",
}


def describe(ds: xr.Dataset) -> str:
    """A short one-line description for titles, e.g. ``"2-D random slice, filter-normalized"``."""
    m = _decode_meta(ds)
    ndim = "2-D" if _is_2d(ds) else "1-D"
    kind = str(m.get("directions_kind") or "")
    if kind == "random":
        what = f"{ndim} random slice"
    elif kind == "target":
        what = "plane through three models" if _is_2d(ds) else "1-D interpolation"
    elif kind:
        what = f"{ndim} {kind} slice"
    else:
        what = f"{ndim} landscape"
    norm = str(m.get("normalization") or "")
    if kind == "random" and norm:
        what += ", " + _NORMALIZATION_TEXT.get(norm, f"{norm} normalization")
    return what


def _metric_label(metric: str, log: bool) -> str:
    return f"{metric} (log scale)" if log else metric


def _markers(ds: xr.Dataset) -> dict[str, tuple[float, ...]]:
    raw = _decode_meta(ds).get("markers")
    out: dict[str, tuple[float, ...]] = {}
    if isinstance(raw, dict):
        for label, pos in raw.items():
            try:
                values = tuple(float(v) for v in (pos if isinstance(pos, (list, tuple)) else [pos]))
            except (TypeError, ValueError):
                continue
            if values and all(math.isfinite(v) for v in values):
                out[str(label)] = values
    return out


def _marker_xy(pos: tuple[float, ...]) -> tuple[float, float]:
    return pos[0], (pos[1] if len(pos) > 1 else 0.0)


def _draw_markers_2d(ax: Any, ds: xr.Dataset) -> None:
    for label, pos in _markers(ds).items():
        mx, my = _marker_xy(pos)
        ax.plot([mx], [my], marker="o", markersize=6, color="white", markeredgecolor="black", zorder=5, clip_on=True)
        ax.annotate(
            label, (mx, my), xytext=(5, 5), textcoords="offset points", fontsize=10, fontweight="bold", zorder=6,
            color="black", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
            annotation_clip=True,
        )


def _set_grid_limits(ax: Any, ds: xr.Dataset) -> None:
    xe, ye = _edges(ds["x"].values), _edges(ds["y"].values)
    ax.set_xlim(min(xe[0], xe[-1]), max(xe[0], xe[-1]))
    ax.set_ylim(min(ye[0], ye[-1]), max(ye[0], ye[-1]))
    xspan, yspan = abs(xe[-1] - xe[0]), abs(ye[-1] - ye[0])
    ratio = max(xspan, yspan) / max(min(xspan, yspan), 1e-300)
    ax.set_aspect("equal" if ratio <= MAX_EQUAL_ASPECT_RATIO else "auto", adjustable="box")


def _panel_size(ds: xr.Dataset) -> tuple[float, float]:
    """Inches for one 2-D panel: follows the data aspect when it is drawn with equal aspect."""
    xe, ye = _edges(ds["x"].values), _edges(ds["y"].values)
    xspan, yspan = abs(xe[-1] - xe[0]), abs(ye[-1] - ye[0])
    ratio = yspan / max(xspan, 1e-300)
    if not (1 / MAX_EQUAL_ASPECT_RATIO <= ratio <= MAX_EQUAL_ASPECT_RATIO):
        return 4.4, 3.4
    width, height = 4.4, 4.4 * ratio
    if height > 4.4:
        width, height = 4.4 / ratio, 4.4
    return width, max(height, 1.6)


def _figsize_2d(ds: xr.Dataset, colorbar: bool) -> tuple[float, float]:
    w, h = _panel_size(ds)
    return w + 1.2 + (1.3 if colorbar else 0.0), h + 1.3


def _colorbar(fig: Any, mappable: Any, ax: Any, label: str, log: bool, levels: np.ndarray | None = None,
              **kw: Any) -> Any:
    """Colour bar with readable ticks: for log scales with (non-round) geometric levels, a subset of them."""
    cbar = fig.colorbar(mappable, ax=ax, label=label, **kw)
    if log:
        if levels is None and mappable.norm.vmax / mappable.norm.vmin < 30:  # under ~1.5 decades: 6 geometric
            levels = np.geomspace(mappable.norm.vmin, mappable.norm.vmax, 6)
        if levels is not None and len(levels) > 1:
            step = max(1, int(math.ceil(len(levels) / 8)))
            cbar.set_ticks(list(levels[::step]))
        else:  # decades
            lo, hi = mappable.norm.vmin, mappable.norm.vmax
            decades = ticker.LogLocator(base=10).tick_values(lo, hi)
            cbar.set_ticks([t for t in decades if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)])
        cbar.minorticks_off()
        cbar.formatter = ticker.FuncFormatter(lambda v, _pos: _fmt(v))
        cbar.update_ticks()
    return cbar


def _new_axes(ax: Any, figsize: tuple[float, float] = (6.0, 4.8)) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _require_2d(ds: xr.Dataset, what: str, min_points: int = 1) -> None:
    if not _is_2d(ds):
        raise LossmapError(f"a {what} needs a 2-D landscape (with a 'y' axis) but this one is 1-D: use the line plot")
    nx, ny = ds.sizes["x"], ds.sizes["y"]
    if min(nx, ny) < min_points:
        raise LossmapError(f"a {what} needs at least {min_points} points along x and y but the grid is {nx}×{ny}: "
                           "use a finer grid or the heatmap")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# --------------------------------------------------------------------------------------------------------
# line plots
# --------------------------------------------------------------------------------------------------------


def _line_values(ds: xr.Dataset, metric: str, log: bool) -> np.ndarray:
    values = _raw(ds, metric)
    if log:
        values = _apply_floor(values, _log_floor([values], metric))
    values = values.copy()
    values[~np.isfinite(values)] = np.nan
    return values


def _style_accuracy_axis(ax: Any, arrays: Sequence[np.ndarray]) -> None:
    finite = np.concatenate([_finite(a) for a in arrays])
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))


def plot_line(ds: xr.Dataset, ax: Any = None, log: bool = False, metrics: Sequence[str] | None = None):
    """Metric(s) against the x coefficient.

    Loss-like metrics go on the left axis (log scale with ``log=True``), metrics whose name contains ``acc``
    on a right twin axis (percent when in [0, 1]). Model positions from the ``markers`` attribute are drawn
    as labelled vertical lines. For a 2-D landscape the two central cross-sections are drawn: along x at the
    y nearest 0 (solid) and along y at the x nearest 0 (dashed), on a shared coefficient axis.

    Args:
        ds (xr.Dataset): a 1-D or 2-D landscape.
        ax (Any): a matplotlib ``Axes`` to draw into (default: a new figure).
        log (bool): log scale for the loss axis.
        metrics (Sequence[str] | None): the metrics to draw (default: all).

    Returns:
        tuple[Figure, Axes]: the figure and the left axis.

    Examples:
        >>> import torch, lossmap
        >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> line = lossmap.compute(a, data, x="-0.5:1.5:9", directions=lossmap.target_directions(a, b))
        >>> fig, ax = lossmap.plot_line(line)
        >>> ax.get_xlabel()
        'α (A → B)'
    """
    names = list(metrics) if metrics is not None else _metric_names(ds)
    if not names:
        raise LossmapError("the landscape has no metric variables to plot: the file is damaged")
    left = [m for m in names if not _higher_is_better(ds, m)]
    right = [m for m in names if _higher_is_better(ds, m)]
    if not left:
        left, right = right, []
    own_figure = ax is None
    fig, ax = _new_axes(ax, figsize=(6.4, 4.6))
    twin = ax.twinx() if right else None
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    two_d = _is_2d(ds)
    xs = ds["x"].values.astype(np.float64)

    if two_d:
        ys = ds["y"].values.astype(np.float64)
        iy, ix = int(np.argmin(np.abs(ys))), int(np.argmin(np.abs(xs)))
        xl, yl = _axis_label(ds, "x"), _axis_label(ds, "y")

    left_arrays, right_arrays = [], []
    for i, metric in enumerate(left + right):
        target = ax if metric in left else twin
        use_log = log and metric in left and not _higher_is_better(ds, metric)
        values = _line_values(ds, metric, use_log)
        color = colors[i % len(colors)]
        (left_arrays if metric in left else right_arrays).append(values)
        if not two_d:
            (h,) = target.plot(xs, values, color=color, lw=2, marker="." if xs.size <= 60 else None, label=metric)
            handles.append(h)
        else:
            (h1,) = target.plot(xs, values[:, iy], color=color, lw=2, ls="-",
                                label=f"{metric} along {xl.split()[0]} ({yl.split()[0]} = {_fmt(ys[iy])})")
            (h2,) = target.plot(ys, values[ix, :], color=color, lw=2, ls="--",
                                label=f"{metric} along {yl.split()[0]} ({xl.split()[0]} = {_fmt(xs[ix])})")
            handles += [h1, h2]
        if use_log:
            target.set_yscale("log")

    ax.set_ylabel(", ".join(_metric_label(m, log and not _higher_is_better(ds, m)) for m in left))
    if twin is not None:
        twin.set_ylabel(", ".join(right))
        _style_accuracy_axis(twin, right_arrays)
    elif all(_higher_is_better(ds, m) for m in left):
        _style_accuracy_axis(ax, left_arrays)

    positions: dict[str, float] = {}
    if two_d:
        ax.set_xlabel(f"{_axis_label(ds, 'x')}  /  {_axis_label(ds, 'y')}")
        # only markers lying on a drawn cross-section are shown, at their coordinate along it
        for label, pos in _markers(ds).items():
            mx, my = _marker_xy(pos)
            if abs(my - ys[iy]) <= _half_step(ys, iy):
                positions[label] = mx
            elif abs(mx - xs[ix]) <= _half_step(xs, ix):
                positions[label] = my
    else:
        ax.set_xlabel(_axis_label(ds, "x"))
        positions = {label: pos[0] for label, pos in _markers(ds).items()}
    _mark_positions(ax, positions)
    ax.grid(True, alpha=0.3)
    ax.set_title(describe(ds))
    _legend(fig, ax if twin is None else twin, handles, own_figure)
    return fig, ax


def _half_step(c: np.ndarray, i: int) -> float:
    """Half the distance from c[i] to its nearest neighbour (a point within it lies in c[i]'s cell)."""
    if c.size < 2:
        return 1e-9
    gaps = [abs(c[j] - c[i]) for j in (i - 1, i + 1) if 0 <= j < c.size]
    return 0.5 * min(gaps) + 1e-12


def _mark_positions(ax: Any, positions: dict[str, float]) -> None:
    """Dotted vertical lines at the models' positions, named on a top axis (clear of the curves)."""
    if not positions:
        return
    for x in positions.values():
        ax.axvline(x, color="0.35", lw=1, ls=":", zorder=0)
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(positions.values()), labels=list(positions.keys()))
    top.tick_params(length=0, labelsize=10)
    for text in top.get_xticklabels():
        text.set_fontweight("bold")


def _legend(fig: Any, ax: Any, handles: list, own_figure: bool) -> None:
    if len(handles) < 2:
        return
    if own_figure:  # below the plot, where it never hides a curve
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8,
                   frameon=False)
    else:
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)


# --------------------------------------------------------------------------------------------------------
# 2-D plots
# --------------------------------------------------------------------------------------------------------


def _grid_values(ds: xr.Dataset, metric: str, log: bool, floor: float | None = None) -> np.ndarray:
    values = _raw(ds, metric)
    if log:
        values = _apply_floor(values, _log_floor([values], metric) if floor is None else floor)
    return values


def _draw_contour(ax: Any, ds: xr.Dataset, values: np.ndarray, levels: np.ndarray, norm: mcolors.Normalize,
                  filled: bool, extend: str):
    x, y = ds["x"].values.astype(np.float64), ds["y"].values.astype(np.float64)
    z = _masked(values).T  # rows = y, columns = x
    if filled:
        cs = ax.contourf(x, y, z, levels=levels, norm=norm, cmap=CMAP, extend=extend)
        lines = ax.contour(x, y, z, levels=levels, colors="k", linewidths=0.4, alpha=0.5)
    else:
        cs = lines = ax.contour(x, y, z, levels=levels, norm=norm, cmap=CMAP, linewidths=1.2)
    if len(lines.levels):
        shown = lines.levels[::2] if len(lines.levels) > 10 else lines.levels
        ax.clabel(lines, levels=shown, inline=True, fontsize=7, fmt=_fmt)
    return cs


def _finish_2d(ax: Any, ds: xr.Dataset, title: str) -> None:
    _set_grid_limits(ax, ds)
    _draw_markers_2d(ax, ds)
    ax.set_xlabel(_axis_label(ds, "x"))
    ax.set_ylabel(_axis_label(ds, "y"))
    ax.set_title(title)


def plot_contour(ds: xr.Dataset, ax: Any = None, metric: str = "loss", log: bool = False,
                 levels: int | Sequence[float] | None = None, vmin: float | None = None, vmax: float | None = None,
                 filled: bool = False):
    """Labelled contour lines of a 2-D landscape (``filled=True``: filled contours with a colour bar).

    Args:
        ds (xr.Dataset): a 2-D landscape.
        ax (Any): a matplotlib ``Axes`` to draw into (default: a new figure sized to the grid's aspect).
        metric (str): the metric to draw.
        log (bool): geometric levels and a log colour scale.
        levels (int | Sequence[float] | None): a count (default 15; round linear values, geometric with
            ``log=True``) spread over ``[vmin, vmax]``, or an explicit list.
        vmin (float | None): the lowest level (default: the finite minimum).
        vmax (float | None): the highest level (default: :func:`robust_upper`, the 95th percentile).
        filled (bool): filled contours with a colour bar.

    Returns:
        tuple[Figure, Axes]: the figure and the axes; the ``ContourSet`` is in ``ax.collections``.

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig, ax = lossmap.plot_contour(plane, levels=10)
        >>> fig.savefig("plane_contour.png")                      # doctest: +SKIP
    """
    _require_2d(ds, "contour plot", 2)
    values = _grid_values(ds, metric, log)
    lo, hi = _value_range([values], metric, log, vmin, vmax, _higher_is_better(ds, metric))
    lv = _levels(levels, lo, hi, log)
    fig, ax = _new_axes(ax, figsize=_figsize_2d(ds, filled))
    norm = _norm(min(lo, lv[0]), max(hi, lv[-1]), log)
    cs = _draw_contour(ax, ds, values, lv, norm, filled, _extend([values], lv[0], lv[-1]))
    if filled:
        _colorbar(fig, cs, ax, _metric_label(metric, log), log, lv)
    _finish_2d(ax, ds, f"{_metric_label(metric, log)}: {describe(ds)}")
    return fig, ax


def plot_heatmap(ds: xr.Dataset, ax: Any = None, metric: str = "loss", log: bool = False,
                 vmin: float | None = None, vmax: float | None = None):
    """Colour-coded cells (pcolormesh, edges at coordinate midpoints) with a colour bar.

    Args:
        ds (xr.Dataset): a 2-D landscape.
        ax (Any): a matplotlib ``Axes`` to draw into (default: a new figure).
        metric (str): the metric to draw.
        log (bool): a log colour scale.
        vmin (float | None): the colour scale's lower end (default: the finite minimum).
        vmax (float | None): its upper end (default: the 95th percentile).

    Returns:
        tuple[Figure, Axes]: the figure and the axes.

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig, ax = lossmap.plot_heatmap(plane, metric="accuracy")
        >>> len(fig.axes)                                         # the map and its colour bar
        2
    """
    _require_2d(ds, "heatmap")
    values = _grid_values(ds, metric, log)
    lo, hi = _value_range([values], metric, log, vmin, vmax, _higher_is_better(ds, metric))
    fig, ax = _new_axes(ax, figsize=_figsize_2d(ds, True))
    mesh = ax.pcolormesh(_edges(ds["x"].values), _edges(ds["y"].values), _masked(values).T,
                         norm=_norm(lo, hi, log), cmap=CMAP, shading="flat")
    _colorbar(fig, mesh, ax, _metric_label(metric, log), log, None, extend=_extend([values], lo, hi))
    _finish_2d(ax, ds, f"{_metric_label(metric, log)}: {describe(ds)}")
    return fig, ax


def _draw_surface(ax: Any, ds: xr.Dataset, values: np.ndarray, lo: float, hi: float, log: bool):
    """Surface of ``values`` clipped to [lo, hi] (log10 of them with ``log``); returns the collection."""
    x, y = ds["x"].values.astype(np.float64), ds["y"].values.astype(np.float64)
    X, Y = np.meshgrid(x, y)  # shape (ny, nx)
    z = np.where(np.isfinite(values), np.clip(values, lo, hi), np.nan).T  # inf is masked, not clipped
    zlo, zhi = lo, hi
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(z)
        zlo, zhi = math.log10(lo), math.log10(hi)
    ax.computed_zorder = False  # markers drawn above the surface
    surf = ax.plot_surface(X, Y, _masked(z), cmap=CMAP, norm=mcolors.Normalize(zlo, zhi),
                           rcount=min(y.size, 200), ccount=min(x.size, 200), linewidth=0, antialiased=True)
    ax.set_zlim(zlo, zhi)
    for label, pos in _markers(ds).items():
        mx, my = _marker_xy(pos)
        ix, iy = int(np.argmin(np.abs(x - mx))), int(np.argmin(np.abs(y - my)))
        mz = z[iy, ix]
        if np.isfinite(mz):
            ax.scatter([mx], [my], [mz], color="white", edgecolor="black", s=30, depthshade=False, zorder=10)
            ax.text(mx, my, mz, f" {label}", fontsize=10, fontweight="bold", zorder=11)
    return surf


def _label_3d(ax: Any, ds: xr.Dataset, metric: str, log: bool) -> str:
    zlabel = f"log₁₀ {metric}" if log else metric
    ax.set_xlabel(_axis_label(ds, "x"))
    ax.set_ylabel(_axis_label(ds, "y"))
    ax.set_zlabel(zlabel)
    return zlabel


def plot_surface(ds: xr.Dataset, ax: Any = None, metric: str = "loss", log: bool = False,
                 vmin: float | None = None, vmax: float | None = None):
    """3-D surface with a colour map and colour bar; z is clipped to ``[vmin, vmax]``.

    Default clip: ``vmax`` = :func:`robust_upper` (95th percentile of the finite values), so the basin is not
    flattened by a few exploding rim points; clipped parts form a flat plateau at ``vmax``.

    Args:
        ds (xr.Dataset): a 2-D landscape.
        ax (Any): a 3-D matplotlib axes (``projection="3d"``) to draw into (default: a new figure).
        metric (str): the metric to draw.
        log (bool): show log10 of the (floored) values.
        vmin (float | None): the lower clip (default: the finite minimum).
        vmax (float | None): the upper clip (default: the 95th percentile).

    Returns:
        tuple[Figure, Axes]: the figure and the 3-D axes.

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig, ax = lossmap.plot_surface(plane)
        >>> ax.name
        '3d'
    """
    _require_2d(ds, "surface plot", 2)
    values = _grid_values(ds, metric, log)
    lo, hi = _value_range([values], metric, log, vmin, vmax, _higher_is_better(ds, metric))
    if ax is None:
        fig = Figure(figsize=(7.0, 5.6), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    else:
        if getattr(ax, "name", "") != "3d":
            raise LossmapError("plot_surface needs a 3-D axes: create it with fig.add_subplot(projection='3d')")
        fig = ax.figure
    surf = _draw_surface(ax, ds, values, lo, hi, log)
    zlabel = _label_3d(ax, ds, metric, log)
    fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.08, label=zlabel)
    ax.set_title(f"{_metric_label(metric, log)}: {describe(ds)}" + (f" (clipped at {_fmt(hi)})" if
                 np.nanmax(np.where(np.isfinite(values), values, np.nan)) > hi else ""))
    return fig, ax


# --------------------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------------------


def plot_compare(datasets: Sequence[xr.Dataset], titles: Sequence[str] | None = None, metric: str = "loss",
                 kind: str = "contour", log: bool = False, levels: int | Sequence[float] | None = None):
    """Several landscapes on ONE colour scale: side-by-side panels sharing levels, norm and a colour bar.

    All landscapes must have the metric and identical coordinates.

    Args:
        datasets (Sequence[xr.Dataset]): the landscapes, all 1-D or all 2-D on one grid.
        titles (Sequence[str] | None): a title per panel (default: each landscape's description).
        metric (str): the metric to draw.
        kind (str): 2-D: ``contour``, ``contourf``, ``heatmap`` or ``surface``; 1-D curves are overlaid on one
            axis (``kind`` is ignored).
        log (bool): a log colour scale.
        levels (int | Sequence[float] | None): contour levels shared by all panels.

    Returns:
        Figure: the figure.

    Raises:
        LossmapError: the landscapes have different grids or lack the metric.

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> planes = [lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:5", y="-1:1:5") for _ in range(2)]
        >>> fig = lossmap.plot_compare(planes, titles=["run 1", "run 2"])
        >>> [ax.get_title() for ax in fig.axes[:2]]
        ['run 1', 'run 2']
    """
    datasets = list(datasets)
    if not datasets:
        raise LossmapError("nothing to compare: give at least one landscape")
    if titles is None:
        titles = [f"landscape {i + 1}" for i in range(len(datasets))]
    titles = [str(t) for t in titles]
    if len(titles) != len(datasets):
        raise LossmapError(f"{len(titles)} titles for {len(datasets)} landscapes: give one title per landscape")
    require_same_grid(datasets, titles, metric)
    two_d = _is_2d(datasets[0])
    kinds = ("contour", "contourf", "heatmap", "surface")
    if two_d and kind not in kinds:
        raise LossmapError(f"unknown comparison kind {kind!r}: choose one of {', '.join(kinds)}")
    if two_d:
        _require_2d(datasets[0], f"{kind} comparison", 1 if kind == "heatmap" else 2)

    raw = [_raw(d, metric) for d in datasets]
    if log:
        floor = _log_floor(raw, metric)
        raw = [_apply_floor(v, floor) for v in raw]

    if not two_d:
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        for d, v, t in zip(datasets, raw, titles):
            v = v.copy()
            v[~np.isfinite(v)] = np.nan
            ax.plot(d["x"].values, v, lw=2, label=t)
        if log:
            ax.set_yscale("log")
        _mark_positions(ax, {label: pos[0] for label, pos in _markers(datasets[0]).items()})
        ax.set_xlabel(_axis_label(datasets[0], "x"))
        ax.set_ylabel(_metric_label(metric, log))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{metric}: {describe(datasets[0])}")
        return fig

    lo, hi = _value_range(raw, metric, log, None, None, _higher_is_better(datasets[0], metric))
    lv = _levels(levels, lo, hi, log)
    n = len(datasets)
    if kind == "surface":
        fig = Figure(figsize=(4.6 * n + 1.0, 4.6), layout="constrained")
        axes = [fig.add_subplot(1, n, i + 1, projection="3d") for i in range(n)]
    else:
        w, h = _panel_size(datasets[0])
        fig = Figure(figsize=(n * (w + 1.0) + 1.4, h + 1.6), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)
        axes = list(axes[0])
    norm_lo, norm_hi = (min(lo, lv[0]), max(hi, lv[-1])) if kind in ("contour", "contourf") else (lo, hi)
    extend = _extend(raw, lv[0], lv[-1]) if kind in ("contour", "contourf") else _extend(raw, lo, hi)
    mappable = None
    for ax, d, v, t in zip(axes, datasets, raw, titles):
        if kind == "surface":
            mappable = _draw_surface(ax, d, v, lo, hi, log)
            _label_3d(ax, d, metric, log)
            ax.set_title(t)
            continue
        if kind == "heatmap":
            mappable = ax.pcolormesh(_edges(d["x"].values), _edges(d["y"].values), _masked(v).T,
                                     norm=_norm(lo, hi, log), cmap=CMAP, shading="flat")
        else:
            mappable = _draw_contour(ax, d, v, lv, _norm(norm_lo, norm_hi, log), kind == "contourf", extend)
        _finish_2d(ax, d, t)
    label = f"log₁₀ {metric}" if (kind == "surface" and log) else _metric_label(metric, log)
    cbar_kw = {} if kind in ("contour", "contourf") else {"extend": extend}
    _colorbar(fig, mappable, axes, label, log and kind != "surface",
              lv if kind in ("contour", "contourf") else None, **cbar_kw)
    fig.suptitle(f"{_metric_label(metric, log)}: {describe(datasets[0])} (shared colour scale)")
    return fig


# --------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------


def _close(fig: Any) -> None:
    """Release a figure: pyplot-managed figures are closed; others are dropped with their last reference."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)


def save_figure(fig: Any, path_or_stem: str | Path, formats: Sequence[str] | str = ("png",)) -> list[Path]:
    """Write ``fig`` and close it.

    A path ending in ``.png``/``.pdf``/``.svg`` names exactly one file, written in that format (``formats`` is
    then ignored); any other path is a stem and gets one file per format (``stem.png``, ``stem.pdf``, …).
    PNGs are written at 150 dpi.

    Args:
        fig (Any): a matplotlib figure.
        path_or_stem (str | Path): a file or a stem; its folder must exist.
        formats (Sequence[str] | str): the formats for a stem.

    Returns:
        list[Path]: the paths written.

    Examples:
        >>> import pathlib, tempfile
        >>> from lossmap.plot.static import save_figure
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig, _ = lossmap.plot_contour(plane)
        >>> [p.name for p in save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "plane", ("png", "svg"))]
        ['plane.png', 'plane.svg']
    """
    path = Path(path_or_stem)
    try:
        suffix = path.suffix.lower().lstrip(".")
        if suffix in FORMATS:
            targets = [(path, suffix)]
        else:
            fmts = [formats] if isinstance(formats, str) else list(formats)
            if not fmts:
                raise LossmapError("no figure format given: choose one or more of png, pdf, svg")
            targets = []
            for f in fmts:
                f = str(f).lower().lstrip(".")
                if f not in FORMATS:
                    raise LossmapError(f"unknown figure format {f!r}: choose one of {', '.join(FORMATS)}")
                targets.append((path.with_name(f"{path.name}.{f}"), f))
        check_output(path, "figure.png")
        written = []
        for target, f in targets:
            kw = {"dpi": PNG_DPI} if f == "png" else {}
            try:
                fig.savefig(target, format=f, bbox_inches="tight", **kw)
            except PermissionError as exc:
                raise LossmapError(f"cannot write {str(target)!r}: permission denied; choose another --out") from exc
            except OSError as exc:
                raise LossmapError(f"cannot write {str(target)!r}: {exc}") from exc
            written.append(target)
        return written
    finally:
        _close(fig)


KINDS_2D = ("contour", "contourf", "heatmap", "surface", "line")


def kinds_for(ds: xr.Dataset) -> tuple[str, ...]:
    """The figure kinds that apply to a landscape.

    Args:
        ds (xr.Dataset): a landscape.

    Returns:
        tuple[str, ...]: 1-D ``("line",)``; 2-D all of :data:`KINDS_2D`, but only ``heatmap`` and ``line`` when
            an axis has a single point (contours and surfaces need 2 points each way).

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.plot.static import kinds_for
        >>> kinds_for(xr.Dataset({"loss": (("x", "y"), np.zeros((5, 1)))}, coords={"x": np.arange(5.0), "y": [0.0]}))
        ('heatmap', 'line')
    """
    if not _is_2d(ds):
        return ("line",)
    if min(ds.sizes["x"], ds.sizes["y"]) < 2:
        return ("heatmap", "line")
    if "trajectory_runs" in ds.attrs:  # a trajectory file: the path over the map and on the surface, side by side
        from ..trajectory.stored import has_trajectory

        return KINDS_2D + ("trajectory",) if has_trajectory(ds) else KINDS_2D
    return KINDS_2D


def figure(ds: xr.Dataset, kind: str, metric: str | None = None, log: bool = False, levels: Any = None,
           vmin: float | None = None, vmax: float | None = None) -> Any:
    """One figure of a given kind (a file of ``lossmap trajectory`` also draws its stored path).

    Args:
        ds (xr.Dataset): a landscape.
        kind (str): ``line``, ``contour``, ``contourf``, ``heatmap`` or ``surface``; ``trajectory`` for a file
            of ``lossmap trajectory`` (its contour and surface figures also carry the path).
        metric (str | None): default ``loss`` (or the first metric when there is no loss); ``line`` draws every
            metric.
        log (bool): log scales.
        levels (Any): contour levels (a count or a list).
        vmin (float | None): the lower end of the colour scale.
        vmax (float | None): its upper end.

    Returns:
        Any: the matplotlib figure.

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig = lossmap.plot.figure(plane, "contourf", metric="accuracy")
        >>> type(fig).__name__
        'Figure'
    """
    if metric is None:
        names = _metric_names(ds)
        metric = "loss" if "loss" in ds.data_vars else (names[0] if names else "loss")
    if kind == "line":
        return plot_line(ds, log=log)[0]
    if "trajectory_runs" in ds.attrs or kind == "trajectory":  # the path of a trajectory file drawn on the map
        from ..trajectory.figures import file_figure

        fig = file_figure(ds, kind, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax)
        if fig is not None:
            return fig
    if kind in ("contour", "contourf"):
        return plot_contour(ds, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax, filled=kind == "contourf")[0]
    if kind == "heatmap":
        return plot_heatmap(ds, metric=metric, log=log, vmin=vmin, vmax=vmax)[0]
    if kind == "surface":
        return plot_surface(ds, metric=metric, log=log, vmin=vmin, vmax=vmax)[0]
    raise LossmapError(f"figure kind {kind!r} is unknown: choose one of {', '.join(KINDS_2D)}")


def figure_stem(stem: str | Path, kind: str) -> Path:
    """``<stem>_<kind>``, the stem of a ``kind`` figure's files (a ``.png``/``.pdf``/``.svg`` on ``stem`` dropped)."""
    stem = Path(stem)
    if stem.suffix.lower().lstrip(".") in FORMATS:
        stem = stem.with_suffix("")
    return stem.with_name(f"{stem.name}_{kind}")


def plot_all(ds: xr.Dataset, out_stem: str | Path, formats: Sequence[str] = ("png", "pdf"), log: bool = False,
             metric: str | None = None, levels: Any = None, vmin: float | None = None,
             vmax: float | None = None) -> list[Path]:
    """Every figure that applies (:func:`kinds_for`), as ``<stem>_<kind>.<fmt>``.

    Args:
        ds (xr.Dataset): a landscape.
        out_stem (str | Path): the stem, e.g. ``figures/plane``; its folder must exist.
        formats (Sequence[str]): ``png``, ``pdf``, ``svg``.
        log (bool): log scales.
        metric (str | None): the metric of the 2-D figures (default: ``loss``).
        levels (Any): contour levels (a count or a list).
        vmin (float | None): the lower end of the colour scales.
        vmax (float | None): their upper end.

    Returns:
        list[Path]: the paths written.

    Examples:
        >>> import pathlib, tempfile
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> written = lossmap.plot_all(plane, pathlib.Path(tempfile.mkdtemp()) / "plane", formats=("png",))
        >>> sorted(p.name for p in written)
        ['plane_contour.png', 'plane_contourf.png', 'plane_heatmap.png', 'plane_line.png', 'plane_surface.png']
    """
    fmts = [formats] if isinstance(formats, str) else list(formats)
    written: list[Path] = []
    for kind in kinds_for(ds):
        fig = figure(ds, kind, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax)
        written += save_figure(fig, figure_stem(out_stem, kind), fmts)
    return written
