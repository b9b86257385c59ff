"""The Hessian of an :class:`~lossmap.objective.Objective`'s mean loss as a :class:`HessianOperator`.

:func:`hessian_operator` binds the objective's Hessian-vector product at θ0 (or any θ) to the operator that
the eigensolvers, trace and density estimators work on. The Hessian is that of the mean loss over the whole
data set (batches weighted by their size), with batch norm and dropout in evaluation mode, with respect to
the objective's selected *parameters* (buffers the objective moves, e.g. batch-norm running statistics, are
part of θ but not of the Hessian). HVPs are forward-over-reverse (``torch.func``) with double backward as
the fallback (:meth:`lossmap.objective.Objective.hvp`). After the probe, each batch's gradient graph is
built once and kept where memory allows (:mod:`~lossmap.curvature.kept`), so that a later product is one
backward pass through it.

Under ``torchrun`` each rank holds a shard of the data (:func:`lossmap.curvature.shards.shard`) and the
operator sums the ranks' HVPs, each weighted by its share of the samples (:class:`~lossmap.curvature.shards.RankSum`):
the objective's own mean divides by its shard's size, so ``H v = Σ_r (N_r / N) H_r v``.

:func:`check_deterministic` is the probe every analysis runs first: two HVPs with the same vector must agree
(to rounding), and be finite. Shuffled or randomly augmented data, or a forward that draws random numbers,
fail it with one line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .._rng import generator
from ..errors import LossmapError
from ..objective import HVP_METHODS, Objective
from ..data.source import budget_bytes
from .kept import KeptGraphs
from .operator import HessianOperator
from .trace import rademacher

__all__ = ["BoundHVP", "hessian_operator", "parameter_names", "check_deterministic", "probe_tolerance"]

log = logging.getLogger("lossmap")

Reduce = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def parameter_names(objective: Objective) -> list[str]:
    """The objective's selected tensors that are parameters of its model (the Hessian's coordinates).

    Args:
        objective: the objective.

    Returns:
        list[str]: names in the objective's order; raises :class:`LossmapError` when there are none.

    Example:
        >>> from torch import nn
        >>> obj = Objective(nn.Linear(2, 1), (torch.randn(4, 2), torch.randn(4, 1)))
        >>> parameter_names(obj)
        ['weight', 'bias']
    """
    params = {n for n, _ in objective.model.named_parameters()}
    names = [n for n in objective.names if n in params]
    if not names:
        raise LossmapError(
            f"no parameter is selected (the selection is {', '.join(objective.names[:4]) or 'empty'}): the Hessian "
            "needs at least one parameter tensor; check --tensors or pass a model with parameters"
        )
    return names


class BoundHVP:
    """``v ↦ H v`` of an objective at a fixed point: the function a :class:`HessianOperator` calls.

    Once the method is settled (by the probe, or given), products go through
    :class:`~lossmap.curvature.kept.KeptGraphs` when ``budget`` allows: each batch's gradient graph is built
    once, and a later product is one backward pass through it. The probe's first product is a fresh one; its
    second builds the kept graphs (a double-backward product over a second pass of the data), so the two are
    computed independently and the graphs cost no product of their own.

    Attributes:
        objective (Objective), point (dict): the objective and θ.
        names (list[str]): the parameters the Hessian covers.
        method (str): the HVP method; the probe may set it to the faster one.
        reduce: the sum over torchrun ranks, or None.
        graphs (KeptGraphs | None): the kept gradient graphs (None: every product fresh).
        fresh (bool): while True (:meth:`fresh_products`, the probe's first product), products are fresh.
    """

    def __init__(self, objective: Objective, point: dict[str, torch.Tensor], names: list[str], method: str,
                 reduce: Reduce | None, budget: int = 0) -> None:
        self.objective, self.point, self.names, self.method, self.reduce = objective, point, names, method, reduce
        self.graphs = KeptGraphs(objective, point, budget) if budget > 0 else None
        self.fresh = False

    @contextlib.contextmanager
    def fresh_products(self) -> Iterator[None]:
        """Every product fresh for the duration (the probe's first: it must not share the kept graphs)."""
        self.fresh = True
        try:
            yield
        finally:
            self.fresh = False

    def __call__(self, v: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        full = {n: v[n] if n in v else torch.zeros_like(self.point[n]) for n in self.objective.names}
        if self.graphs is not None and not self.fresh and self.method != "auto":
            out = self.graphs(self.objective._params(full), self.method)
        else:
            out = self.objective.hvp(full, theta=self.point, method=self.method)
            if self.method == "auto" and not self.fresh:  # settled by this first product (no probe ran)
                self.method = self.objective._hvp_method
        out = {n: out[n] for n in self.names}
        return self.reduce(out) if self.reduce is not None else out


def hessian_operator(objective: Objective, theta: Mapping[str, torch.Tensor] | None = None, *,
                     block: Sequence[str] | None = None, method: str = "auto", reduce: Reduce | None = None,
                     keep_memory: int | str | None = None) -> HessianOperator:
    """The Hessian of ``objective``'s mean loss at ``theta`` as a matrix-free symmetric operator.

    Args:
        objective: model, data, loss and tensor selection (:class:`~lossmap.objective.Objective`).
        theta: ``{name: tensor}`` over ``objective.names`` (default θ0); the point where the Hessian is taken.
        block: parameter names of a sub-block ``H[B, B]`` (e.g. one layer's, see
            :func:`~lossmap.curvature.operator.layer_blocks`); default all selected parameters.
        method: ``"auto"``, ``"forward-over-reverse"`` or ``"double-backward"`` (see ``Objective.hvp``;
            :func:`check_deterministic` turns ``"auto"`` into the faster of the two).
        reduce: sums a rank's HVP over the ranks of a torchrun job (:class:`~lossmap.curvature.shards.RankSum`);
            None: a single process.
        keep_memory: the memory the kept gradient graphs may hold (bytes or e.g. ``"2GB"``; 0: every product
            fresh; None: a quarter of the free memory), see :mod:`~lossmap.curvature.kept`.

    Returns:
        HessianOperator: ``matvec`` takes and returns flat float64 vectors over the block's parameters; its
        ``hvp`` is a :class:`BoundHVP`.

    Example:
        >>> from torch import nn
        >>> x = torch.randn(32, 3, dtype=torch.float64)
        >>> obj = Objective(nn.Linear(3, 1, bias=False).double(), (x, torch.randn(32, 1, dtype=torch.float64)))
        >>> op = hessian_operator(obj)
        >>> bool(np.allclose(op.matvec(np.eye(3)[0]), 2 * (x.T @ x)[:, 0].numpy() / 32))
        True
    """
    if method not in HVP_METHODS:
        raise LossmapError(f"HVP method {method!r} is unknown: choose one of {', '.join(HVP_METHODS)}")
    names = parameter_names(objective)
    point = objective._params(theta)
    template = {n: point[n] for n in names}
    bound = BoundHVP(objective, point, names, method, reduce, budget_bytes(keep_memory, objective.device))
    return HessianOperator(bound, template, names if block is None else block)


def probe_tolerance(op: HessianOperator) -> float:
    """The relative difference two HVPs with the same vector may show: rounding only (1e-9 in float64,
    1e-4 in lower precisions, which leaves room for the non-deterministic reductions of GPU kernels)."""
    return 1e-9 if all(t.dtype == torch.float64 for t in op.template.values()) else 1e-4


def _timed(op: HessianOperator, v: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = op.matvec(v)
    return out, time.perf_counter() - start


def check_deterministic(op: HessianOperator, seed: int = 0, rtol: float | None = None,
                        v: np.ndarray | None = None) -> int:
    """Two HVPs with the same random vector must be finite and agree to ``rtol``; raise one line otherwise.

    When the operator's method is ``"auto"`` the two products are one forward-over-reverse and one double
    backward: they must agree too, and the faster method is kept for the operator's later products (on
    small models double backward is often several times faster; on large ones forward-over-reverse).

    Args:
        op: the operator (its product count is left as it was: the probe is not part of any analysis).
        seed: seed of the probe's Rademacher vector.
        rtol: relative tolerance on ``‖Hv − Hv'‖ / ‖Hv‖`` (default :func:`probe_tolerance`).
        v: the probe's vector (normalized here; default a Rademacher vector from ``seed``). Give the start of the
            Lanczos run that follows: the operator remembers the second product
            (:meth:`~lossmap.curvature.operator.HessianOperator.remember`), so that run's first product is free.

    Returns:
        int: the HVPs the probe used (2).

    Example:
        >>> from lossmap.curvature.operator import matrix_operator
        >>> check_deterministic(matrix_operator(np.diag([1.0, 2.0])))
        2
    """
    before = op.count
    v = rademacher(generator(seed), op.shape[0]) if v is None else np.asarray(v, dtype=np.float64)
    v = v / np.linalg.norm(v)
    bound = op.hvp if isinstance(op.hvp, BoundHVP) else None
    choose = bound is not None and bound.method == "auto"
    with bound.fresh_products() if bound is not None else contextlib.nullcontext():
        first, t_first = _timed(op, v)  # "auto": forward-over-reverse, or double backward where forward AD fails
    _check_finite(first)
    if choose:
        tried = bound.method = bound.objective._hvp_method
        choose = tried == "forward-over-reverse"
        bound.method = "double-backward"
    second, t_second = _timed(op, v)  # a second pass over the data, building the kept graphs where there are any
    op.count = before
    scale = float(np.linalg.norm(first))
    diff = float(np.linalg.norm(first - second))
    tol = probe_tolerance(op) if rtol is None else float(rtol)
    if diff > tol * max(scale, np.finfo(np.float64).tiny):
        raise LossmapError(
            f"two Hessian-vector products with the same vector differ by {diff / max(scale, 1e-300):.2g} (relative): "
            "the loss is not a fixed function of the parameters (shuffled data, random augmentation or randomness in "
            "the forward); use data in a fixed order with evaluation transforms and a deterministic model"
        )
    if choose:
        bound.method = tried if t_first < t_second else "double-backward"
        bound.objective._hvp_method = bound.method
        log.info("HVP method: %s (forward-over-reverse %.3g s, double backward %.3g s on the probe)", bound.method,
                 t_first, t_second)
    op.remember(v, second)
    return 2


def _check_finite(hv: np.ndarray) -> None:
    if not np.all(np.isfinite(hv)):
        raise LossmapError(
            "the Hessian-vector product has non-finite values (NaN/inf) at this point: the loss or its derivatives "
            "overflow there; check the model, the data and the checkpoint"
        )
