"""Several landscapes side by side on one colour scale (or overlaid, when they are 1-D)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..errors import LossmapError
from ..stats import require_same_grid
from .canvas import (CMAP, _apply_floor, _colorbar, _edges, _extend, _levels, _mark_positions, _markers, _masked,
                     _metric_label, _norm, _panel_size, _raw, _require_2d, _value_range, describe)
from .plane import _draw_contour, _draw_surface, _finish_2d, _label_3d
from .scale import axis_label as _axis_label
from .scale import higher_is_better as _higher_is_better
from .scale import is_2d as _is_2d
from .scale import log_floor as _log_floor

__all__ = ["plot_compare"]


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
    titles = _titles(datasets, titles)
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
        return _overlaid(datasets, raw, titles, metric, log)
    return _side_by_side(datasets, raw, titles, metric, kind, log, levels)


def _titles(datasets: list[xr.Dataset], titles: Sequence[str] | None) -> list[str]:
    """One title per landscape (default ``landscape 1``, ``landscape 2``, …)."""
    if not datasets:
        raise LossmapError("nothing to compare: give at least one landscape")
    if titles is None:
        titles = [f"landscape {i + 1}" for i in range(len(datasets))]
    titles = [str(t) for t in titles]
    if len(titles) != len(datasets):
        raise LossmapError(f"{len(titles)} titles for {len(datasets)} landscapes: give one title per landscape")
    return titles


def _side_by_side(datasets: list[xr.Dataset], raw: list[np.ndarray], titles: list[str], metric: str, kind: str,
                  log: bool, levels: int | Sequence[float] | None) -> Figure:
    """2-D landscapes as panels of one kind sharing levels, norm and a colour bar."""
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


def _overlaid(datasets: list[xr.Dataset], raw: list[np.ndarray], titles: list[str], metric: str, log: bool) -> Figure:
    """1-D landscapes as curves on one axis."""
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
