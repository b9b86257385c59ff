"""Per-point running statistics of per-example values inside an engine: means, standard errors, paired errors.

An engine feeds every batch's per-example values of each metric, ``Tensor[P, M, batch]`` for ``P`` points
and ``M`` metrics, into a :class:`Running` state on the device (float64). The state keeps, for each point
and each of ``2M`` rows (the metrics, then their paired differences ``v(θ) − v(θ0)`` per example):

* ``total`` — the sum of the values, from which the point's mean is read (as the engines always did, so the
  means do not change and a ``+inf`` example gives ``+inf``, not NaN);
* ``mean`` and ``m2`` — the running mean and sum of squared deviations, updated batch-wise by the parallel
  formula of Chan, Golub & LeVeque (Welford's update for a batch): ``δ = mean_b − mean``,
  ``mean += δ·n_b/n``, ``m2 += m2_b + δ²·n_a·n_b/n``. A batch costs a handful of tensor operations on
  ``[P, 2M, batch]``, never a Python loop over its examples.

The paired rows need θ0's per-example values of the same examples: the engine computes them once (a full
pass at the centre, kept on the device in data order) and passes the batch's slice as ``reference``.

A metric that gives one value per batch (a loss without a per-example form, a metric returning the batch
mean) enters as that value repeated for each example of the batch: its mean is still exact, its spread
within a batch is not known, so its standard errors are not reported (:attr:`per_example` says which).

Evaluation to a stated precision (:class:`Precision`) stops a point once the loss's error with respect to
the evaluation set meets the tolerance: :func:`lossmap.uncertainty.sequential.should_stop` on the loss row,
with θ0's full-pass standard deviation as the pilot and no decision before ``min_samples``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import LossmapError
from ..losses import Loss, Metric, _per_example_of
from ..uncertainty.moments import Moments
from ..uncertainty.sequential import should_stop

__all__ = ["Running", "Precision", "start", "update", "moments", "stop_mask", "result", "loss_values", "metric_values",
           "n_columns"]

_F64 = torch.float64


@dataclass(frozen=True)
class Precision:
    """Evaluation to a stated precision: stop a point when ``z·SE_set(loss) ≤ tol`` (``tol·|mean|`` when
    ``relative``), but not before ``min_samples`` examples. ``SE_set`` is the standard error with respect to
    the evaluation set (finite-population corrected, 0 at a full pass, so a point never reads more)."""

    tol: float
    relative: bool = True
    z: float = 1.96
    min_samples: int = 512

    def __post_init__(self) -> None:
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0):
            raise LossmapError(f"precision {self.tol!r} must be a positive number, e.g. 0.01 (1 %) or an absolute tolerance")
        if not (isinstance(self.z, (int, float)) and math.isfinite(self.z) and self.z > 0):
            raise LossmapError(f"z={self.z!r} must be a positive number (1.96 for 95 %)")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 2:
            raise LossmapError(f"min_samples={self.min_samples!r} must be a whole number >= 2")

    def settings(self) -> dict[str, Any]:
        """The form recorded in a file's settings."""
        return {"tol": float(self.tol), "relative": bool(self.relative), "z": float(self.z), "min_samples": int(self.min_samples)}


@dataclass
class Running:
    """State of ``P`` points: ``n`` examples read ``[P, 1]``; ``total``, ``mean``, ``m2`` ``[P, 2M]`` (float64);
    ``seen``: examples offered so far (the offset of the next batch in the data, also for stopped points)."""

    n: Tensor
    total: Tensor
    mean: Tensor
    m2: Tensor
    seen: int = 0

    @property
    def metrics(self) -> int:
        return self.total.shape[1] // 2


def start(points: int, metrics: int, device: torch.device | str = "cpu") -> Running:
    """An empty state.

    Args:
        points (int): ``P``; metrics (int): ``M``; device: where the values will come from.

    Returns:
        Running: zero counts and sums.
    """
    z = torch.zeros((points, 2 * metrics), dtype=_F64, device=device)
    return Running(torch.zeros((points, 1), dtype=_F64, device=device), z, z.clone(), z.clone())


