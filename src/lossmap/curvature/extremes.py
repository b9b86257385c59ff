"""The two ends of a Hessian's spectrum with a tolerance that means the same thing at both ends.

Both ends are found by the largest eigenpairs of an operator (:mod:`~lossmap.curvature.lanczos`, which tests
each step's Ritz pairs as ARPACK does: ``‖H x − θ x‖ ≤ tol · |θ|``). At the top of a Hessian's spectrum ``|θ|`` is
large and the test is the usual relative accuracy. At the bottom the eigenvalues of a network's Hessian sit
near zero (most of its spectrum is a bulk at 0), where ``tol · |θ|`` is no accuracy at all and Lanczos runs
until its restart limit. So the smallest eigenvalues are found as the largest of ``σI − H`` with
``σ = λmax``: the same Krylov spaces (hence the same HVPs per step), but the test becomes
``‖H x − λ x‖ ≤ tol · (λmax − λ)`` — relative to the width of the spectrum. Ritz values are mapped back.

Starts are drawn from the caller's seed, so a run is reproducible; a warm start (a neighbour's vector) can
replace it. Restarts are capped (``maxiter``); a run that does not converge raises one line.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .._rng import generator
from ..errors import LossmapError
from .lanczos import lanczos_largest
from .operator import HessianOperator, quiet_blas
from .spectrum import Eigen, _check_k, _signed

__all__ = ["largest", "smallest", "shifted", "start", "warm_start", "MAXITER"]

#: Lanczos restarts allowed per call (each costs about (ncv − k) / 2 HVPs)
MAXITER = 300


def start(seed: int, n: int, end: str) -> np.ndarray:
    """A Gaussian start vector of length ``n`` from ``seed``, different for each ``end`` (``"top"``/``"bottom"``).

    Example:
        >>> bool(np.array_equal(start(0, 4, "top"), start(0, 4, "top")))
        True
    """
    return generator(seed, 0 if end == "top" else 1).standard_normal(n)


def warm_start(v0: np.ndarray | None, seed: int, end: str) -> np.ndarray | None:
    """A neighbour's eigenvector with an equal share of the seed's random start (None stays None).

    A Krylov method finds what its start touches: a neighbour's eigenvector alone can be (nearly) an
    eigenvector of a lower eigenvalue here, where another one has overtaken it, and Lanczos would converge to
    it. The random half gives every eigenvector the share a cold start gives it; on the seed CNN's curvature
    maps it costs no more products than the bare warm start.

    Example:
        >>> v = warm_start(np.array([3.0, 0.0, 0.0, 0.0]), 0, "top")
        >>> bool(v[0] > 1.0 and np.all(v[1:] != 0))
        True
    """
    if v0 is None or not np.any(v0):
        return None
    r = start(seed, v0.size, end)
    return v0 / np.linalg.norm(v0) + r / np.linalg.norm(r)


def shifted(op: HessianOperator, sigma: float) -> HessianOperator:
    """The operator ``σI − H`` on the same tensors (its products count one HVP each, on itself).

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> shifted(matrix_operator(np.diag([1.0, 3.0])), 5.0).matvec(np.ones(2)).tolist()
        [4.0, 2.0]
    """
    names = op.names

    def hvp(v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = op.hvp(v)
        return {n: float(sigma) * v[n].to(device=out[n].device, dtype=out[n].dtype) - out[n] for n in names}

    return HessianOperator(hvp, op.template, block=names)


def _lanczos(op: HessianOperator, k: int, tol: float, v0: np.ndarray, ncv: int | None, maxiter: int,
             seed: int) -> Eigen:
    """The ``k`` largest eigenpairs by :func:`~lossmap.curvature.lanczos.lanczos_largest`, as an :class:`Eigen`."""
    n = op.shape[0]
    _check_k(k, n)
    if ncv is not None and not (k < ncv <= n):
        raise LossmapError(f"ncv={ncv} Lanczos vectors for k={k} of n={n}: use k < ncv <= n")
    before = op.count
    with quiet_blas():
        values, flat, _ = lanczos_largest(op.matvec, n, k, tol, v0, ncv=ncv, maxiter=maxiter, seed=seed)
    flat = _signed(flat)
    return Eigen(values, flat, [op.unflatten(flat[:, i]) for i in range(k)], op.count - before, float(tol), "LA", False)


def largest(op: HessianOperator, k: int, tol: float = 1e-3, seed: int = 0, v0: np.ndarray | None = None,
            ncv: int | None = None, maxiter: int = MAXITER) -> Eigen:
    """The ``k`` largest eigenpairs (largest first), each to ``‖Hx − λx‖ ≤ tol·|λ|``.

    Args:
        op: the operator.
        k: how many, ``1 <= k < n``.
        tol: relative tolerance (0: machine precision).
        seed: seed of the start vector (used when ``v0`` is None or zero).
        v0: warm start (a flat vector).
        ncv, maxiter: Lanczos vectors held before a restart (default ``max(2k + 1, 20)``) and the restart limit.

    Returns:
        Eigen: as :func:`~lossmap.curvature.spectrum.top_eigen` (``which="LA"``).

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> largest(matrix_operator(np.diag([-3.0, 1.0, 2.0, 5.0])), 2, tol=0).values.round(12).tolist()
        [5.0, 2.0]
    """
    v0 = start(seed, op.shape[0], "top") if v0 is None or not np.any(v0) else v0
    return _lanczos(op, k, tol, v0, ncv, maxiter, seed)


def smallest(op: HessianOperator, k: int, tol: float = 1e-3, seed: int = 0, v0: np.ndarray | None = None,
             ncv: int | None = None, sigma: float | None = None, maxiter: int = MAXITER) -> Eigen:
    """The ``k`` smallest eigenpairs (most negative first), as the largest of ``σI − H`` (module docstring).

    Args:
        op: the operator.
        k: how many, ``1 <= k < n``.
        tol: tolerance relative to ``σ − λ`` (the spectrum's width when ``σ = λmax``).
        seed, v0, ncv, maxiter: as :func:`largest`.
        sigma: the shift, normally ``λmax``; None: found first by :func:`largest` (``k=1``; its HVPs are
            counted in the result's). A negative ``σ`` is raised to 0.

    Returns:
        Eigen: values most negative first, ``which="SA"``, ``hvps`` including the shift's.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> low = smallest(matrix_operator(np.diag([-3.0, 0.0, 0.0, 1e-9, 5.0])), 2, tol=1e-8)
        >>> (low.values.round(6) + 0.0).tolist()
        [-3.0, 0.0]
    """
    extra = 0
    if sigma is None:
        top = largest(op, 1, tol=tol, seed=seed, ncv=ncv, maxiter=maxiter)
        sigma, extra = float(top.values[0]), top.hvps
    sigma = max(float(sigma), 0.0)
    flipped = shifted(op, sigma)
    v0 = start(seed, op.shape[0], "bottom") if v0 is None or not np.any(v0) else v0
    eig = _lanczos(flipped, k, tol, v0, ncv, maxiter, seed)
    op.count += flipped.count
    return Eigen(sigma - eig.values, eig.flat, eig.vectors, eig.hvps + extra, float(tol), "SA", eig.dense)
