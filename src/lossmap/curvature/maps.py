"""Curvature maps: the extreme Hessian eigenvalues at every point of a landscape grid (Li et al. 2018, §6).

At each grid point ``θ(c) = θ0 + Σ cᵢ dᵢ`` the largest (``λmax``) and smallest (``λmin``) eigenvalues of the
full Hessian are found by Lanczos (:func:`~lossmap.curvature.extremes.largest` and
:func:`~lossmap.curvature.extremes.smallest`). Points are visited in the grid's serpentine order, so
consecutive points are neighbours, and each point's Lanczos starts from the previous point's eigenvector for
the same end of the spectrum (a warm start: curvature directions change little between neighbouring points),
mixed with a random start (:func:`~lossmap.curvature.extremes.warm_start`).

Li et al. draw ``|λmin / λmax|``: near 0 where the surface is locally (almost) convex, large where there is
significant negative curvature. The ratio is NaN where ``λmax == 0``; it is the plain absolute ratio, so a
point where both eigenvalues are positive shows ``λmin / λmax`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..grid import Grid
from .operator import HessianOperator
from .extremes import MAXITER, largest, smallest, warm_start

__all__ = ["CurvatureMap", "curvature_map"]


@dataclass
class CurvatureMap:
    """λmax, λmin and ``|λmin/λmax|`` over a grid.

    Attributes:
        lmax (np.ndarray): float64, shaped like the grid (``(nx,)`` or ``(nx, ny)``).
        lmin (np.ndarray): float64, same shape.
        ratio (np.ndarray): ``|lmin / lmax|`` (NaN where ``lmax == 0``).
        hvps (np.ndarray): int64, HVPs used at each point (both ends together).
        tol (float): the eigensolver's relative tolerance.
    """

    lmax: np.ndarray
    lmin: np.ndarray
    ratio: np.ndarray
    hvps: np.ndarray
    tol: float


def curvature_map(operator_at: Callable[[np.ndarray], HessianOperator], grid: Grid, tol: float = 1e-6,
                  maxiter: int = MAXITER, ncv: int | None = None, warm: bool = True, seed: int = 0,
                  on_point: Callable[[int, int], None] | None = None) -> CurvatureMap:
    """λmax and λmin of the Hessian at every grid point, warm-starting each point from its neighbour.

    Args:
        operator_at: ``operator_at(c) -> HessianOperator`` at ``θ0 + Σ cᵢ dᵢ`` for a float64 coefficient
            vector ``c`` of length ``grid.ndim`` (the caller builds θ and binds it into the HVP).
        grid: the points (:class:`lossmap.grid.Grid`), visited in ``grid.serpentine()`` order.
        tol: relative tolerance: of λmax, and of λmax − λmin for λmin (see :mod:`~lossmap.curvature.extremes`).
        maxiter: Lanczos restart limit per eigenvalue.
        ncv: Lanczos vectors held before a restart (default ``min(n, 20)``).
        warm: start each point's Lanczos from the previous point's eigenvectors (False: random starts).
        seed: seed of the random starts.
        on_point: called as ``on_point(done, total)`` after each point (progress display).

    Returns:
        CurvatureMap: arrays shaped like the grid.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> g = Grid.from_specs("-1:1:3")
        >>> m = curvature_map(lambda c: matrix_operator(np.diag([1.0 + c[0], -2.0, 0.5])), g, tol=0)
        >>> np.round(m.lmax, 12).tolist(), np.round(m.lmin, 12).tolist()
        ([0.5, 1.0, 2.0], [-2.0, -2.0, -2.0])
    """
    coeffs = grid.coefficients()
    lmax = np.full(grid.size, np.nan)
    lmin = np.full(grid.size, np.nan)
    hvps = np.zeros(grid.size, dtype=np.int64)
    start: dict[str, np.ndarray | None] = {"top": None, "bottom": None}
    order = grid.serpentine()
    for done, p in enumerate(order, start=1):
        op = operator_at(np.array(coeffs[p], dtype=np.float64))
        top = largest(op, 1, tol, seed, v0=warm_start(start["top"], seed, "top"), ncv=ncv, maxiter=maxiter)
        bottom = smallest(op, 1, tol, seed, v0=warm_start(start["bottom"], seed, "bottom"), ncv=ncv,
                          sigma=float(top.values[0]), maxiter=maxiter)
        lmax[p], lmin[p], hvps[p] = top.values[0], bottom.values[0], top.hvps + bottom.hvps
        if warm:
            start = {"top": top.flat[:, 0], "bottom": bottom.flat[:, 0]}
        if on_point is not None:
            on_point(done, len(order))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(lmax != 0, np.abs(lmin / np.where(lmax != 0, lmax, 1.0)), np.nan)
    shape = grid.shape
    return CurvatureMap(lmax.reshape(shape), lmin.reshape(shape), ratio.reshape(shape), hvps.reshape(shape), float(tol))
