"""Running mean and variance of per-example losses, for many points and metrics at once.

A landscape point's loss is the mean of per-example losses over the samples it saw. :class:`Moments` keeps,
for every element of a state shape ``S`` (points × metrics, say), the count ``n``, the mean and ``M2`` (the sum
of squared deviations from the mean) in float64, so that the standard error comes with the mean at no extra
pass over the data.

Updates
    :meth:`Moments.update` takes a batch of per-example values ``Tensor[*S, batch]``. The batch's own count,
    mean and ``M2`` are computed in one vectorized two-pass step and combined with the state by the parallel
    formula of Chan, Golub & LeVeque (1979)::

        δ = mean_b − mean_a,   n = n_a + n_b,
        mean = mean_a + δ·n_b/n,   M2 = M2_a + M2_b + δ²·n_a·n_b/n

    so a batch costs O(batch) tensor work and no Python loop over its examples. The same formula merges the
    states of torchrun ranks (:func:`merge`, :func:`merge_gathered`); :meth:`Moments.to_tensor` packs a state
    into one small float64 tensor for ``all_gather``.

Paired differences
    Every point of a landscape sees the same samples in the same order, so the difference
    ``L(θ) − L(θ0)`` can be averaged per sample. Pass the centre's per-example values as ``reference`` and the
    state also keeps the mean and ``M2`` of the per-sample differences: their standard error is far smaller
    than that of either loss when the two are correlated (they usually are: hard examples are hard at every
    nearby point).

Two standard errors
    :func:`standard_error` is ``s/√n`` with the sample standard deviation ``s`` (divisor ``n − 1``): the error of
    the mean as an estimate of the mean over the distribution the data were drawn from.
    :func:`standard_error_set` is the error with respect to the mean of a finite evaluation set of ``N``
    examples of which ``n`` were drawn without replacement (a random order, a prefix of it):
    ``s/√n · √(1 − n/N)`` (Cochran, *Sampling Techniques*, 1977, thm. 2.2 with ``s²`` unbiased for the set's
    variance with divisor ``N − 1``). Written with the set's standard deviation ``σ_N`` (divisor ``N``) it is the
    familiar ``σ_N/√n · √((N − n)/(N − 1))``. It is 0 for a full pass ``n = N``.

Non-finite per-example values (a diverged loss) make that element's statistics non-finite; nothing is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import LossmapError

__all__ = [
    "Moments", "merge", "merge_gathered", "mean", "std", "standard_error", "standard_error_set", "fpc",
    "paired_mean", "paired_std", "paired_standard_error", "paired_standard_error_set", "results",
]

_F64 = torch.float64


@dataclass
class Moments:
    """Count, mean and ``M2`` of per-example values (and of paired differences) for a state shape ``S``.

    All fields are float64 tensors of shape ``S`` on one device; ``diff_mean``/``diff_m2`` are ``None`` unless the
    state is paired. Create one with :meth:`zeros`.
    """

    n: Tensor
    mean: Tensor
    m2: Tensor
    diff_mean: Tensor | None = None
    diff_m2: Tensor | None = None

    @property
    def paired(self) -> bool:
        """True when the state also tracks ``L(θ) − L(θ0)`` per sample."""
        return self.diff_mean is not None

    @property
    def shape(self) -> torch.Size:
        """The state shape ``S``."""
        return self.n.shape

    @classmethod
    def zeros(cls, shape: Sequence[int] | int = (), *, paired: bool = False, device: torch.device | str | None = None) -> "Moments":
        """An empty state (``n = 0``).

        Args:
            shape (tuple of int): the state shape ``S``, e.g. ``(points, metrics)``.
            paired (bool): also track the per-sample differences to a reference.
            device: where the state lives (that of the values it will be fed).

        Returns:
            Moments: the empty state.

        Example:
            >>> m = Moments.zeros((3,), paired=True)
            >>> m.n.tolist()
            [0.0, 0.0, 0.0]
        """
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        z = lambda: torch.zeros(shape, dtype=_F64, device=device)  # noqa: E731
        return cls(z(), z(), z(), z() if paired else None, z() if paired else None)

    def update(self, values: Tensor, reference: Tensor | None = None, mask: Tensor | None = None) -> "Moments":
        """Add a batch of per-example values (in place) and return ``self``.

        Args:
            values (Tensor[*S, batch]): per-example values of this batch (any float dtype; used in float64).
            reference (Tensor broadcastable to ``values``, optional): the centre's per-example values of the same
                examples, e.g. ``Tensor[batch]``; required for a paired state, refused for an unpaired one.
            mask (Tensor[bool, *S], optional): only elements where it is True take the batch (the others keep
                their state, e.g. points that have already stopped).

        Returns:
            Moments: ``self``.

        Example:
            >>> m = Moments.zeros().update(torch.tensor([1.0, 2.0])).update(torch.tensor([3.0, 4.0]))
            >>> float(mean(m)), round(float(std(m) ** 2), 12)
            (2.5, 1.666666666667)
        """
        values = _as_f64(values, self.n.device)
        if values.ndim < 1 or tuple(values.shape[:-1]) != tuple(self.shape):
            raise LossmapError(
                f"values of shape {tuple(values.shape)} do not fit a state of shape {tuple(self.shape)}: "
                "pass Tensor[*state_shape, batch]"
            )
        if (reference is not None) != self.paired:
            raise LossmapError(
                "a paired state needs the centre's per-example values as reference" if self.paired
                else "reference given to an unpaired state: create it with Moments.zeros(..., paired=True)"
            )
        keep = None if mask is None else torch.as_tensor(mask, device=self.n.device).to(torch.bool)
        diff = None
        if reference is not None:
            reference = _as_f64(reference, self.n.device)
            try:
                fits = torch.broadcast_shapes(reference.shape, values.shape) == values.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise LossmapError(
                    f"reference of shape {tuple(reference.shape)} does not broadcast to values of shape "
                    f"{tuple(values.shape)}: pass the centre's values of the same batch, e.g. Tensor[batch]"
                )
            diff = values - reference
        n_old = self.n
        self.n, self.mean, self.m2 = _combine((n_old, self.mean, self.m2), _batch(values, keep))
        if diff is not None:
            _, self.diff_mean, self.diff_m2 = _combine((n_old, self.diff_mean, self.diff_m2), _batch(diff, keep))
        return self

    def to_tensor(self) -> Tensor:
        """The state as one float64 tensor ``[k, *S]`` (rows ``n, mean, m2`` and, if paired,
        ``diff_mean, diff_m2``), e.g. for ``torch.distributed.all_gather``; :meth:`from_tensor` inverts it.

        Example:
            >>> Moments.zeros((2,), paired=True).to_tensor().shape
            torch.Size([5, 2])
        """
        rows = [self.n, self.mean, self.m2] + ([self.diff_mean, self.diff_m2] if self.paired else [])
        return torch.stack(rows)

    @classmethod
    def from_tensor(cls, packed: Tensor) -> "Moments":
        """The state packed by :meth:`to_tensor`.

        Args:
            packed (Tensor[k, *S]): ``k`` = 3 (unpaired) or 5 (paired).

        Returns:
            Moments: a state that owns a float64 copy of ``packed``.
        """
        packed = torch.as_tensor(packed).to(_F64).clone()
        if packed.ndim < 1 or packed.shape[0] not in (3, 5):
            raise LossmapError(
                f"a packed state has 3 or 5 rows, got shape {tuple(packed.shape)}: pass what Moments.to_tensor returned"
            )
        return cls(*packed.unbind(0))


def _as_f64(values, device) -> Tensor:
    return torch.as_tensor(values).to(device=device, dtype=_F64)


def _batch(values: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Count, mean and M2 of one batch along its last dim (two-pass, float64); zero where ``keep`` is False."""
    size = values.shape[-1]
    count = torch.full(values.shape[:-1], float(size), dtype=_F64, device=values.device)
    mu = values.mean(dim=-1) if size else torch.zeros_like(count)
    m2 = ((values - mu.unsqueeze(-1)) ** 2).sum(dim=-1)
    if keep is not None:
        count, mu, m2 = (torch.where(keep, t, torch.zeros_like(t)) for t in (count, mu, m2))
    return count, mu, m2


