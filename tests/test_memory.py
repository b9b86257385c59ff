"""Whole-model work makes no full-size temporaries: every torch op the direction code runs is
recorded (a dispatch mode sees each op's outputs), and only the tensors that are kept may be large."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lossmap import space
from lossmap.directions import random_directions, target_directions
from lossmap.space import check_finite, tensor_hash

LIMIT = space._PIECE


class LargeOutputs(TorchDispatchMode):
    """Records (op, numel) for every op output with more than LIMIT values that is new memory."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor) and o.numel() > LIMIT and o.untyped_storage().data_ptr() not in inputs:
                self.seen.append((str(func.overloadpacket.__name__), o.numel()))
        return out


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(600, 3000), nn.ReLU(), nn.Linear(3000, 700))  # 1.8M and 2.1M values


def test_check_finite_and_hash_allocate_only_pieces():
    big = torch.randn(3 * LIMIT + 5)
    tensors = {"flat": big, "t": big[:-5].reshape(3072, -1).t(), "rows": big[: 2 * (LIMIT + 7)].reshape(-1, 2).t()}
    with LargeOutputs() as mode:
        check_finite(tensors)
        tensor_hash(tensors)
    assert mode.seen == []


def test_hash_feeds_contiguous_tensors_without_a_copy(monkeypatch):
    big = torch.randn(3 * LIMIT + 5)
    fed = []
    real = hashlib.sha256

    class Recorder:
        def __init__(self):
            self.h = real()

        def update(self, data):
            fed.append(data)
            self.h.update(data)

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(space.hashlib, "sha256", Recorder)
    tensor_hash({"x": big})
    arrays = [a for a in fed if isinstance(a, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == big.numel() * 4
    assert all(np.shares_memory(a, big.numpy()) for a in arrays)


@pytest.mark.parametrize("orthogonalize", [False, True])
def test_random_directions_allocate_only_the_directions(orthogonalize):
    net = _net()
    with LargeOutputs() as mode:
        random_directions(net, 2, seed=0, orthogonalize=orthogonalize, bias="keep")
    assert sorted(mode.seen) == sorted([("randn", 1_800_000), ("randn", 2_100_000)] * 2)


def test_target_plane_allocates_only_the_differences():
    a = {n: p.detach() for n, p in _net().named_parameters()}
    b = {n: t + 1.0 for n, t in a.items()}
    c = {n: t * 1.5 for n, t in a.items()}
    with LargeOutputs() as mode:
        target_directions(a, b, c)
    assert sorted(mode.seen) == sorted([("sub", 1_800_000), ("sub", 2_100_000)] * 2)
