"""Summary numbers of a landscape: centre value, extremes and two flatness measures.

The flatness measures assume a metric where lower is better (a loss); for accuracy-like metrics read
them on ``1 − accuracy`` or an error rate. All distances are in coefficient units (the landscape's ``x``/``y`` coordinates), so they compare models
only when their directions are normalized the same way (filter normalization, the default).

The centre
    the grid point nearest to coefficient 0 (``(0, 0)`` in 2-D) — the trained model of a random slice,
    model A of an interpolation.

Rise radius (flatness measure 1)
    Walking from the centre along the grid line through it, in each of the directions +x, −x (+y, −y), the
    distance at which ``metric`` first exceeds ``centre + rise``, linearly interpolated between the last grid
    point at or below the threshold and the first above it. NaN when the threshold is never exceeded inside
    the grid (the landscape is flatter than the grid can show) or when an unevaluated (NaN) point comes first.
    A ``+inf`` point counts as exceeding the threshold at that grid point. Larger means flatter.

    ``rise`` defaults to ``0.1 · (1 + |centre|)``: about 0.1 absolute for small losses and 10 % relative for
    large ones (the normalization of Keskar et al.'s sharpness), so it is defined for a centre loss of 0.
    When comparing models pass one explicit ``rise`` so all use the same threshold.

Ball mean increase (flatness measure 2)
    The mean of ``metric − centre`` over the grid points within Euclidean distance ``radius`` of the centre
    (unevaluated NaN points left out, ``+inf`` kept). ``radius`` defaults to half the smallest axis half-width,
    e.g. 0.5 on a ``[-1, 1]²`` grid; where the centre lies off the middle the grid's edges cut the ball.
    Smaller means flatter. On an evenly spaced grid it approximates the
    average over the disc (interval in 1-D): for ``a·x² + b·y²`` that is ``(a + b)·r²/4`` (``a·r²/3`` in 1-D).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .errors import LossmapError

__all__ = ["summarize", "attach", "require_comparable", "require_same_grid", "caveats", "table", "ordered_keys", "PREFIX", "KEYS"]

#: prefix of the attributes :func:`attach` writes
PREFIX = "summary_"
#: every key :func:`summarize` can return, in the order tables show them (``y`` keys only for 2-D)
KEYS = (
    "metric", "centre_x", "centre_y", "centre", "min", "max", "argmin_x", "argmin_y", "rise",
    "rise_radius_xpos", "rise_radius_xneg", "rise_radius_ypos", "rise_radius_yneg",
    "ball_radius", "ball_points", "ball_mean_increase",
)


def _metric_array(ds: xr.Dataset, metric: str) -> np.ndarray:
    from .store import require_metric

    require_metric(ds, metric)
    var = ds[metric]
    dims = ("x", "y") if "y" in var.dims else ("x",)
    if set(var.dims) != set(dims):
        raise LossmapError(f"metric {metric!r} has dims {var.dims}, expected {dims}: the landscape is damaged")
    return np.asarray(var.transpose(*dims).values, dtype=np.float64)


def _model_markers(ds: xr.Dataset) -> dict[str, list[float]]:
    """The models a landscape passes through (target directions), or {} for a slice around a point."""
    from .store import meta

    m = meta(ds)
    markers = m.get("markers")
    if m.get("directions_kind") != "target" or not isinstance(markers, dict) or len(markers) < 2:
        return {}
    return {str(k): list(v) for k, v in markers.items()}


def _rise_radius(coords: np.ndarray, values: np.ndarray, start: int, step: int, threshold: float) -> float:
    """Distance from ``coords[start]`` to where ``values`` first exceeds ``threshold`` walking by ``step``."""
    prev_d, prev_v = 0.0, values[start]
    k = start + step
    while 0 <= k < len(values):
        d, v = abs(coords[k] - coords[start]), values[k]
        if math.isnan(v):
            return math.nan  # unknown whether it rose before this point
        if v > threshold:
            if math.isinf(v):
                return float(d)
            return float(prev_d + (threshold - prev_v) / (v - prev_v) * (d - prev_d))
        prev_d, prev_v = d, v
        k += step
    return math.nan


def summarize(
    ds: xr.Dataset, metric: str = "loss", rise: float | None = None, radius: float | None = None
) -> dict[str, Any]:
    """Summary numbers of ``ds[metric]`` (see the module docstring for the definitions).

    A landscape through models (an interpolation, the plane through three models) gets the numbers of
    :mod:`lossmap.path_stats` instead: the metric at each model and what lies between them.

    Args:
        ds (xr.Dataset): a landscape (1-D or 2-D).
        metric (str): the metric to summarize.
        rise (float | None): the rise above the centre that ends a rise radius (default 0.1·(1 + |centre|));
            pass one value when comparing models.
        radius (float | None): the radius of the ball mean (default: half the smallest half-width of the grid).

    Returns:
        dict[str, Any]: a flat dict: ``metric``, ``centre_x`` (``centre_y``), ``centre``, ``min``, ``max``,
            ``argmin_x`` (``argmin_y``), ``rise``, ``rise_radius_xpos``, ``rise_radius_xneg`` (``…_ypos``,
            ``…_yneg``), ``ball_radius``, ``ball_mean_increase``, ``ball_points``; keys with ``y`` only for 2-D.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.stats import summarize
        >>> x = np.linspace(-1, 1, 21)
        >>> ds = xr.Dataset({"loss": ("x", 1 + x**2)}, coords={"x": x}, attrs={"metrics": '["loss"]'})
        >>> round(summarize(ds)["rise_radius_xpos"], 3)   # 1 + x² passes 1.2 at √0.2 = 0.447; linear between grid points
        0.444
    """
    z = _metric_array(ds, metric)
    markers = _model_markers(ds)
    if markers:
        from .path_stats import summarize_path

        return summarize_path(ds, z, markers, metric)
    two_d = z.ndim == 2
    xs = np.asarray(ds["x"].values, dtype=np.float64)
    ys = np.asarray(ds["y"].values, dtype=np.float64) if two_d else None
    i0 = int(np.argmin(np.abs(xs)))
    j0 = int(np.argmin(np.abs(ys))) if two_d else None
    centre = float(z[i0, j0] if two_d else z[i0])

    out: dict[str, Any] = {"metric": metric, "centre_x": float(xs[i0])}
    if two_d:
        out["centre_y"] = float(ys[j0])
    out["centre"] = centre
    out.update(_extremes(z, xs, ys))
    out.update(_rise_radii(z, xs, ys, i0, j0, centre, rise))
    out.update(_ball_mean(z, xs, ys, i0, j0, centre, radius))
    return out


def _extremes(z: np.ndarray, xs: np.ndarray, ys: np.ndarray | None) -> dict[str, float]:
    """``min``, ``max`` and where the minimum lies (``argmin_x``, ``argmin_y``), NaN when nothing is finite."""
    two_d = ys is not None
    finite = np.isfinite(z)
    if not finite.any():
        out = {"min": math.nan, "max": math.nan, "argmin_x": math.nan}
        return out | ({"argmin_y": math.nan} if two_d else {})
    flat = int(np.argmin(np.where(finite, z, np.inf)))
    idx = np.unravel_index(flat, z.shape)
    out = {"min": float(z.flat[flat]), "max": float(np.max(np.where(finite, z, -np.inf))), "argmin_x": float(xs[idx[0]])}
    return out | ({"argmin_y": float(ys[idx[1]])} if two_d else {})


def _rise_radii(z: np.ndarray, xs: np.ndarray, ys: np.ndarray | None, i0: int, j0: int | None, centre: float,
                rise: float | None) -> dict[str, float]:
    """``rise`` and the rise radius along each axis, both ways (``rise_radius_xpos``, …)."""
    if rise is None:
        rise = 0.1 * (1.0 + abs(centre)) if math.isfinite(centre) else math.nan
    else:
        rise = float(rise)
        if not (math.isfinite(rise) and rise > 0):
            raise LossmapError(f"rise={rise!r} must be a positive finite number (the loss increase to look for)")
    out = {"rise": float(rise)}
    threshold = centre + rise
    axes = [("x", xs, z[:, j0] if ys is not None else z, i0)]
    if ys is not None:
        axes.append(("y", ys, z[i0, :], j0))
    for name, coords, line, start in axes:
        for sign, step in (("pos", 1), ("neg", -1)):
            value = math.nan if not math.isfinite(threshold) else _rise_radius(coords, line, start, step, threshold)
            out[f"rise_radius_{name}{sign}"] = value
    return out


def _ball_mean(z: np.ndarray, xs: np.ndarray, ys: np.ndarray | None, i0: int, j0: int | None, centre: float,
               radius: float | None) -> dict[str, Any]:
    """``ball_radius``, ``ball_points`` and ``ball_mean_increase``: the mean rise over the grid points within
    ``radius`` of the centre."""
    if radius is None:
        half_widths = [(xs.max() - xs.min()) / 2] + ([(ys.max() - ys.min()) / 2] if ys is not None else [])
        radius = 0.5 * float(min(half_widths))
    else:
        radius = float(radius)
        if not (math.isfinite(radius) and radius >= 0):
            raise LossmapError(f"radius={radius!r} must be a finite number >= 0 (a distance in coefficient units)")
    if ys is not None:
        xx, yy = np.meshgrid(xs - xs[i0], ys - ys[j0], indexing="ij")
        dist = np.hypot(xx, yy)
    else:
        dist = np.abs(xs - xs[i0])
    inside = (dist <= radius * (1 + 1e-12)) & ~np.isnan(z)
    out: dict[str, Any] = {"ball_radius": radius, "ball_points": int(inside.sum()), "ball_mean_increase": math.nan}
    if inside.any() and math.isfinite(centre):
        with np.errstate(invalid="ignore"):
            out["ball_mean_increase"] = float(np.mean(z[inside] - centre))
    return out


def attach(ds: xr.Dataset, metric: str = "loss", rise: float | None = None, radius: float | None = None) -> xr.Dataset:
    """Store :func:`summarize` as flat attributes ``summary_<key>`` on ``ds`` (in place).

    Earlier ``summary_*`` attributes are replaced, so a landscape never carries stale numbers.

    Args:
        ds (xr.Dataset): a landscape.
        metric (str): the metric to summarize.
        rise (float | None): as in :func:`summarize`.
        radius (float | None): as in :func:`summarize`.

    Returns:
        xr.Dataset: ``ds`` itself, with the ``summary_*`` attributes.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.stats import attach
        >>> x = np.linspace(-1, 1, 11)
        >>> ds = attach(xr.Dataset({"loss": ("x", 2 * x**2)}, coords={"x": x}, attrs={"metrics": '["loss"]'}))
        >>> float(ds.attrs["summary_centre"]), float(ds.attrs["summary_max"])
        (0.0, 2.0)
    """
    numbers = summarize(ds, metric=metric, rise=rise, radius=radius)
    for key in [k for k in ds.attrs if str(k).startswith(PREFIX)]:
        del ds.attrs[key]
    for key, value in numbers.items():
        ds.attrs[PREFIX + key] = value if isinstance(value, (str, int)) else float(value)
    return ds


def require_comparable(datasets: Sequence[xr.Dataset], names: Sequence[str], metric: str = "loss") -> None:
    """Raise :class:`LossmapError` unless all landscapes have the same grid and the same metrics."""
    require_same_grid(datasets, names, metric)
    ref, ref_name = datasets[0], names[0]
    for ds, name in zip(datasets[1:], names[1:]):
        ref_metrics, metrics = set(map(str, ref.data_vars)), set(map(str, ds.data_vars))
        if ref_metrics != metrics:
            raise LossmapError(
                f"{name} has metrics {sorted(metrics)} but {ref_name} has {sorted(ref_metrics)}: "
                "compare landscapes evaluated with the same metrics"
            )


def require_same_grid(datasets: Sequence[xr.Dataset], names: Sequence[str], metric: str = "loss") -> None:
    """Raise :class:`LossmapError` unless all landscapes have the same dims and coordinates and carry ``metric``."""
    if len(datasets) != len(names):
        raise LossmapError(f"{len(names)} names for {len(datasets)} landscapes: give one per landscape")
    ref, ref_name = datasets[0], names[0]
    from .store import require_metric

    for ds, name in zip(datasets, names):
        require_metric(ds, metric, str(name))
    for ds, name in zip(datasets[1:], names[1:]):
        if ("y" in ds.dims) != ("y" in ref.dims):
            raise LossmapError(
                f"{name} is {2 if 'y' in ds.dims else 1}-D but {ref_name} is {2 if 'y' in ref.dims else 1}-D: "
                "compare landscapes of the same kind"
            )
        for axis in ("x", "y") if "y" in ref.dims else ("x",):
            a, b = np.asarray(ref[axis].values), np.asarray(ds[axis].values)
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=1e-12):
                raise LossmapError(
                    f"{name} has a different {axis} grid ({_describe_axis(b)}) than {ref_name} ({_describe_axis(a)}): "
                    "compute both on the same grid"
                )


#: settings that should agree for a side-by-side picture to mean what it seems to
CAVEAT_FIELDS = ("directions_kind", "normalization", "bias_policy", "seed", "data", "samples", "bn_policy")


def caveats(datasets: Sequence[xr.Dataset], names: Sequence[str]) -> list[str]:
    """Settings in which comparable landscapes differ (one sentence each).

    Different normalizations make the pictures incomparable (the point of filter normalization); different
    data or sample counts shift the loss itself. These are warnings, not errors: the grids still match.

    Args:
        datasets (Sequence[xr.Dataset]): landscapes with the same grid.
        names (Sequence[str]): how the sentences name them.

    Returns:
        list[str]: one sentence per differing setting; empty when they agree.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.stats import caveats
        >>> a = xr.Dataset({"loss": ("x", np.zeros(3))}, attrs={"normalization": "filter", "metrics": '["loss"]'})
        >>> b = a.assign_attrs(normalization="none")
        >>> len(caveats([a, b], ["a", "b"]))
        1
    """
    from .store import meta

    notes = []
    metas = [meta(ds) for ds in datasets]
    for field in CAVEAT_FIELDS:
        values = [m.get(field) for m in metas]
        if any(v is None for v in values) or len({json.dumps(v, sort_keys=True, default=str) for v in values}) == 1:
            continue
        shown = ", ".join(f"{n}: {v}" for n, v in zip(names, values))
        notes.append(f"the landscapes differ in {field} ({shown})")
    return notes


def _describe_axis(values: np.ndarray) -> str:
    if values.size == 0:
        return "empty"
    return f"{values.min():g}:{values.max():g}:{values.size}"


def table(summaries: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """A plain-text table of several :func:`summarize` results for the terminal: one row per number, one
    column per landscape (so two models read side by side).

    Args:
        summaries (Sequence[dict[str, Any]]): results of :func:`summarize`.
        names (Sequence[str]): a column title for each.

    Returns:
        str: the table, one line per number.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.stats import summarize, table
        >>> x = np.linspace(-1, 1, 11)
        >>> bowls = [xr.Dataset({"loss": ("x", a * x**2)}, coords={"x": x}, attrs={"metrics": '["loss"]'}) for a in (1, 4)]
        >>> lines = table([summarize(b, rise=0.5) for b in bowls], ["wide", "sharp"]).splitlines()
        >>> print(lines[0]); print(lines[8])           # the wide bowl's loss rises by 0.5 twice as far out
                            wide   sharp
        rise_radius_xpos     0.7  0.3417
    """
    keys = ordered_keys(summaries)
    rows = [["", *map(str, names)]] + [[k, *(_fmt(s.get(k, "")) for s in summaries)] for k in keys]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def ordered_keys(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The keys present in any of ``summaries``, in :data:`KEYS` order (unknown keys last)."""
    present: list[str] = []
    for s in summaries:
        present += [k for k in s if k not in present]
    return [k for k in KEYS if k in present] + [k for k in present if k not in KEYS]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
