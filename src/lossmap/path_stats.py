"""Summary numbers of a landscape through models (an interpolation A → B, the plane through A, B, C).

Flatness around the origin means nothing there (the origin of an interpolation is often a random init);
what matters is the loss at each model and what lies between them (Goodfellow et al. 2015):

* ``at_a``, ``at_b`` (``at_c``): the metric at each model (interpolated linearly between grid points when a
  model lies between them; NaN when it lies outside the grid); ``models`` names them;
* ``max_between`` and ``argmax_between``: the largest value on the segment A → B (grid points with
  0 ≤ α ≤ 1, the ends included); ``bump`` = ``max_between − max(at_a, at_b)``, positive when the curve rises
  above both ends (a barrier);
* ``monotone``: 1 when the metric never increases from A to B along the grid (a flat step counts as not
  increasing), else 0 — Goodfellow et al.'s monotone decrease, read for a loss;
* ``min``, ``argmin_x`` (``argmin_y``), ``max``: over the whole grid.

For the plane through three models the segment is the x axis (β = 0) from A (0, 0) to B (1, 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["summarize_path", "PATH_KEYS"]

PATH_KEYS = ("metric", "models", "at_a", "at_b", "at_c", "max_between", "argmax_between", "bump", "monotone", "min",
             "argmin_x", "argmin_y", "max")


def _at(xs: np.ndarray, line: np.ndarray, a: float) -> float:
    """``line`` at coordinate ``a`` (linear between grid points; NaN outside the grid)."""
    if not xs[0] - 1e-12 <= a <= xs[-1] + 1e-12:
        return math.nan
    return float(np.interp(a, xs, line))


def _at_2d(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, pos: list[float]) -> float:
    """Bilinear value of ``z`` at ``pos`` (NaN outside the grid)."""
    x, y = pos
    if not (xs[0] - 1e-12 <= x <= xs[-1] + 1e-12 and ys[0] - 1e-12 <= y <= ys[-1] + 1e-12):
        return math.nan
    along_y = np.array([np.interp(y, ys, z[i]) for i in range(len(xs))])
    return float(np.interp(x, xs, along_y))


def summarize_path(ds: xr.Dataset, values: np.ndarray, markers: dict[str, list[float]], metric: str) -> dict[str, Any]:
    """The numbers above for ``values`` (``ds[metric]`` as ``(x,)`` or ``(x, y)``) and the models' ``markers``."""
    xs = np.asarray(ds["x"].values, dtype=np.float64)
    two_d = values.ndim == 2
    names = list(markers)
    out: dict[str, Any] = {"metric": metric, "models": ", ".join(names)}
    if two_d:
        ys = np.asarray(ds["y"].values, dtype=np.float64)
        j0 = int(np.argmin(np.abs(ys)))
        line = values[:, j0] if abs(ys[j0]) < 1e-12 else np.full(len(xs), np.nan)
        for key, name in zip(("at_a", "at_b", "at_c"), names):
            out[key] = _at_2d(xs, ys, values, list(markers[name]))
    else:
        line = values
        for key, name in zip(("at_a", "at_b"), names):
            out[key] = _at(xs, line, float(markers[name][0]))
    inside = (xs >= -1e-12) & (xs <= 1 + 1e-12)
    seg = line[inside]
    if seg.size and np.isfinite(seg).any():
        k = int(np.nanargmax(np.where(np.isfinite(seg), seg, -np.inf)))
        out["max_between"] = float(seg[k])
        out["argmax_between"] = float(xs[inside][k])
        ends = [out.get("at_a", math.nan), out.get("at_b", math.nan)]
        out["bump"] = float(out["max_between"] - max(ends)) if all(math.isfinite(e) for e in ends) else math.nan
        steps = np.diff(seg)
        scale = max(float(np.nanmax(np.abs(seg))), 1e-300)
        out["monotone"] = int(bool(np.all(steps <= 1e-12 * scale)))
    else:
        out.update(max_between=math.nan, argmax_between=math.nan, bump=math.nan, monotone=0)
    finite = np.isfinite(values)
    if finite.any():
        flat = int(np.argmin(np.where(finite, values, np.inf)))
        idx = np.unravel_index(flat, values.shape)
        out["min"] = float(values[idx])
        out["argmin_x"] = float(xs[idx[0]])
        if two_d:
            out["argmin_y"] = float(ys[idx[1]])
        out["max"] = float(np.max(np.where(finite, values, -np.inf)))
    return out
