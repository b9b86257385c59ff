"""Figures of a Hessian spectrum: the spectral density from stochastic Lanczos quadrature's nodes and weights,
smoothed by a Gaussian kernel, drawn from a spectrum in memory or from a ``lossmap hessian`` file.

numpy and matplotlib only: drawing a stored spectrum does not import torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import LossmapError

__all__ = ["FORMAT", "plot_density", "smooth_density", "density_figure"]

#: the ``lossmap_format`` attribute of a Hessian file (``lossmap hessian``; :mod:`lossmap.curvature.results`)
FORMAT = "lossmap.hessian"


def plot_density(nodes: np.ndarray, weights: np.ndarray, ax: Any = None, width: float | None = None,
                 grid: np.ndarray | None = None, log: bool = True) -> tuple[Any, Any]:
    """Draw the smoothed spectral density of quadrature ``nodes`` and ``weights``.

    Args:
        nodes: quadrature nodes (e.g. ``SLQ.nodes``).
        weights: their weights (summing to 1).
        ax: matplotlib axes to draw on (default: a new :class:`matplotlib.figure.Figure`; pyplot is not used).
        width: Gaussian kernel width (see :func:`smooth_density`).
        grid: eigenvalue grid of the curve (default: around the nodes).
        log: logarithmic density axis (the bulk near 0 and the outliers differ by orders of magnitude); values
            are floored at ``1e-12`` times the peak.

    Returns:
        tuple: ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_density(np.array([-1.0, 0.0, 4.0]), np.array([0.2, 0.7, 0.1]))
        >>> ax.get_xlabel()
        'eigenvalue λ'
    """
    from matplotlib.figure import Figure

    t, density = smooth_density(nodes, weights, width=width, grid=grid)
    if ax is None:
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    if log:
        density = np.maximum(density, 1e-12 * float(density.max()))
        ax.set_yscale("log")
    ax.plot(t, density, color="C0", lw=1.5)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density (log)" if log else "density")
    ax.set_title("Hessian spectral density")
    return fig, ax


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def smooth_density(nodes: np.ndarray, weights: np.ndarray, width: float | None = None,
                   grid: np.ndarray | None = None, points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The quadrature measure smoothed by a Gaussian kernel, normalized to integrate to 1 on the grid.

    Args:
        nodes: quadrature nodes (e.g. :attr:`lossmap.curvature.SLQ.nodes`).
        weights: their weights (e.g. :attr:`lossmap.curvature.SLQ.weights`).
        width: the kernel's standard deviation (default: 1 % of the nodes' range, or ``1e-3 · max(1, |node|)``
            when all nodes coincide).
        grid: evaluation points, increasing (default: ``points`` values from ``min(nodes) − 5·width`` to
            ``max(nodes) + 5·width``).
        points: size of the default grid.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``(grid, density)``; ``density`` integrates to 1 by the trapezoid rule.

    Example:
        >>> t, p = smooth_density(np.array([0.0]), np.array([1.0]), width=1.0)
        >>> round(float(np.sum(np.diff(t) * (p[1:] + p[:-1]) / 2)), 12), round(float(p.max()), 3)
        (1.0, 0.399)
    """
    nodes = np.asarray(nodes, dtype=np.float64).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if nodes.size == 0 or nodes.shape != weights.shape or not np.all(np.isfinite(nodes)):
        raise LossmapError(f"nodes ({nodes.size}) and weights ({weights.size}) must be equally many finite values, at least one")
    if width is None:
        span = float(nodes.max() - nodes.min())
        width = 0.01 * span if span > 0 else 1e-3 * max(1.0, float(np.abs(nodes).max()))
    if not (width > 0 and math.isfinite(width)):
        raise LossmapError(f"width={width}: the kernel width must be a positive number")
    if grid is None:
        grid = np.linspace(nodes.min() - 5 * width, nodes.max() + 5 * width, int(points))
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size < 2 or not np.all(np.diff(grid) > 0):
        raise LossmapError("the density grid must hold at least 2 increasing values")
    z = (grid[:, None] - nodes[None, :]) / width
    density = np.exp(-0.5 * z * z) @ weights / (width * math.sqrt(2 * math.pi))
    total = _trapezoid(density, grid)
    if not total > 0:
        raise LossmapError("the density is zero on the whole grid: widen the grid or the kernel")
    return grid, density / total


def density_figure(ds: Any, source: str = "the Hessian file") -> Any:
    """The spectral density of a ``lossmap hessian`` file, with its Lanczos λmax and λmin marked where it has them.

    The density's nodes are Ritz values of a few Lanczos steps: its outermost nodes approach the extreme
    eigenvalues but need not reach them, so the eigenvalues found to the file's tolerance are drawn as dashed
    lines beside the curve.

    Args:
        ds: the file's dataset (:func:`lossmap.curvature.results.load_spectrum`).
        source: how a message names it.

    Returns:
        matplotlib.figure.Figure: the figure.

    Raises:
        LossmapError: the file holds no density (``lossmap hessian`` ran without ``--density``).
    """
    if "density_nodes" not in ds.variables or "density_weights" not in ds.variables:
        raise LossmapError(f"{source} holds no spectral density: run lossmap hessian with --density")
    fig, ax = plot_density(ds["density_nodes"].values, ds["density_weights"].values)
    ends = (("eigenvalues_top", np.max, "λmax", "C3"), ("eigenvalues_bottom", np.min, "λmin", "C2"))
    for name, pick, label, colour in ends:
        if name in ds.variables and ds[name].size:
            value = float(pick(ds[name].values))
            ax.axvline(value, color=colour, ls="--", lw=1.0, label=f"{label} = {value:.4g} (Lanczos)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small", frameon=False)
    return fig
