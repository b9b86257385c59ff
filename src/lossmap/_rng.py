"""numpy random generators from the seeds users give: any whole number, negative ones too (``torch.manual_seed``
takes them), where numpy's seed sequences take non-negative ones only."""

from __future__ import annotations

import numpy as np

from .errors import LossmapError

__all__ = ["generator"]


def generator(seed: int | np.random.Generator, *stream: int) -> np.random.Generator:
    """``numpy.random.default_rng`` of ``seed``, and of the ``stream`` numbers that keep a caller's draws apart.

    A negative seed is taken modulo 2**64: every non-negative seed draws exactly what numpy draws for it, and
    each negative one draws numbers of its own. A Generator is returned as it is.

    Example:
        >>> generator(-1).random() == generator(2**64 - 1).random() != generator(1).random()
        True
        >>> generator(5, 2).random() == np.random.default_rng([5, 2]).random()
        True
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise LossmapError(f"seed={seed!r}: pass a whole number (or a numpy Generator)")
    s = int(seed)
    s = s % 2**64 if s < 0 else s
    return np.random.default_rng([s, *stream] if stream else s)
