"""The line figure: metrics against a 1-D landscape's coefficient, or a plane's two central cross-sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import ticker

from ..errors import LossmapError
from .canvas import (_apply_floor, _finite, _fmt, _legend, _mark_positions, _marker_xy, _markers, _metric_label,
                     _metric_names, _new_axes, _raw, describe)
from .scale import axis_label as _axis_label
from .scale import higher_is_better as _higher_is_better
from .scale import is_2d as _is_2d
from .scale import log_floor as _log_floor

__all__ = ["plot_line"]


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
    xs = ds["x"].values.astype(np.float64)
    sections = _sections(ds, xs) if _is_2d(ds) else None
    left_arrays, right_arrays = [], []
    for i, metric in enumerate(left + right):
        target = ax if metric in left else twin
        use_log = log and metric in left and not _higher_is_better(ds, metric)
        values = _line_values(ds, metric, use_log)
        (left_arrays if metric in left else right_arrays).append(values)
        handles += _draw(target, xs, values, metric, colors[i % len(colors)], sections)
        if use_log:
            target.set_yscale("log")

    ax.set_ylabel(", ".join(_metric_label(m, log and not _higher_is_better(ds, m)) for m in left))
    if twin is not None:
        twin.set_ylabel(", ".join(right))
        _style_accuracy_axis(twin, right_arrays)
    elif all(_higher_is_better(ds, m) for m in left):
        _style_accuracy_axis(ax, left_arrays)

    if sections is not None:
        ax.set_xlabel(f"{_axis_label(ds, 'x')}  /  {_axis_label(ds, 'y')}")
        _mark_positions(ax, _on_sections(ds, xs, *sections[:3]))
    else:
        ax.set_xlabel(_axis_label(ds, "x"))
        _mark_positions(ax, {label: pos[0] for label, pos in _markers(ds).items()})
    ax.grid(True, alpha=0.3)
    ax.set_title(describe(ds))
    _legend(fig, ax if twin is None else twin, handles, own_figure)
    return fig, ax


def _sections(ds: xr.Dataset, xs: np.ndarray) -> tuple[np.ndarray, int, int, str, str]:
    """A plane's central cross-sections: ``(ys, ix, iy, x label, y label)``, ``ix``/``iy`` the coefficients
    nearest 0."""
    ys = ds["y"].values.astype(np.float64)
    return ys, int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys))), _axis_label(ds, "x"), _axis_label(ds, "y")


def _draw(target: Any, xs: np.ndarray, values: np.ndarray, metric: str, color: str,
          sections: tuple[np.ndarray, int, int, str, str] | None) -> list:
    """One metric's curve (1-D), or its two central cross-sections (a plane: solid along x, dashed along y)."""
    if sections is None:
        (h,) = target.plot(xs, values, color=color, lw=2, marker="." if xs.size <= 60 else None, label=metric)
        return [h]
    ys, ix, iy, xl, yl = sections
    (h1,) = target.plot(xs, values[:, iy], color=color, lw=2, ls="-",
                        label=f"{metric} along {xl.split()[0]} ({yl.split()[0]} = {_fmt(ys[iy])})")
    (h2,) = target.plot(ys, values[ix, :], color=color, lw=2, ls="--",
                        label=f"{metric} along {yl.split()[0]} ({xl.split()[0]} = {_fmt(xs[ix])})")
    return [h1, h2]


def _half_step(c: np.ndarray, i: int) -> float:
    """Half the distance from c[i] to its nearest neighbour (a point within it lies in c[i]'s cell)."""
    if c.size < 2:
        return 1e-9
    gaps = [abs(c[j] - c[i]) for j in (i - 1, i + 1) if 0 <= j < c.size]
    return 0.5 * min(gaps) + 1e-12


def _on_sections(ds: xr.Dataset, xs: np.ndarray, ys: np.ndarray, ix: int, iy: int) -> dict[str, float]:
    """The markers lying on a drawn cross-section (``y = ys[iy]`` or ``x = xs[ix]``), at their coordinate along it."""
    positions: dict[str, float] = {}
    for label, pos in _markers(ds).items():
        mx, my = _marker_xy(pos)
        if abs(my - ys[iy]) <= _half_step(ys, iy):
            positions[label] = mx
        elif abs(mx - xs[ix]) <= _half_step(xs, ix):
            positions[label] = my
    return positions
