"""What the static figures share: a metric's values as drawn, colour ranges and contour levels, cell edges,
markers, titles, axes and colour bars.

The conventions these implement (orientation, missing points, colour range, log scale) are stated once, in
:mod:`lossmap.plot.static`. The helpers are private to the ``lossmap.plot`` package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.figure import Figure

from ..errors import LossmapError
from ..store import meta as _decode_meta
from ..store import require_metric
from .scale import DEFAULT_LEVELS, MAX_EQUAL_ASPECT_RATIO, robust_upper
from .scale import is_2d as _is_2d
from .scale import log_floor as _log_floor

#: the colour map of every static figure
CMAP = "viridis"


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


def _grid_values(ds: xr.Dataset, metric: str, log: bool, floor: float | None = None) -> np.ndarray:
    values = _raw(ds, metric)
    if log:
        values = _apply_floor(values, _log_floor([values], metric) if floor is None else floor)
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