def update(state: Running, values: Tensor, reference: Tensor | None, keep: Tensor | None = None) -> None:
    """Add one batch (in place).

    Args:
        state (Running): the points' state.
        values (Tensor[P, M, batch]): per-example values of each metric at each point.
        reference (Tensor[M, batch] or None): θ0's values of the same examples (None: the paired rows take 0).
        keep (Tensor[bool, P] or None): points that take this batch (None: all).

    Examples:
        >>> st = start(1, 1)
        >>> update(st, torch.tensor([[[1.0, 2.0]]]), torch.tensor([[1.0, 1.0]]))
        >>> update(st, torch.tensor([[[3.0, 4.0]]]), torch.tensor([[3.0, 3.0]]))
        >>> result(st).round(6).tolist()   # mean, s/√n, paired s_d/√n, n
        [[2.5, 0.645497, 0.288675, 4.0]]
    """
    v = values.to(_F64)
    d = v - reference.to(_F64) if reference is not None else torch.zeros_like(v)
    x = torch.cat([v, d], dim=1)
    size = x.shape[-1]
    s = x.sum(-1)
    mu = s / size
    m2 = (x - mu.unsqueeze(-1)).square_().sum(-1)
    if keep is None:
        n_b = torch.full_like(state.n, float(size))
    else:
        k = keep.reshape(-1, 1)
        n_b = torch.where(k, float(size), 0.0).to(_F64)
        s, mu, m2 = (torch.where(k, t, 0.0) for t in (s, mu, m2))
    n_a, n = state.n, state.n + n_b
    w = n_b / n.clamp(min=1.0)
    delta = mu - state.mean
    state.mean += torch.where(n_b > 0, delta * w, 0.0)
    state.m2 += torch.where(n_b > 0, m2 + delta.square() * (n_a * w), 0.0)
    state.total += s
    state.n = n
    state.seen += size


def moments(state: Running, row: int = 0) -> Moments:
    """One row's state as :class:`~lossmap.uncertainty.moments.Moments` of shape ``[P]`` (e.g. the loss)."""
    return Moments(state.n[:, 0], state.mean[:, row], state.m2[:, row])


def stop_mask(state: Running, rule: Precision, pilot_sd: float | None, population: int) -> Tensor:
    """Tensor[bool, P]: points whose loss meets the stated precision (see :class:`Precision`)."""
    ok = should_stop(moments(state), 1, rule.tol, rule.relative, rule.z, 1, pilot_sd, population)
    return ok & (state.n[:, 0] >= min(rule.min_samples, population))


def n_columns(metrics: int) -> int:
    """Columns of :func:`result`: ``M`` means, ``M`` standard errors, ``M`` paired errors, the sample count."""
    return 3 * metrics + 1


def result(state: Running) -> np.ndarray:
    """The points' statistics rows.

    Returns:
        numpy array ``[P, 3M + 1]`` (float64): the means, ``s/√n`` of each metric, the paired ``s_d/√n`` of each
        metric, ``n`` (the columns of :func:`lossmap.uncertainty.pointwise.column_names`). An error is NaN where
        ``n < 2`` or a value was not finite.
    """
    m = state.metrics
    n = state.n
    means = state.total[:, :m] / n.clamp(min=1.0)
    sd = torch.sqrt(state.m2.clamp(min=0.0) / (n - 1).clamp(min=1.0))
    se = torch.where(n >= 2, sd / torch.sqrt(n.clamp(min=1.0)), math.nan)
    out = torch.cat([means, se, n], dim=1)
    return out.cpu().numpy()


def loss_values(loss: Loss, out: Any, targets: Any, size: int) -> tuple[Tensor, bool]:
    """``(Tensor[batch], per-example?)``: the loss of each example, or the batch mean repeated."""
    if loss.per_example is not None:
        return loss.per_example(out, targets), True
    value = torch.as_tensor(loss.fn(out, targets))
    return value.reshape(()).expand(size), False


def metric_values(metric: Metric, out: Any, targets: Any, size: int) -> tuple[Tensor, bool]:
    """``(Tensor[batch], per-example?)``: a metric's value for each example, or its batch mean repeated."""
    value = torch.as_tensor(metric.fn(out, targets))
    if value.dim() == 0:
        return value.expand(size), False
    if value.shape[0] == size:
        return _per_example_of(value.to(_F64)), True
    raise LossmapError(
        f"a metric returned a tensor of shape {tuple(value.shape)} for a batch of {size}: return the batch mean (a scalar) "
        "or one value per example (shape [batch])"
    )
