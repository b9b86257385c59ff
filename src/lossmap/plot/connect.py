"""Static figures of mode connectivity (matplotlib, Agg backend; no pyplot state).

* :func:`plot_barriers` — a quantity along θ(α) = (1 − α)A + αB for each data set, before (solid) and
  after (dashed) alignment, every evaluated α drawn (refinement points included), the Frankle maximum
  of each path marked; :func:`barrier_figure` puts loss and error side by side.
* :func:`plot_curve_plane` — Garipov et al.'s figure: the landscape of the plane through A, B and the
  bend (filled contours, log scale by default), with the trained curve and the straight segment drawn
  over it.
* :func:`plot_curve_profile` — loss (and error) against t along the curve and along the segment.

Each ``plot_*`` takes ``ax=None`` (a new figure) or an axes to draw into and returns ``(fig, ax)``;
save with :func:`lossmap.plot.static.save_figure`.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import patheffects
from matplotlib.figure import Figure

from ..errors import LossmapError
from .static import plot_contour

__all__ = ["plot_barriers", "barrier_figure", "plot_curve_plane", "plot_curve_profile"]

_DASHES = {"unaligned": "-", "aligned": "--", "curve": "-", "line": "--"}


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _require(ds: xr.Dataset, quantity: str, what: str) -> None:
    if quantity not in ds.data_vars:
        have = [q for q in ("loss", "error") if q in ds.data_vars]
        raise LossmapError(f"{quantity!r} is not in the {what} (it has {', '.join(have)}): choose one of those")


def plot_barriers(ds: xr.Dataset, quantity: str = "loss", ax: Any = None):
    """``quantity`` along the path for every data set and path, with each path's Frankle maximum marked.

    Args:
        ds: a connection (:func:`lossmap.connect.connect`'s ``dataset`` or a loaded ``lossmap.connect`` file).
        quantity: ``"loss"`` or ``"error"``.
        ax: axes to draw into (default: a new figure).

    Returns:
        tuple: ``(fig, ax)``.
    """
    _require(ds, quantity, "connection")
    fig, ax = _axes(ax, (6.4, 4.4))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    alpha = ds["alpha"].values
    for j, name in enumerate(str(n) for n in ds["data"].values):
        for path in (str(p) for p in ds["path"].values):
            v = ds[quantity].sel(path=path, data=name).values
            keep = np.isfinite(v)
            h = float(ds["barrier"].sel(path=path, data=name, quantity=quantity, definition="frankle"))
            ax.plot(alpha[keep], v[keep], ls=_DASHES.get(path, ":"), color=colors[j % len(colors)], lw=1.8,
                    label=f"{name}, {path} (barrier {h:.3g})")
            at = float(ds["barrier_alpha"].sel(path=path, data=name, quantity=quantity, definition="frankle"))
            if np.isfinite(at):
                ax.plot([at], [v[np.argmin(np.abs(alpha - at))]], marker="v", color=colors[j % len(colors)], ms=6)
    ax.set_xlabel("α: θ(α) = (1 − α)A + αB")
    ax.set_ylabel(quantity)
    ax.set_xlim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    ax.set_title(f"{quantity} between A (α = 0) and B (α = 1)")
    return fig, ax


def barrier_figure(ds: xr.Dataset) -> Figure:
    """:func:`plot_barriers` for every quantity of the connection, side by side.

    Args:
        ds: a connection dataset.

    Returns:
        matplotlib.figure.Figure: the figure.
    """
    quantities = [str(q) for q in ds["quantity"].values]
    fig = Figure(figsize=(5.6 * len(quantities), 4.4), layout="constrained")
    for k, q in enumerate(quantities):
        plot_barriers(ds, q, ax=fig.add_subplot(1, len(quantities), k + 1))
    return fig


def plot_curve_plane(plane: xr.Dataset, curve: xr.Dataset, ax: Any = None, metric: str = "loss", log: bool = True,
                     levels: int | None = None):
    """The plane through A, B and the bend, with the curve (white) and the straight segment (red) on it.

    Args:
        plane: the plane's landscape (:func:`lossmap.connect.curve_eval.curve_plane`), markers A, B, bend.
        curve: the curve file's contents (:func:`lossmap.connect.curve_eval.evaluate_curve`).
        ax: axes to draw into (default: a new figure).
        metric: the plane's metric to draw.
        log: log-scale contours (the valley of a trained curve spans decades of loss).
        levels: the number of contour levels (default: :func:`~lossmap.plot.static.plot_contour`'s).

    Returns:
        tuple: ``(fig, ax)``.
    """
    fig, ax = plot_contour(plane, ax=ax, metric=metric, log=log, levels=levels, filled=True)
    for path, color in (("curve", "white"), ("line", "#d62728")):
        x, y = curve["plane_x"].sel(path=path).values, curve["plane_y"].sel(path=path).values
        peak = float(curve["peak"].sel(path=path, quantity="loss")) if "peak" in curve else float("nan")
        outline = [patheffects.withStroke(linewidth=3.6, foreground="black")] if path == "curve" else None
        ax.plot(x, y, color=color, lw=2.2, ls=_DASHES[path], label=f"{path} (max loss {peak:.3g})", zorder=4,
                path_effects=outline)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.85)
    ax.set_title(f"{metric} on the plane through A, B and the bend ({curve.attrs.get('kind', 'bezier')})")
    return fig, ax


def plot_curve_profile(curve: xr.Dataset, ax: Any = None):
    """Loss (left axis) and error (right axis, where present) against t, along the curve and the segment.

    Args:
        curve: the curve file's contents.
        ax: axes to draw into (default: a new figure).

    Returns:
        tuple: ``(fig, ax)`` (the loss axis).
    """
    fig, ax = _axes(ax, (6.4, 4.4))
    t = curve["t"].values
    twin = ax.twinx() if "error" in curve.data_vars else None
    for path in ("curve", "line"):
        ax.plot(t, curve["loss"].sel(path=path).values, color="#1f77b4", ls=_DASHES[path], lw=2, label=f"loss, {path}")
        if twin is not None:
            twin.plot(t, curve["error"].sel(path=path).values, color="#ff7f0e", ls=_DASHES[path], lw=1.4,
                      label=f"error, {path}")
    ax.set_xlabel("t (A at 0, B at 1)")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + (twin.get_legend_handles_labels()[0] if twin is not None else [])
    if twin is not None:
        twin.set_ylabel("error")
    ax.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.85)
    ax.set_title("along the trained curve and the straight segment")
    return fig, ax
