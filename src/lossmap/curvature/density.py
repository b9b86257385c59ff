"""The spectral density of a Hessian by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017;
Ghorbani, Krishnan & Xiao 2019).

From a random unit vector ``v``, ``m`` Lanczos steps build a tridiagonal ``T`` whose eigenvalues (Ritz values)
``θₖ`` are quadrature nodes and whose eigenvectors' squared first components ``τₖ²`` are the weights: the
measure ``Σₖ τₖ² δ(λ − θₖ)`` approximates ``Σᵢ (uᵢᵀv)² δ(λ − λᵢ)``, whose expectation over ``v`` is the
spectral density ``(1/n) Σᵢ δ(λ − λᵢ)``. One run's weights sum to 1; runs are averaged.

Lanczos here keeps all its vectors and reorthogonalizes fully at every step
(:func:`~lossmap.curvature.lanczos.orthogonalize`), so the nodes are exact eigenvalues once ``m`` reaches the
number of distinct eigenvalues that ``v`` touches; it stops early when the Krylov space becomes invariant
(``β ≤ breakdown · ‖T‖``). Memory: ``m`` float64 vectors of length ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .._rng import generator
from ..errors import LossmapError
from .lanczos import orthogonalize
from .operator import HessianOperator, quiet_blas
from .trace import rademacher

__all__ = ["SLQ", "lanczos", "slq"]


@dataclass
class SLQ:
    """Quadrature nodes and weights of stochastic Lanczos quadrature, pooled over runs.

    Attributes:
        nodes (np.ndarray): float64 Ritz values of all runs, concatenated (run 0 first, ascending in each run).
        weights (np.ndarray): float64, each run's ``τₖ²`` divided by the number of runs (they sum to 1).
        run (np.ndarray): int, the run each node came from.
        hvps (int): Hessian-vector products used (one per Lanczos step).
        steps (int): Lanczos steps asked for per run (a run stops earlier at a breakdown).
    """

    nodes: np.ndarray
    weights: np.ndarray
    run: np.ndarray
    hvps: int
    steps: int


def lanczos(op: HessianOperator, steps: int, start: np.ndarray, breakdown: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos tridiagonalization with full reorthogonalization.

    Args:
        op: the symmetric operator.
        steps: at most this many steps (HVPs); capped at ``n``.
        start: nonzero starting vector (normalized here).
        breakdown: stop when ``β ≤ breakdown · (max|α| + max β)`` (an invariant subspace was found).

    Returns:
        tuple[np.ndarray, np.ndarray]: the diagonal ``α`` (length ``j``) and off-diagonal ``β`` (length
        ``j − 1``) of ``T``, ``j <= steps`` the steps made.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> a, b = lanczos(matrix_operator(np.diag([1.0, 1.0, 3.0])), steps=3, start=np.ones(3))
        >>> len(a), np.round(scipy.linalg.eigvalsh_tridiagonal(a, b), 12).tolist()
        (2, [1.0, 3.0])
    """
    n = op.shape[0]
    m = min(int(steps), n)
    v = np.asarray(start, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    if v.shape != (n,) or not math.isfinite(norm) or norm == 0:
        raise LossmapError(f"the Lanczos start vector must be a finite nonzero vector of {n} values")
    basis = np.empty((m, n), dtype=np.float64)
    alpha: list[float] = []
    beta: list[float] = []
    v = v / norm
    for j in range(m):
        basis[j] = v
        w, h = orthogonalize(basis[: j + 1], op.matvec(v))
        alpha.append(float(h[j]))
        b = float(np.linalg.norm(w))
        scale = max(abs(a) for a in alpha) + (max(beta) if beta else 0.0)
        if j == m - 1 or b <= breakdown * scale:
            break
        beta.append(b)
        v = w / b
    return np.asarray(alpha), np.asarray(beta)


def _quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if alpha.size == 1:
        return alpha.copy(), np.ones(1)
    values, vectors = scipy.linalg.eigh_tridiagonal(alpha, beta)
    return values, vectors[0] ** 2


@quiet_blas()
def slq(op: HessianOperator, steps: int, runs: int = 1, seed: int | np.random.Generator = 0,
        starts: np.ndarray | None = None, breakdown: float = 1e-10) -> SLQ:
    """Stochastic Lanczos quadrature: nodes and weights of the spectral density.

    Args:
        op: the symmetric operator.
        steps: Lanczos steps (HVPs) per run, at least 1 (capped at ``n``).
        runs: independent random starting vectors (Rademacher, normalized), at least 1.
        seed: seed of the starting vectors' generator (or a numpy ``Generator``).
        starts: optional explicit starting vectors, ``(runs, n)``; overrides ``runs`` and ``seed``.
        breakdown: relative size of ``β`` below which a run stops (see :func:`lanczos`).

    Returns:
        SLQ: pooled nodes, weights (summing to 1), run index, HVP count.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> q = slq(matrix_operator(np.diag([-1.0, 2.0, 2.0, 5.0])), steps=3, starts=np.eye(4))
        >>> np.round(q.nodes, 12).tolist(), q.weights.tolist()
        ([-1.0, 2.0, 2.0, 5.0], [0.25, 0.25, 0.25, 0.25])
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise LossmapError(f"steps={steps!r}: use a whole number of Lanczos steps >= 1")
    n, before = op.shape[0], op.count
    if starts is None:
        if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
            raise LossmapError(f"runs={runs!r}: use a whole number of runs >= 1")
        rng = generator(seed)
        starts = [rademacher(rng, n) for _ in range(int(runs))]
    starts = np.asarray(starts, dtype=np.float64)
    starts = starts[None] if starts.ndim == 1 else starts
    if starts.ndim != 2 or starts.shape[0] == 0 or starts.shape[1] != n:
        raise LossmapError(f"starts of shape {starts.shape}: pass an array of shape (runs, {n}) with runs >= 1")
    nodes, weights, run = [], [], []
    for r, start in enumerate(starts):
        t_nodes, t_weights = _quadrature(*lanczos(op, steps, start, breakdown))
        nodes.append(t_nodes)
        weights.append(t_weights / len(starts))
        run.append(np.full(t_nodes.size, r))
    return SLQ(np.concatenate(nodes), np.concatenate(weights), np.concatenate(run), op.count - before, int(steps))
