"""Hessian-vector products through kept gradient graphs (lossmap.curvature.kept) against the dense Hessian of
torch.autograd.functional.hessian: all batches kept, some kept within a memory budget, none kept; and what a
kept batch saves (its forward is not run again)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lossmap.curvature import dense_matrix
from lossmap.curvature.hessian import check_deterministic, hessian_operator
from lossmap.errors import LossmapError
from lossmap.objective import Objective

from oracles import dense_hessian


class WithSpare(nn.Module):
    """A tanh MLP (third derivatives do not vanish) with a parameter the loss never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
        self.spare = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.body(x)


def problem():
    torch.manual_seed(0)
    model = WithSpare().double()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (50,), generator=g)


def forward_counter(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("method", ["forward-over-reverse", "double-backward"])
def test_all_batches_kept_give_the_dense_hessian(method):
    model, x, y = problem()
    h = dense_hessian(model, x, y)
    obj = Objective(model, (x, y), batch_size=16)  # batches of 16, 16, 16 and 2
    op = hessian_operator(obj, method=method, keep_memory="1GB")
    np.testing.assert_allclose(dense_matrix(op), h, rtol=0, atol=1e-12 * np.abs(h).max())
    graphs = op.hvp.graphs
    assert len(graphs.kept) == 4 and not graphs.full and graphs.held == sum(graphs.sizes) > 0
    assert next(iter(obj.names)) == "spare" and np.all(dense_matrix(op)[:2] == 0)  # no curvature along it


def test_a_budget_keeps_the_first_batches_and_the_rest_are_fresh():
    model, x, y = problem()
    h = dense_hessian(model, x, y)
    sizes = hessian_operator(Objective(model, (x, y), batch_size=16), method="double-backward", keep_memory="1GB")
    sizes.matvec(np.ones(sizes.shape[0]))
    two = sum(sizes.hvp.graphs.sizes[:2])
    obj = Objective(model, (x, y), batch_size=16)
    op = hessian_operator(obj, method="double-backward", keep_memory=two)
    calls = forward_counter(model)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(op.shape[0])
    np.testing.assert_allclose(op.matvec(v), h @ v, rtol=0, atol=1e-12 * np.abs(h @ v).max())
    assert len(op.hvp.graphs.kept) == 2 and op.hvp.graphs.full and op.hvp.graphs.held <= two
    before = calls[0]
    for _ in range(3):
        v = rng.standard_normal(op.shape[0])
        np.testing.assert_allclose(op.matvec(v), h @ v, rtol=0, atol=1e-12 * np.abs(h @ v).max())
    assert calls[0] - before == 3 * 2  # only the two batches beyond the budget run forward again


def test_kept_batches_do_not_run_forward_again_and_no_budget_keeps_none():
    model, x, y = problem()
    obj = Objective(model, (x, y), batch_size=16)
    kept, fresh = hessian_operator(obj, keep_memory="1GB"), hessian_operator(obj, keep_memory=0)
    assert fresh.hvp.graphs is None
    calls = forward_counter(model)
    check_deterministic(kept)  # two passes over the data: a fresh product, then one that builds the graphs
    assert calls[0] == 2 * 4 and len(kept.hvp.graphs.kept) == 4
    v = np.random.default_rng(1).standard_normal(kept.shape[0])
    a = kept.matvec(v)
    for _ in range(2):
        np.testing.assert_allclose(kept.matvec(v), a, rtol=0, atol=0)  # the same graphs, the same products
    assert calls[0] == 2 * 4
    b = fresh.matvec(v)
    assert calls[0] == 3 * 4
    assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(a)


def test_a_bad_memory_budget_is_one_line():
    model, x, y = problem()
    with pytest.raises(LossmapError, match="memory budget"):
        hessian_operator(Objective(model, (x, y)), keep_memory="lots")
