"""Hessian-vector products at a fixed point, with each batch's gradient graph built once and kept.

Every analysis takes many products at one θ: Lanczos tens, Hutch++ tens, the spectral density hundreds. A
fresh double-backward product runs the batch's forward pass and its gradient with ``create_graph=True``, then
differentiates ``⟨∇L, v⟩`` once more; but the gradient's graph at θ is the same for every ``v``. Kept, each
later product is a single backward pass through it, ``∂(∇L)ᵀ v`` (``= H v``, the Hessian being symmetric):
on the seed CNN with batches of 250 MNIST images (CPU, 2 threads) about two thirds of a fresh product
(``make bench`` measures it). It is plain autograd, so every model that double backward serves is served.

The kept graphs hold the tensors autograd saved for them (about 0.6 MB per image on that CNN, counted as they
are saved), so batches are kept in order while their total stays within a budget (by default a quarter of
the free memory of the device, or of the host); the batches beyond it get fresh products, and a log line says
how many were kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..data.source import Cached
from ..objective import Objective

__all__ = ["KeptGraphs"]

log = logging.getLogger("lossmap")

Params = dict[str, torch.Tensor]


class _Counter:
    """Bytes of the distinct storages autograd saves while it is active (``saved_tensors_hooks``), other than
    the storages in ``known`` (which live anyway); each counted storage joins ``known``."""

    def __init__(self, known: set[int]) -> None:
        self.known, self.bytes = known, 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without plain storage: count its elements
            key, size = id(t), t.nelement() * t.element_size()
        if key not in self.known:
            self.known.add(key)
            self.bytes += size
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


class KeptGraphs:
    """``v ↦ H v`` at ``point``, batch by batch: through kept gradient graphs (within ``budget`` bytes) and fresh.

    Args:
        objective: the objective (its data, loss and model).
        point: θ over ``objective.names``.
        budget: bytes the kept graphs may hold (0: keep none).

    Attributes:
        kept (list): per kept batch, its gradient (a graph) and the positions of the tensors it depends on.
        sizes (list[int]): bytes each kept graph holds, in data order.
        full (bool): the budget is spent (later batches are computed fresh).

    Example:
        >>> from torch import nn
        >>> x = torch.randn(12, 3, dtype=torch.float64)
        >>> obj = Objective(nn.Linear(3, 1, bias=False).double(), (x, torch.zeros(12, 1, dtype=torch.float64)), batch_size=4)
        >>> graphs = KeptGraphs(obj, obj.theta0, budget=2**30)
        >>> hv = graphs({"weight": torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)}, "double-backward")
        >>> bool(torch.allclose(hv["weight"][0], 2 * (x.T @ x)[:, 0] / 12)), len(graphs.kept)
        (True, 3)
    """

    def __init__(self, objective: Objective, point: Mapping[str, torch.Tensor], budget: int) -> None:
        self.objective = objective
        self.names = list(point)
        self.leaves = {n: t.detach().requires_grad_(True) for n, t in point.items()}
        self.budget = int(budget)
        self.kept: list[tuple[list[torch.Tensor], list[int]]] = []
        self.sizes: list[int] = []
        self.full = budget <= 0
        self._known = {t.untyped_storage().data_ptr() for t in self.leaves.values()}

    @property
    def held(self) -> int:
        """Bytes the kept graphs hold."""
        return sum(self.sizes)

    def __call__(self, v: Params, method: str) -> Params:
        """``H v``: kept batches by one backward pass each, the others by ``method`` (fresh)."""
        out = {n: torch.zeros_like(t) for n, t in self.leaves.items()}
        fresh = self.objective._batch_hvp(method, {n: t.detach() for n, t in self.leaves.items()}, v)
        count = [0]

        def one(b: Any, stage: Any) -> Params:
            graph = self._graph(count[0], b, stage)
            count[0] += 1
            return self._through(graph, v) if graph is not None else fresh(b, stage)

        for part in self.objective._over_data(one):
            for n in out:
                out[n] += part[n]
        return out

    def _graph(self, i: int, b: Any, stage: Any) -> tuple[list[torch.Tensor], list[int]] | None:
        """Batch ``i``'s kept gradient: kept before, built now (the first time, within the budget), or None."""
        if i < len(self.kept):
            return self.kept[i]
        if self.full or i > len(self.kept):
            return None
        # a cached batch lives in the data anyway; a streamed one lives on in the graph, so it counts
        counter = _Counter(self._known | (_storages(b) if isinstance(self.objective.source, Cached) else set()))
        leaves = [self.leaves[n] for n in self.names]
        with torch.enable_grad(), counter.hooks():
            loss = self.objective._batch_loss(self.leaves, b, stage)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        used = [k for k, g in enumerate(grads) if g is not None and g.requires_grad]
        graph = ([grads[k] for k in used], used)
        size = counter.bytes + sum(grads[k].untyped_storage().nbytes() for k in used)
        if self.held + size > self.budget:  # used for this product only
            self.full = True
            log.info("Hessian-vector products: %d batch graph(s) kept (%.0f MB); the memory budget (%.0f MB) holds no "
                     "more, the rest are computed fresh", len(self.kept), self.held / 2**20, self.budget / 2**20)
            return graph
        self._known |= counter.known
        self.sizes.append(size)
        self.kept.append(graph)
        return graph

    def _through(self, graph: tuple[list[torch.Tensor], list[int]], v: Params) -> Params:
        """``∂(∇L_b)ᵀ v`` by one backward pass through a batch's kept gradient graph."""
        grads, used = graph
        if not used:
            return {n: torch.zeros_like(t) for n, t in self.leaves.items()}
        leaves = [self.leaves[n] for n in self.names]
        hv = torch.autograd.grad(grads, leaves, grad_outputs=[v[self.names[k]] for k in used], retain_graph=True,
                                 allow_unused=True)
        return {n: h.detach() if h is not None else torch.zeros_like(self.leaves[n]) for n, h in zip(self.names, hv)}


def _storages(b: Any) -> set[int]:
    """Storages of a batch's tensors (its inputs and targets)."""
    found: set[int] = set()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            found.add(x.untyped_storage().data_ptr())
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, Mapping):
            for y in x.values():
                visit(y)

    visit(getattr(b, "inputs", None))
    visit(getattr(b, "targets", None))
    return found
