"""Stochastic trace estimates of a Hessian operator: Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

Probes are Rademacher vectors (independent ±1 entries) drawn from a numpy ``Generator`` seeded by the caller,
one probe at a time.

* Hutchinson: ``tr(H) ≈ mean_j zⱼᵀ H zⱼ``; exact for a diagonal ``H`` with a single probe (``zᵢ² = 1``).
* Hutch++ with ``m`` HVPs: ``s = m // 3`` products ``Y = H S`` give an orthonormal basis ``Q`` of ``Y``; the
  trace is ``tr(Qᵀ H Q)`` (``s`` HVPs, no noise given ``Q``) plus Hutchinson on the deflated
  ``(I − QQᵀ) H (I − QQᵀ)`` with the remaining ``m − 2s`` probes. Exact (up to rounding) when
  ``rank(H) <= m // 3``: then ``Q`` spans the range of ``H`` and the deflated part is zero. Memory: two
  ``(n, s)`` float64 arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .._rng import generator
from ..errors import LossmapError
from .operator import HessianOperator, quiet_blas

__all__ = ["TraceEstimate", "hutchinson", "hutchpp", "rademacher"]


@dataclass
class TraceEstimate:
    """A trace estimate.

    Attributes:
        estimate (float): the estimated trace.
        se (float): standard error of the stochastic part (sample standard deviation of the probe values over
            the square root of their count); NaN with a single probe.
        hvps (int): Hessian-vector products used.
        method (str): ``"hutchinson"`` or ``"hutch++"``.
        probes (int): Rademacher probes in the stochastic part.
    """

    estimate: float
    se: float
    hvps: int
    method: str
    probes: int


def rademacher(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent ±1 values (float64) from ``rng``.

    Example:
        >>> set(rademacher(np.random.default_rng(0), 100).tolist()) <= {-1.0, 1.0}
        True
    """
    return rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def _mean_se(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples, dtype=np.float64)
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se


def hutchinson(op: HessianOperator, probes: int, seed: int | np.random.Generator = 0) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(H)`` with ``probes`` Rademacher probes.

    Args:
        op: the operator.
        probes: number of probes (= HVPs), at least 1.
        seed: seed of the probes' generator (or a numpy ``Generator``).

    Returns:
        TraceEstimate: ``estimate = mean zᵀHz``, ``se = std(zᵀHz) / sqrt(probes)`` (NaN for one probe).

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> hutchinson(matrix_operator(np.diag([1.0, -2.0, 4.0])), probes=1).estimate
        3.0
    """
    if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 1:
        raise LossmapError(f"probes={probes!r}: use a whole number >= 1")
    rng, n, before = generator(seed), op.shape[0], op.count
    samples = []
    for _ in range(probes):
        z = rademacher(rng, n)
        samples.append(float(z @ op.matvec(z)))
    estimate, se = _mean_se(samples)
    return TraceEstimate(estimate, se, op.count - before, "hutchinson", int(probes))


@quiet_blas()
def hutchpp(op: HessianOperator, matvecs: int, seed: int | np.random.Generator = 0) -> TraceEstimate:
    """Hutch++ estimate of ``tr(H)`` with a budget of ``matvecs`` HVPs.

    ``s = matvecs // 3`` HVPs sketch the range, ``s`` more give ``tr(QᵀHQ)`` exactly, and the remaining
    ``matvecs − 2s`` Rademacher probes estimate the trace of the deflated rest. The standard error is that of
    this stochastic part (conditional on ``Q``). Exact when ``rank(H) <= matvecs // 3``.

    Args:
        op: the operator.
        matvecs: total HVP budget, at least 3.
        seed: seed of the probes' generator (or a numpy ``Generator``).

    Returns:
        TraceEstimate: ``estimate``, ``se`` (NaN with one deflated probe), ``hvps == matvecs``.

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> u = np.ones((4, 1)) / 2
        >>> round(hutchpp(matrix_operator(7.0 * u @ u.T), matvecs=3).estimate, 12)
        7.0
    """
    if isinstance(matvecs, bool) or not isinstance(matvecs, (int, np.integer)) or matvecs < 3:
        raise LossmapError(f"matvecs={matvecs!r}: Hutch++ needs a whole number >= 3 (a third sketches the range)")
    rng, n, before = generator(seed), op.shape[0], op.count
    s = int(matvecs) // 3
    sketch = np.empty((n, s), dtype=np.float64)
    for j in range(s):
        sketch[:, j] = op.matvec(rademacher(rng, n))
    q, _ = scipy.linalg.qr(sketch, mode="economic", overwrite_a=True, check_finite=False)
    del sketch
    exact = 0.0
    for j in range(q.shape[1]):
        exact += float(q[:, j] @ op.matvec(q[:, j]))
    samples = []
    for _ in range(int(matvecs) - (op.count - before)):  # at least matvecs - 2s >= 1 probes
        z = rademacher(rng, n)
        z -= q @ (q.T @ z)
        samples.append(float(z @ op.matvec(z)))
    rest, se = _mean_se(samples)
    return TraceEstimate(exact + rest, se, op.count - before, "hutch++", len(samples))
