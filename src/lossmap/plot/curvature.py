"""Curvature maps of a landscape (``surface --curvature``), drawn like Li et al. (2018, Fig. 7).

A 2-D landscape gives three panels over the plane: λmax, λmin (a diverging colour map centred at 0, so
negative curvature shows in blue) and Li et al.'s ``|λmin / λmax|`` (near 0: locally convex; large:
significant negative curvature), each with the loss's contour lines on top. A 1-D landscape gives λmax and
λmin against the coefficient, with the ratio below. Figures are plain :class:`matplotlib.figure.Figure`
objects (no pyplot state).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from ..errors import LossmapError
from .scale import axis_label, is_2d
from .canvas import _edges, describe

__all__ = ["plot_curvature", "has_curvature", "CURVATURE_KIND"]

CURVATURE_KIND = "curvature"
_VARS = ("lambda_max", "lambda_min", "lambda_ratio")


def has_curvature(ds: xr.Dataset) -> bool:
    """Whether the landscape holds a curvature map (``surface --curvature``)."""
    return all(v in ds.data_vars for v in _VARS)


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    want = ("x", "y") if is_2d(ds) else ("x",)
    values = np.asarray(ds[name].transpose(*want).values, dtype=np.float64)
    if not np.isfinite(values).any():
        raise LossmapError(f"{name} has no finite value: the curvature map was not computed; rerun surface --curvature")
    return values


def _panel(fig: Any, ax: Any, ds: xr.Dataset, name: str, title: str, cmap: str, norm: mcolors.Normalize) -> None:
    xe, ye = _edges(ds["x"].values), _edges(ds["y"].values)
    values = _values(ds, name)
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(values).T, cmap=cmap, norm=norm, shading="flat")
    fig.colorbar(mesh, ax=ax, shrink=0.85)
    if "loss" in ds.data_vars and min(ds.sizes["x"], ds.sizes["y"]) >= 2:
        loss = np.asarray(ds["loss"].transpose("x", "y").values, dtype=np.float64)
        if np.isfinite(loss).sum() >= 4 and np.nanmax(loss) > np.nanmin(loss):
            ax.contour(ds["x"].values, ds["y"].values, np.ma.masked_invalid(loss).T, levels=10, colors="white",
                       linewidths=0.7, alpha=0.8)
    ax.plot([0.0], [0.0], marker="o", markersize=5, color="white", markeredgecolor="black")
    ax.set_title(title)
    ax.set_xlabel(axis_label(ds, "x"))
    ax.set_ylabel(axis_label(ds, "y"))


def _range(values: np.ndarray, centred: bool) -> mcolors.Normalize:
    """The colour range: symmetric about 0 when ``centred`` (so the diverging map's white is λ = 0)."""
    finite = values[np.isfinite(values)]
    lo, hi = float(finite.min()), float(finite.max())
    if centred:
        m = max(abs(lo), abs(hi), 1e-300)
        return mcolors.Normalize(vmin=-m, vmax=m)
    return mcolors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + max(abs(lo), 1.0) * 1e-12)


def plot_curvature(ds: xr.Dataset) -> Figure:
    """The curvature map of ``ds`` (see the module docstring).

    Args:
        ds: a landscape with ``lambda_max``, ``lambda_min`` and ``lambda_ratio``.

    Returns:
        Figure: three panels (2-D) or two stacked axes (1-D).

    Example:
        >>> import xarray as xr
        >>> x = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": ("x", x**2), "lambda_max": ("x", 2 + x), "lambda_min": ("x", x - 0.5),
        ...                  "lambda_ratio": ("x", np.abs((x - 0.5) / (2 + x)))}, coords={"x": x})
        >>> len(plot_curvature(ds).axes)
        2
    """
    if not has_curvature(ds):
        raise LossmapError("the landscape has no curvature map (lambda_max, lambda_min): compute it with surface --curvature")
    if is_2d(ds):
        fig = Figure(figsize=(15.5, 4.6), layout="constrained")
        axes = fig.subplots(1, 3)
        lmax, lmin, ratio = (_values(ds, v) for v in _VARS)
        _panel(fig, axes[0], ds, "lambda_max", "λmax", "magma", _range(lmax, centred=False))
        _panel(fig, axes[1], ds, "lambda_min", "λmin", "RdBu_r", _range(lmin, centred=True))
        top = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else 1.0
        _panel(fig, axes[2], ds, "lambda_ratio", "|λmin / λmax|", "viridis", mcolors.Normalize(0.0, max(top, 1e-12)))
        fig.suptitle(f"Hessian curvature — {describe(ds)}")
        return fig
    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    top_ax, low_ax = fig.subplots(2, 1, sharex=True)
    x = ds["x"].values
    top_ax.plot(x, _values(ds, "lambda_max"), lw=2, color="C3", marker=".", label="λmax")
    top_ax.plot(x, _values(ds, "lambda_min"), lw=2, color="C0", marker=".", label="λmin")
    top_ax.axhline(0.0, color="grey", lw=0.8)
    top_ax.set_ylabel("Hessian eigenvalue")
    top_ax.legend()
    top_ax.grid(True, alpha=0.3)
    low_ax.plot(x, _values(ds, "lambda_ratio"), lw=2, color="C2", marker=".")
    low_ax.set_ylabel("|λmin / λmax|")
    low_ax.set_xlabel(axis_label(ds, "x"))
    low_ax.grid(True, alpha=0.3)
    top_ax.set_title(f"Hessian curvature — {describe(ds)}")
    return fig