def _combine(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Chan, Golub & LeVeque's parallel update of (n, mean, M2); an empty side leaves the other unchanged."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    safe = torch.where(n > 0, n, torch.ones_like(n))
    delta = mean_b - mean_a
    # an empty side contributes nothing even when the other side is non-finite (inf·0 would give NaN)
    shift = torch.where(n_b > 0, delta * (n_b / safe), torch.zeros_like(delta))
    cross = torch.where((n_a > 0) & (n_b > 0), delta**2 * (n_a * n_b / safe), torch.zeros_like(delta))
    m2_b = torch.where(n_b > 0, m2_b, torch.zeros_like(m2_b))
    m2_a = torch.where(n_a > 0, m2_a, torch.zeros_like(m2_a))
    mu = torch.where(n_a > 0, mean_a + shift, torch.where(n_b > 0, mean_b, mean_a))
    return n, mu, m2_a + m2_b + cross


def merge(a: Moments, b: Moments) -> Moments:
    """The state of the union of the samples behind ``a`` and ``b`` (parallel formula; neither is changed).

    Args:
        a, b (Moments): states of the same shape, both paired or both not, over disjoint samples (e.g. two
            torchrun ranks' shares of the data).

    Returns:
        Moments: the merged state, equal (to rounding) to one pass over all samples.

    Example:
        >>> a = Moments.zeros().update(torch.tensor([1.0, 2.0, 3.0]))
        >>> b = Moments.zeros().update(torch.tensor([10.0]))
        >>> float(mean(merge(a, b)))
        4.0
    """
    if a.shape != b.shape or a.paired != b.paired:
        raise LossmapError(
            f"cannot merge a state of shape {tuple(a.shape)} (paired={a.paired}) with one of shape "
            f"{tuple(b.shape)} (paired={b.paired}): merge states of the same points and metrics"
        )
    b = Moments(*(None if t is None else t.to(a.n.device) for t in (b.n, b.mean, b.m2, b.diff_mean, b.diff_m2)))
    n, mu, m2 = _combine((a.n, a.mean, a.m2), (b.n, b.mean, b.m2))
    if not a.paired:
        return Moments(n, mu, m2)
    _, dmu, dm2 = _combine((a.n, a.diff_mean, a.diff_m2), (b.n, b.diff_mean, b.diff_m2))
    return Moments(n, mu, m2, dmu, dm2)


def merge_gathered(packed: Tensor | Sequence[Tensor]) -> Moments:
    """Merge the packed states of all ranks, e.g. the result of ``all_gather`` of :meth:`Moments.to_tensor`.

    Args:
        packed (Tensor[world, k, *S] or a list of Tensor[k, *S]): one packed state per rank.

    Returns:
        Moments: the state over all ranks' samples.

    Example:
        >>> parts = [Moments.zeros().update(torch.tensor(v)).to_tensor() for v in ([1.0, 2.0], [3.0])]
        >>> float(mean(merge_gathered(parts)))
        2.0
    """
    parts = list(packed.unbind(0) if isinstance(packed, Tensor) else packed)
    if not parts:
        raise LossmapError("no packed states to merge: pass one Moments.to_tensor() per rank")
    out = Moments.from_tensor(parts[0])
    for part in parts[1:]:
        out = merge(out, Moments.from_tensor(part))
    return out


def _nan_below(values: Tensor, n: Tensor, least: int) -> Tensor:
    return torch.where(n >= least, values, torch.full_like(values, math.nan))


def mean(m: Moments) -> Tensor:
    """Mean of the values seen (NaN where ``n = 0``). Returns ``Tensor[S]`` (float64)."""
    return _nan_below(m.mean, m.n, 1)


def std(m: Moments) -> Tensor:
    """Sample standard deviation (divisor ``n − 1``; NaN where ``n < 2``). Returns ``Tensor[S]`` (float64)."""
    return _nan_below(torch.sqrt(m.m2.clamp(min=0) / (m.n - 1).clamp(min=1)), m.n, 2)


def standard_error(m: Moments) -> Tensor:
    """``s/√n``: the error of :func:`mean` as an estimate for the distribution the data were drawn from.

    Returns:
        Tensor[S] (float64): NaN where ``n < 2``.

    Example:
        >>> m = Moments.zeros().update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> round(float(standard_error(m)), 6)
        0.645497
    """
    return std(m) / torch.sqrt(m.n.clamp(min=1))


def fpc(n: Tensor | float, population: int) -> Tensor:
    """Finite-population correction ``√(1 − n/N)`` that turns ``s/√n`` into the error w.r.t. the set's mean.

    Args:
        n (Tensor or float): samples drawn without replacement, ``0 ≤ n ≤ N``.
        population (int): the set's size ``N`` (≥ 1).

    Returns:
        Tensor (float64): the factor; 0 for a full pass.

    Example:
        >>> float(fpc(5.0, 20)) == (15 / 20) ** 0.5
        True
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise LossmapError(f"population={population!r} must be a whole number >= 1 (the evaluation set's size)")
    n = torch.as_tensor(n, dtype=_F64)
    if bool((n > population).any()) or bool((n < 0).any()):
        raise LossmapError(
            f"{float(n.max()):g} samples drawn from a set of {population}: the sample count cannot exceed the "
            "set's size (pass the size of the whole evaluation set as population)"
        )
    return torch.sqrt((1 - n / population).clamp(min=0))


def standard_error_set(m: Moments, population: int) -> Tensor:
    """``s/√n · √(1 − n/N)``: the error of :func:`mean` w.r.t. the mean of the whole evaluation set of ``N``.

    Args:
        m (Moments): a state over ``n`` examples drawn without replacement from the set.
        population (int): the set's size ``N``.

    Returns:
        Tensor[S] (float64): 0 where ``n = N``; NaN where ``n < 2`` and ``n < N``.

    Example:
        >>> m = Moments.zeros().update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> float(standard_error_set(m, 4))
        0.0
    """
    return _set_error(standard_error(m), m.n, population)


def _set_error(se: Tensor, n: Tensor, population: int) -> Tensor:
    factor = fpc(n, population).to(se.device)
    return torch.where(n == population, torch.zeros_like(se), se * factor)


def _require_paired(m: Moments) -> None:
    if not m.paired:
        raise LossmapError("the state has no paired differences: create it with Moments.zeros(..., paired=True)")


def paired_mean(m: Moments) -> Tensor:
    """Mean of the per-sample differences ``L(θ) − L(θ0)``. Returns ``Tensor[S]`` (float64)."""
    _require_paired(m)
    return _nan_below(m.diff_mean, m.n, 1)


def paired_std(m: Moments) -> Tensor:
    """Sample standard deviation of the per-sample differences. Returns ``Tensor[S]`` (float64)."""
    _require_paired(m)
    return _nan_below(torch.sqrt(m.diff_m2.clamp(min=0) / (m.n - 1).clamp(min=1)), m.n, 2)


def paired_standard_error(m: Moments) -> Tensor:
    """Standard error of ``mean L(θ) − mean L(θ0)`` from the per-sample differences (distribution view).

    Returns:
        Tensor[S] (float64).

    Example:
        >>> ref = torch.tensor([1.0, 5.0, 2.0, 8.0])
        >>> m = Moments.zeros(paired=True).update(ref + torch.tensor([0.5, 0.7, 0.5, 0.7]), reference=ref)
        >>> round(float(paired_standard_error(m)), 6)
        0.057735
    """
    return paired_std(m) / torch.sqrt(m.n.clamp(min=1))


def paired_standard_error_set(m: Moments, population: int) -> Tensor:
    """:func:`paired_standard_error` w.r.t. the evaluation set (with the finite-population correction)."""
    return _set_error(paired_standard_error(m), m.n, population)


def results(m: Moments, population: int | None = None) -> dict[str, Tensor]:
    """Everything a landscape stores about a state, as ``Tensor[S]`` (float64) by name.

    Args:
        m (Moments): the state.
        population (int, optional): the evaluation set's size; adds the ``*_set`` errors.

    Returns:
        dict: ``n``, ``mean``, ``sd``, ``se``; with ``population``: ``se_set``; for a paired state: ``diff_mean``,
        ``paired_se`` (and ``paired_se_set``).

    Example:
        >>> sorted(results(Moments.zeros().update(torch.tensor([1.0, 2.0])), population=4))
        ['mean', 'n', 'sd', 'se', 'se_set']
    """
    out = {"n": m.n.clone(), "mean": mean(m), "sd": std(m), "se": standard_error(m)}
    if population is not None:
        out["se_set"] = standard_error_set(m, population)
    if m.paired:
        out["diff_mean"] = paired_mean(m)
        out["paired_se"] = paired_standard_error(m)
        if population is not None:
            out["paired_se_set"] = paired_standard_error_set(m, population)
    return out
