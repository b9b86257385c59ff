"""Figure of a Hessian spectral density (from stochastic Lanczos quadrature)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .density import smooth_density

__all__ = ["plot_density"]


def plot_density(nodes: np.ndarray, weights: np.ndarray, ax: Any = None, width: float | None = None,
                 grid: np.ndarray | None = None, log: bool = True) -> tuple[Any, Any]:
    """Draw the smoothed spectral density of quadrature ``nodes`` and ``weights``.

    Args:
        nodes: quadrature nodes (e.g. ``SLQ.nodes``).
        weights: their weights (summing to 1).
        ax: matplotlib axes to draw on (default: a new :class:`matplotlib.figure.Figure`; pyplot is not used).
        width: Gaussian kernel width (see :func:`~lossmap.curvature.density.smooth_density`).
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
