"""A shared random order of the evaluation samples, for evaluation to a stated precision.

A point that stops early has read a prefix of the data. Its standard error with respect to the whole set
(and the stopping rule built on it) assumes that prefix is a random draw: data in a meaningful order (MNIST's
test set puts its cleaner half first; many sets are sorted by class) would make every prefix biased. So
before evaluation to a stated precision the cached samples are put in one random order drawn from a
``torch.Generator`` seeded with ``seed``; every point reads them in that same order, so differences
between points stay paired. The data's fingerprint stays that of the data as given (the order is part of
the run's settings). Data that is streamed, or whose batches cannot be joined (not tuples of tensors), keeps
its own order, with a warning: it should then be in random order already.
"""

from __future__ import annotations

import logging

import torch

from ..data.batches import _joinable, make_batch
from ..data.source import Cached, Source

__all__ = ["shuffled", "Shuffled"]

log = logging.getLogger("lossmap")


class Shuffled(Cached):
    """Cached batches in a random order; :meth:`fingerprint` is that of the data as given. ``max_batch`` (the
    batch size) caps how far the fast engine may join batches: a point stops only at the end of a batch."""

    def __init__(self, batches, nondeterministic: bool, fingerprint: str, seed: int) -> None:
        super().__init__(batches, nondeterministic)
        self._fingerprint, self.seed = fingerprint, seed
        self.max_batch = max(b.size for b in self.batches)

    def fingerprint(self) -> str:
        return self._fingerprint


def shuffled(source: Source, seed: int = 0) -> tuple[Source, bool]:
    """``(source in a random order, True)``, or ``(source, False)`` where it cannot be reordered.

    Args:
        source (Source): the evaluation data.
        seed (int): seeds the permutation.

    Returns:
        tuple: the reordered source (same batch size, same samples) and whether it was reordered.

    Examples:
        >>> from lossmap.data.source import make_source
        >>> src = make_source((torch.arange(10.0)[:, None], torch.arange(10)), batch_size=4)
        >>> out, done = shuffled(src, seed=0)
        >>> done, sorted(torch.cat([b.targets for b in out]).tolist()) == list(range(10))
        (True, True)
    """
    if not isinstance(source, Cached) or not _joinable([b.raw for b in source.batches]):
        log.warning("evaluation to a stated precision reads the data in its own order (it is %s): it should be in a "
                    "random order, or the errors of points that stop early are not what they claim",
                    "streamed" if source.streamed else "not a tuple of tensors per batch")
        return source, False
    raws = [b.raw for b in source.batches]
    joined = [torch.cat(parts) for parts in zip(*raws)]
    total = joined[0].shape[0]
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed))).to(joined[0].device)
    mixed = [t.index_select(0, perm) for t in joined]
    size = source.batches[0].size
    kind = type(raws[0])
    batches = [make_batch(kind(t[lo : lo + size] for t in mixed), min(size, total - lo)) for lo in range(0, total, size)]
    return Shuffled(batches, source.nondeterministic, source.fingerprint(), int(seed)), True
