"""Thick-restart Lanczos for the largest eigenpairs, testing convergence after every product.

ARPACK (``eigsh``) fills its whole basis (``ncv``, 20 by default) before it first tests a Ritz pair, so it
spends at least 20 Hessian-vector products even when the wanted pairs converged after 12, and a good start (a
neighbouring grid point's eigenvector) saves nothing. Here every step adds one product and then tests every
wanted Ritz pair with the residual that Lanczos gives for free: with ``H Q = Q T + f eₘᵀ`` and ``T = S Θ Sᵀ``,
``‖H y − θ y‖ = ‖f‖ · |S[m, i]|`` for the Ritz pair ``(θ, y = Q S[:, i])``. The test is ARPACK's,
``‖H y − θ y‖ ≤ tol · |θ|``, so results are comparable.

The basis is fully reorthogonalized (Gram–Schmidt twice, so it stays orthonormal to rounding in float64 even
with float32 products), and when it holds ``ncv`` vectors it restarts from the best Ritz vectors (Wu & Simon
2000): the kept pairs and the residual direction span a space whose projected matrix is an arrowhead, and the
steps go on from there. An invariant subspace (a zero residual) is left with a fresh random vector orthogonal
to the basis, so repeated eigenvalues are found with their multiplicity (a null space's zeros, for the most
negative end); the wanted values are settled when a fresh vector's Krylov space ends without changing them.

A Krylov method cannot tell whether an eigenvalue it has not seen lies above the ones it has; what it can do
is build a space large enough that one would show. Convergence is therefore not tested before ``min_steps``
products since the last fresh vector.

Example:
    >>> h = np.diag([-3.0, 1.0, 2.0, 5.0])
    >>> values, vectors, steps = lanczos_largest(lambda v: h @ v, 4, k=2, tol=0, v0=np.ones(4))
    >>> values.round(12).tolist(), steps
    ([5.0, 2.0], 4)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._rng import generator
from ..errors import LossmapError

__all__ = ["lanczos_largest", "orthogonalize", "default_ncv", "default_min_steps"]


def default_ncv(k: int, n: int) -> int:
    """Basis vectors held before a restart: ``max(2k + 1, 20)`` (ARPACK's default), at most ``n``."""
    return min(n, max(2 * k + 1, 20))


def default_min_steps(k: int, n: int) -> int:
    """Products before the first convergence test: ``k + 5``, at most ``n``."""
    return min(n, k + 5)


def orthogonalize(rows: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` minus its components along the orthonormal ``rows``, and those components (``rows @ w``).

    The last two rows (Lanczos' three-term recurrence) are removed first, then all rows once, and once more
    when that pass removed much (the test of Daniel, Gragg, Kaufman & Stewart 1976): one pass over the basis
    per step, two where orthogonality was at risk.

    Example:
        >>> w, h = orthogonalize(np.eye(3)[:2], np.array([1.0, 2.0, 3.0]))
        >>> w.tolist(), h.tolist()
        ([0.0, 0.0, 3.0], [1.0, 2.0])
    """
    upto = rows.shape[0]
    h = np.zeros(upto)
    for i in range(upto - 1, max(upto - 3, -1), -1):
        h[i] = rows[i] @ w
        w = w - h[i] * rows[i]
    for _ in range(2):
        before = np.linalg.norm(w)
        c = rows @ w
        w = w - c @ rows
        h += c
        if np.linalg.norm(w) > 0.7 * before:
            break
    return w, h


class _Basis:
    """An orthonormal Krylov basis (rows of ``q``, ``(ncv + 1) × n``) and its projected matrix ``T = Q H Qᵀ``."""

    def __init__(self, n: int, ncv: int, rng: np.random.Generator) -> None:
        self.q = np.empty((ncv + 1, n))
        self.t = np.zeros((ncv, ncv))
        self.size = 0  # vectors whose products are in t
        self.rng = rng

    def orthogonalize(self, w: np.ndarray, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """``w`` minus its components along the first ``upto`` vectors (:func:`orthogonalize`)."""
        return orthogonalize(self.q[:upto], w)

    def fresh(self, upto: int) -> np.ndarray:
        """A random unit vector orthogonal to the first ``upto`` vectors."""
        for _ in range(3):
            w, _ = self.orthogonalize(self.rng.standard_normal(self.q.shape[1]), upto)
            norm = np.linalg.norm(w)
            if norm > 1e-8:
                return w / norm
        raise LossmapError("Lanczos could not find a vector orthogonal to its basis: ask for fewer eigenvalues")

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenpairs of the projected matrix, largest first."""
        m = self.size
        theta, s = np.linalg.eigh((self.t[:m, :m] + self.t[:m, :m].T) / 2)
        return theta[::-1], s[:, ::-1]

    def vectors(self, s: np.ndarray) -> np.ndarray:
        """The Ritz vectors of the columns of ``s``, as columns (``n × len``)."""
        return (s.T @ self.q[: self.size]).T

    def restart(self, keep: int, theta: np.ndarray, s: np.ndarray) -> None:
        """Keep the best ``keep`` Ritz vectors and the residual direction (``q[size]``).

        ``T`` becomes ``diag(θ)`` with, in the next step's row and column, the couplings ``β·S[m, i]`` of the
        kept vectors to the residual direction (an arrowhead); that step's orthogonalization measures them.
        """
        m = self.size
        self.q[:keep] = s[:, :keep].T @ self.q[:m]
        self.q[keep] = self.q[m]
        self.t[:] = 0.0
        self.t[np.arange(keep), np.arange(keep)] = theta[:keep]
        self.size = keep


def lanczos_largest(matvec: Callable[[np.ndarray], np.ndarray], n: int, k: int, tol: float, v0: np.ndarray | None,
                    *, ncv: int | None = None, maxiter: int = 300, min_steps: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The ``k`` largest eigenpairs of a symmetric operator, each to ``‖H y − θ y‖ ≤ tol · |θ|``.

    Args:
        matvec: ``v ↦ H v`` on float64 vectors of length ``n``.
        n: the dimension.
        k: how many pairs, ``1 <= k < ncv`` (or ``k <= ncv = n``).
        tol: relative tolerance (0: float64 machine precision).
        v0: the start vector (None or zero: random from ``seed``).
        ncv: basis vectors held before a restart (:func:`default_ncv`); memory is ``n · (ncv + 1)`` floats.
        maxiter: restarts allowed.
        min_steps: products before the first test, and after every fresh vector (:func:`default_min_steps`).
        seed: seed of the random vectors.

    Returns:
        tuple: values ``(k,)`` largest first, unit vectors ``(n, k)``, products used.

    Raises:
        LossmapError: not converged within ``maxiter`` restarts.
    """
    ncv = default_ncv(k, n) if ncv is None else min(int(ncv), n)
    min_steps = default_min_steps(k, n) if min_steps is None else max(1, min(int(min_steps), n))
    if not (k < ncv or k <= ncv == n):
        raise LossmapError(f"ncv={ncv} basis vectors for k={k} eigenvalues: use ncv > k")
    eps = np.finfo(np.float64).eps
    tol = max(float(tol), eps)
    basis = _Basis(n, ncv, generator(seed, 7))
    start = None if v0 is None else np.asarray(v0, dtype=np.float64).reshape(n)
    basis.q[0] = basis.fresh(0) if start is None or not np.any(start) else start / np.linalg.norm(start)
    keep = max(k, min(ncv - 1, (ncv + k) // 2))
    steps, since_fresh, restarts, exhausted = 0, 0, 0, None
    while True:
        j = basis.size
        w = np.asarray(matvec(basis.q[j]), dtype=np.float64).reshape(n)
        steps, since_fresh = steps + 1, since_fresh + 1
        w, h = basis.orthogonalize(w, j + 1)
        basis.t[: j + 1, j] = basis.t[j, : j + 1] = h
        basis.size = j + 1
        beta = float(np.linalg.norm(w))
        theta, s = basis.ritz()
        scale = max(abs(theta[0]), abs(theta[-1]), eps)
        invariant = beta <= 64 * eps * scale
        # after an exhausted Krylov space, a fresh start that changes none of the wanted values settles them
        settled = (invariant and exhausted is not None and basis.size >= k
                   and np.allclose(theta[:k], exhausted, rtol=0, atol=tol * scale))
        if since_fresh >= min_steps or basis.size >= n or settled:
            residual = beta * np.abs(s[-1, :k]) if basis.size >= k else None
            if residual is not None and np.all(residual <= tol * np.maximum(np.abs(theta[:k]), eps * scale)):
                return theta[:k].copy(), basis.vectors(s[:, :k]), steps
        if basis.size >= n:
            raise LossmapError(f"Lanczos spanned all {n} dimensions without meeting tol={tol}: loosen tol")
        if invariant:  # the start's Krylov space is exhausted: go on from a fresh direction
            basis.q[basis.size] = basis.fresh(basis.size)
            since_fresh, exhausted = 0, theta[:k].copy() if basis.size >= k else np.full(k, np.nan)
        else:
            basis.q[basis.size] = w / beta
        if basis.size == ncv:
            restarts += 1
            if restarts > maxiter:
                raise LossmapError(f"Lanczos (k={k}) did not reach tol={tol} within {maxiter} restarts "
                                   f"({steps} products): raise maxiter or loosen tol")
            basis.restart(keep, theta, s)
