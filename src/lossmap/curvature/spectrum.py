"""Extreme eigenvalues and eigenvectors of a Hessian operator (Lanczos through ``scipy.sparse.linalg.eigsh``).

The largest algebraic eigenvalues (``which="LA"``) are what sharpness means; the smallest algebraic ones
(``which="SA"``, the most negative first) show saddles. Both are the algebraic ends of the spectrum, not the
largest ``|λ|`` a plain power iteration finds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from ..errors import LossmapError
from .operator import HessianOperator, quiet_blas

__all__ = ["Eigen", "top_eigen", "dense_matrix", "start_vector", "WHICH"]

#: the ends of the spectrum :func:`top_eigen` finds
WHICH = ("LA", "SA")


@dataclass
class Eigen:
    """Eigenpairs of one end of the spectrum.

    Attributes:
        values (np.ndarray): float64 ``(k,)``; largest first for ``"LA"``, most negative first for ``"SA"``.
        flat (np.ndarray): float64 ``(n, k)`` unit eigenvectors (column ``i`` belongs to ``values[i]``), each
            signed so that its largest-magnitude entry is positive.
        vectors (list[dict[str, torch.Tensor]]): the same eigenvectors shaped like the operator's template.
        hvps (int): Hessian-vector products used.
        tol (float): the relative tolerance asked of ``eigsh`` (0: machine precision).
        which (str): ``"LA"`` or ``"SA"``.
        dense (bool): True when the matrix was built column by column and diagonalized instead.
    """

    values: np.ndarray
    flat: np.ndarray
    vectors: list[dict[str, torch.Tensor]]
    hvps: int
    tol: float
    which: str
    dense: bool


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise LossmapError(f"k={k!r} is not a whole number: ask for k >= 1 eigenvalues")
    if k < 1:
        raise LossmapError(f"k={k} eigenvalues: ask for at least 1")
    if k >= n:
        raise LossmapError(f"k={k} eigenvalues of a Hessian with {n} parameters: ask for fewer than {n}")


def _signed(vectors: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def start_vector(v0: np.ndarray | Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None,
                 op: HessianOperator) -> np.ndarray | None:
    """A flat starting vector for Lanczos from a flat array, one tensor dict or several (summed).

    Args:
        v0: None, a flat array of length ``n`` (or ``(n, k)``, whose columns are summed), a dict shaped like the
            operator's template, or a list of such dicts.
        op: the operator (gives the names and order).

    Returns:
        np.ndarray | None: float64 ``(n,)``, or None when ``v0`` is None or sums to zero.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> start_vector(np.eye(3)[:, :2], matrix_operator(np.eye(3))).tolist()
        [1.0, 1.0, 0.0]
    """
    if v0 is None:
        return None
    if isinstance(v0, Mapping):
        flat = op.flatten(v0)
    elif isinstance(v0, np.ndarray):
        flat = v0.reshape(v0.shape[0], -1).sum(axis=1) if v0.ndim == 2 else v0.reshape(-1)
        flat = np.asarray(flat, dtype=np.float64)
    else:
        flat = np.sum([op.flatten(v) for v in v0], axis=0)
    if flat.shape != (op.shape[0],):
        raise LossmapError(f"v0 has {flat.size} values, the operator {op.shape[0]}: pass a vector shaped like θ0")
    if not np.all(np.isfinite(flat)):
        raise LossmapError("v0 has non-finite values: pass a finite starting vector or none")
    return flat if np.any(flat) else None


def dense_matrix(op: HessianOperator) -> np.ndarray:
    """The operator as a dense symmetric matrix, built from ``n`` HVPs with the unit vectors and symmetrized.

    Args:
        op: the operator (keep ``n`` small: this costs ``n`` HVPs and ``n²`` floats).

    Returns:
        np.ndarray: float64 ``(n, n)``, ``(M + Mᵀ) / 2`` of the columns ``M[:, j] = H e_j``.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> dense_matrix(matrix_operator(np.diag([1.0, 2.0]))).tolist()
        [[1.0, 0.0], [0.0, 2.0]]
    """
    n = op.shape[0]
    m = np.empty((n, n), dtype=np.float64)
    e = np.zeros(n)
    for j in range(n):
        e[j] = 1.0
        m[:, j] = op.matvec(e)
        e[j] = 0.0
    return (m + m.T) / 2


def _order(values: np.ndarray, vectors: np.ndarray, which: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(values)
    if which == "LA":
        idx = idx[::-1]
    idx = idx[:k]
    return values[idx], vectors[:, idx]


def _arpack(op: HessianOperator, k: int, which: str, tol: float, v0, maxiter, ncv) -> tuple[np.ndarray, np.ndarray]:
    try:
        with quiet_blas():
            return eigsh(op.linear_operator(), k=k, which=which, tol=tol, v0=v0, maxiter=maxiter, ncv=ncv)
    except ArpackNoConvergence:
        raise LossmapError(
            f"Lanczos (eigsh, which={which}, k={k}) did not reach tol={tol} within maxiter={maxiter}: "
            "raise maxiter or loosen tol"
        ) from None


def top_eigen(op: HessianOperator, k: int = 1, which: str = "LA", tol: float = 1e-6,
              v0: np.ndarray | Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None = None,
              maxiter: int | None = None, ncv: int | None = None) -> Eigen:
    """The ``k`` largest (``"LA"``) or smallest (``"SA"``) eigenvalues of a symmetric operator, with eigenvectors.

    Runs implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``) on the operator. ARPACK needs
    ``k < n - 1``; for ``k == n - 1`` the operator is instead built as a dense matrix from ``n`` HVPs (unit
    vectors) and diagonalized with ``numpy.linalg.eigh`` (``dense=True`` in the result). ``k >= n`` is an error.

    Args:
        op: the operator (e.g. :class:`~lossmap.curvature.operator.HessianOperator`).
        k: how many eigenpairs, ``1 <= k < n``.
        which: ``"LA"`` (largest algebraic) or ``"SA"`` (smallest algebraic, i.e. most negative).
        tol: relative accuracy of the eigenvalues asked of ARPACK (``0``: machine precision). With float32
            HVPs, tolerances below ~1e-6 may not be reachable.
        v0: warm start: a flat vector, a tensor dict or a list of them (summed), e.g. the eigenvectors of a
            neighbouring point. Default: ARPACK's random start.
        maxiter: ARPACK's restart limit (default ``10 n``).
        ncv: Lanczos vectors kept between restarts (default ``min(n, max(2k + 1, 20))``); each restart costs
            up to ``ncv - k`` HVPs.

    Returns:
        Eigen: values, flat and dict eigenvectors, HVPs used, tolerance.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> op = matrix_operator(np.diag([-3.0, 1.0, 2.0, 5.0]))
        >>> top_eigen(op, k=2, which="LA", tol=0).values.round(12).tolist()
        [5.0, 2.0]
        >>> top_eigen(op, k=1, which="SA", tol=0).values.round(12).tolist()
        [-3.0]
    """
    n = op.shape[0]
    _check_k(k, n)
    if which not in WHICH:
        raise LossmapError(f"which={which!r}: use 'LA' (largest eigenvalues) or 'SA' (most negative)")
    if not (tol >= 0):
        raise LossmapError(f"tol={tol}: use a relative tolerance >= 0 (0: machine precision)")
    if ncv is not None and not (k < ncv <= n):
        raise LossmapError(f"ncv={ncv} Lanczos vectors for k={k} of n={n}: use k < ncv <= n")
    start = start_vector(v0, op)
    before = op.count
    dense = k >= n - 1
    if dense:
        values, vectors = np.linalg.eigh(dense_matrix(op))
    else:
        values, vectors = _arpack(op, k, which, tol, start, maxiter, ncv)
    values, vectors = _order(values, vectors, which, k)
    vectors = _signed(vectors)
    dicts = [op.unflatten(vectors[:, i]) for i in range(k)]
    return Eigen(values, vectors, dicts, op.count - before, float(tol), which, dense)
