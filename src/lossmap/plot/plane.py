"""The figures of a plane: contour lines (or filled contours), a heat map of cells, a 3-D surface."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from ..errors import LossmapError
from .canvas import (CMAP, _colorbar, _draw_markers_2d, _edges, _extend, _figsize_2d, _fmt, _grid_values, _levels,
                     _marker_xy, _markers, _masked, _metric_label, _new_axes, _norm, _require_2d, _set_grid_limits,
                     _value_range, describe)
from .scale import axis_label as _axis_label
from .scale import higher_is_better as _higher_is_better

__all__ = ["plot_contour", "plot_heatmap", "plot_surface"]


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
