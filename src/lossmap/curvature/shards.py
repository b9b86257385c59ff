"""Curvature under ``torchrun``: every rank holds a shard of the data, HVPs are summed across ranks.

:func:`shard` gives rank ``r`` of ``K`` the contiguous samples ``[r·N/K, (r+1)·N/K)`` of the data (after
keeping the first ``samples``), so the shards cover the data once. :class:`RankSum` turns a rank's HVP of
its own mean loss into the HVP of the mean over all the data: ``H v = Σ_r (N_r / N) H_r v`` (each
objective divides by its own shard's size ``N_r``). The sum travels over the job's Gloo group as float64
CPU tensors, in pieces of at most 2**20 values (a NCCL group is never used: its collectives hang without
error when a peer dies; see :mod:`lossmap.distributed`). Every rank ends with the same sum, so the
eigensolvers run the same steps everywhere and give the same vectors.

Example (under ``torchrun --nproc-per-node 2``; a single process gets ``None`` and works alone)::

    ranks = join(device)                    # None for a single process
    data = shard(data, ranks.rank, ranks.world) if ranks else data
    obj = Objective(model, data)
    op = hessian_operator(obj, reduce=RankSum(ranks.group, obj.source.total) if ranks else None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from ..errors import LossmapError
from ..space import pieces

__all__ = ["shard", "RankSum", "join", "bounds"]


def bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` samples among ``world`` ranks.

    Example:
        >>> [bounds(10, r, 3) for r in range(3)]
        [(0, 3), (3, 6), (6, 10)]
    """
    return n * rank // world, n * (rank + 1) // world


def _length(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        raise LossmapError(
            f"data of type {type(data).__name__} has no length, so it cannot be split among the ranks: pass a Dataset, "
            "a DataLoader over one, or an (inputs, targets) pair"
        ) from None


def shard(data: Any, rank: int, world: int, samples: int | None = None) -> Any:
    """Rank ``rank``'s contiguous shard of ``data`` (the first ``samples`` samples, or all of them).

    Args:
        data: an ``(inputs, targets)`` pair of tensors, a map-style ``Dataset``, or a ``DataLoader`` over one
            with a sequential sampler (a new loader over the shard keeps its batch size and collate function).
        rank, world: this rank and the number of ranks.
        samples: use only the first ``samples`` samples (None: all).

    Returns:
        The same kind of data, holding ``bounds(N, rank, world)`` of the ``N`` samples.

    Example:
        >>> x, y = torch.arange(10.0)[:, None], torch.arange(10)
        >>> shard((x, y), 1, 2, samples=8)[1].tolist()
        [4, 5, 6, 7]
    """
    if world < 1 or not 0 <= rank < world:
        raise LossmapError(f"rank {rank} of {world} ranks: the rank must lie in [0, {world})")
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        n = min(len(data[0]), samples) if samples is not None else len(data[0])
        lo, hi = _checked(n, rank, world)
        return data[0][lo:hi], data[1][lo:hi]
    if isinstance(data, DataLoader):
        return _shard_loader(data, rank, world, samples)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        n = _length(data) if samples is None else min(_length(data), samples)
        lo, hi = _checked(n, rank, world)
        if isinstance(data, TensorDataset):
            return TensorDataset(*(t[lo:hi] for t in data.tensors))
        return Subset(data, range(lo, hi))
    raise LossmapError(
        f"data of type {type(data).__name__} cannot be split among the ranks: pass a Dataset, a DataLoader over one, "
        "or an (inputs, targets) pair (or run one process)"
    )


def _checked(n: int, rank: int, world: int) -> tuple[int, int]:
    if n < world:
        raise LossmapError(f"{n} samples cannot be shared among {world} ranks: use more samples or fewer ranks")
    return bounds(n, rank, world)


def _shard_loader(loader: DataLoader, rank: int, world: int, samples: int | None) -> DataLoader:
    from ..data.source import _shuffles

    if _shuffles(loader):
        raise LossmapError(
            "the data is shuffled (a random sampler), but the Hessian needs the same samples at every product: "
            "use shuffle=False"
        )
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or loader.batch_size is None:
        raise LossmapError(
            "a DataLoader over an IterableDataset (or with a batch sampler) cannot be split among the ranks: pass a "
            "map-style Dataset"
        )
    part = shard(dataset, rank, world, samples)
    return DataLoader(part, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


class RankSum:
    """Sums the ranks' HVPs, each weighted by its share of the samples (see the module docstring).

    Args:
        group: a Gloo process group of the job (e.g. ``lossmap.distributed.setup(device).group``).
        samples: the number of samples this rank's objective averages over (``objective.source.total``).

    Attributes:
        total (int): the samples of all ranks together.
        weight (float): this rank's share ``samples / total``.
    """

    def __init__(self, group: Any, samples: int) -> None:
        import torch.distributed as dist

        self.group = group
        count = torch.tensor([float(samples)], dtype=torch.float64)
        dist.all_reduce(count, group=group)
        self.total = int(count.item())
        self.weight = float(samples) / self.total

    def __call__(self, hv: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``Σ_r (N_r / N) hv_r`` as float64 CPU tensors (the same on every rank)."""
        import torch.distributed as dist

        out: dict[str, torch.Tensor] = {}
        for name, t in hv.items():
            dst = torch.empty(t.shape, dtype=torch.float64)
            flat_dst = dst.view(-1)
            at = 0
            for piece in pieces(t.detach()):
                buf = piece.reshape(-1).to("cpu", torch.float64) * self.weight
                dist.all_reduce(buf, group=self.group)
                flat_dst[at : at + buf.numel()] = buf
                at += buf.numel()
            out[name] = dst
        return out


def join(device: str | torch.device) -> Any:
    """This process's place in a torchrun job (:class:`lossmap.distributed.Context`: rank, world, device,
    Gloo group), or None for a single process."""
    from ..distributed import setup

    return setup(device)
