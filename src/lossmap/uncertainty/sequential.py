"""Evaluation to a stated precision: draw batches until the mean is known well enough.

Every point reads the evaluation set's batches in one shared random order and stops after the first batch at
which::

    batches ≥ min_batches   and   z · ŝ/√n · √(1 − n/N) ≤ tol          (tol·|mean| when relative)

where ``n`` is the number of examples read, ``N`` the size of the evaluation set (the population), and ``ŝ``
the sample standard deviation of the per-example values read so far, floored at a pilot value when one is
given. The left side is ``z`` times the standard error w.r.t. the evaluation set (see
:mod:`lossmap.uncertainty.moments`), so at ``n = N`` it is 0 and a point always stops after a full pass: the
rule never costs more than the full evaluation. With ``z = 1.96`` the stated precision means: the mean over
the samples read lies within ``tol`` of the mean over the whole evaluation set with probability about 95 %.
:func:`required_samples` gives the ``n`` at which a known ``s`` meets the tolerance (Cochran's sample size
``n0/(1 + n0/N)`` with ``n0 = (z·s/tol)²``).

Optional stopping and coverage
    The stopping time depends on the data: the rule stops as soon as the *estimated* error is small, and
    the estimate is small exactly when ``ŝ`` happens to come out low. Per-example losses are right-skewed
    (many near 0, a few large), so a low ``ŝ`` early on usually means the rare large losses have not been
    drawn yet — and then the running mean is low too. Stopping on such a lucky start gives a mean that misses
    by more than ``tol`` more often than the nominal 5 %, and a relative tolerance (``tol·|mean|``) makes it
    worse, since a low mean also lowers the bound. Two guards keep the coverage near nominal:

    * ``min_batches``: no decision before that many batches, so ``ŝ`` rests on enough examples to have seen
      the tail (a few hundred examples for typical classification losses);
    * ``pilot_sd``: a standard deviation measured independently of this point's samples — the centre point's
      full pass, or the first batches of a pilot run — used as a floor for ``ŝ``. When the pilot dominates,
      the stopping time is fixed in advance (:func:`required_samples`) and there is no optional stopping at
      all; a point with larger spread than the pilot (far from the centre the losses grow) still uses its own
      larger ``ŝ``.

    ``tests/test_uncertainty.py`` measures the coverage on simulated gamma-distributed losses with these
    guards on, and shows it falls short without them.

A rule holds the state of many points at once (values ``Tensor[*S, batch]``): each element stops on its own,
and a stopped element takes no further batches (its mean, error and sample count stay those at its stop).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import LossmapError
from .moments import Moments, fpc, mean, std

__all__ = ["StoppingRule", "should_stop", "required_samples"]


def _check(tol: float, z: float, min_batches: int, population: int | None) -> None:
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise LossmapError(f"tolerance {tol!r} must be a positive finite number (e.g. 0.01)")
    if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
        raise LossmapError(f"z={z!r} must be a positive finite number (1.96 for 95 %)")
    if isinstance(min_batches, bool) or not isinstance(min_batches, int) or min_batches < 1:
        raise LossmapError(f"min_batches={min_batches!r} must be a whole number >= 1")
    if population is not None and (isinstance(population, bool) or not isinstance(population, int) or population < 1):
        raise LossmapError(f"population={population!r} must be a whole number >= 1 (the evaluation set's size) or None")


def _pilot(pilot_sd) -> Tensor | None:
    if pilot_sd is None:
        return None
    pilot = torch.as_tensor(pilot_sd, dtype=torch.float64)
    if not bool(torch.isfinite(pilot).all()) or bool((pilot < 0).any()):
        raise LossmapError(f"pilot_sd={pilot_sd!r} must be finite and >= 0 (a standard deviation of per-example values)")
    return pilot


def required_samples(sd: float, tol: float, z: float = 1.96, population: int | None = None) -> int:
    """Smallest ``n`` with ``z·sd/√n·√(1 − n/N) ≤ tol`` (``N`` = population; no correction when None).

    Args:
        sd (float): standard deviation of the per-example values (e.g. the centre's full pass).
        tol (float): absolute tolerance.
        z (float): the normal quantile (1.96 for 95 %).
        population (int, optional): the evaluation set's size.

    Returns:
        int: the sample count (at most ``population``).

    Example:
        >>> required_samples(sd=1.0, tol=0.1, z=2.0)
        400
        >>> required_samples(sd=1.0, tol=0.1, z=2.0, population=400)
        200
    """
    _check(tol, z, 1, population)
    if not (math.isfinite(sd) and sd >= 0):
        raise LossmapError(f"sd={sd!r} must be finite and >= 0")
    n0 = (z * sd / tol) ** 2
    n = n0 if population is None else n0 * population / (population + n0)
    # ceil with a guard against n landing a rounding error above a whole number
    need = max(1, math.ceil(n - 1e-9 * max(1.0, n)))
    return need if population is None else min(need, population)


def should_stop(
    m: Moments, batches: int, tol: float, relative: bool = False, z: float = 1.96, min_batches: int = 1,
    pilot_sd: float | Tensor | None = None, population: int | None = None,
) -> Tensor:
    """Whether each element of a state meets the stated precision (the rule of the module docstring).

    Args:
        m (Moments): the state after ``batches`` batches.
        batches (int): batches read so far.
        tol, relative, z, min_batches, pilot_sd, population: as for :class:`StoppingRule`.

    Returns:
        Tensor[bool, S]: True where the element may stop (always where ``n = population``).

    Example:
        >>> m = Moments.zeros().update(torch.tensor([1.0, 1.2, 0.8, 1.0]))
        >>> bool(should_stop(m, batches=1, tol=0.5))
        True
    """
    _check(tol, z, min_batches, population)
    sd = std(m)
    pilot = _pilot(pilot_sd)
    if pilot is not None:
        sd = torch.fmax(sd, pilot.to(sd.device))  # fmax: a NaN running sd (n < 2) yields the pilot
    se = sd / torch.sqrt(m.n.clamp(min=1))
    if population is not None:
        se = se * fpc(m.n, population).to(se.device)
    bound = tol * mean(m).abs() if relative else torch.full_like(se, float(tol))
    ok = (z * se <= bound) & (batches >= min_batches)
    if population is not None:
        ok = ok | (m.n >= population)
    return ok


class StoppingRule:
    """State of evaluation to a stated precision for the elements of a state shape ``S`` (e.g. points).

    Args:
        tol (float): the tolerance, absolute or (``relative=True``) a fraction of ``|mean|``.
        relative (bool): read ``tol`` relative to the running mean's magnitude.
        z (float): normal quantile of the stated confidence (1.96: 95 %).
        min_batches (int): batches to read before any element may stop (>= 1).
        pilot_sd (float or Tensor broadcastable to ``S``, optional): a floor for the running standard deviation,
            e.g. the centre point's full-pass standard deviation.
        population (int, optional): size ``N`` of the evaluation set (enables the finite-population correction
            and the stop at a full pass); None for a stream without a fixed set.

    Feed it with :meth:`update`; feed other metrics of the same points into their own :class:`Moments` with
    ``mask=rule.active`` read *before* the update, so they stop with the rule.

    Example:
        >>> rule = StoppingRule(tol=0.05, z=1.96, min_batches=2, population=1000)
        >>> g = torch.Generator().manual_seed(0)
        >>> losses = torch.rand(1000, generator=g)
        >>> for batch in losses.split(50):
        ...     _ = rule.update(batch)
        ...     if rule.done:
        ...         break
        >>> int(rule.samples) < 1000
        True
    """

    def __init__(self, tol: float, relative: bool = False, z: float = 1.96, min_batches: int = 2,
                 pilot_sd: float | Tensor | None = None, population: int | None = None) -> None:
        _check(tol, z, min_batches, population)
        self.tol, self.relative, self.z, self.min_batches = float(tol), bool(relative), float(z), min_batches
        self.pilot_sd, self.population = _pilot(pilot_sd), population
        self.batches = 0
        self.moments: Moments | None = None
        self.stopped: Tensor | None = None

    def update(self, values: Tensor, reference: Tensor | None = None) -> "StoppingRule":
        """Read one batch of per-example values ``Tensor[*S, batch]`` into the elements still running.

        Args:
            values (Tensor[*S, batch]): this batch's per-example values.
            reference (Tensor, optional): the centre's values of the same examples, to also keep the paired
                differences (see :meth:`Moments.update`).

        Returns:
            StoppingRule: ``self``.
        """
        values = torch.as_tensor(values)
        if self.moments is None:
            self.moments = Moments.zeros(values.shape[:-1], paired=reference is not None, device=values.device)
            self.stopped = torch.zeros(self.moments.shape, dtype=torch.bool, device=values.device)
        self.moments.update(values, reference=reference, mask=~self.stopped)
        self.batches += 1
        now = should_stop(self.moments, self.batches, self.tol, self.relative, self.z, self.min_batches,
                          self.pilot_sd, self.population)
        self.stopped = self.stopped | now
        return self

    @property
    def active(self) -> Tensor | None:
        """Tensor[bool, S]: elements that still take batches (None before the first batch)."""
        return None if self.stopped is None else ~self.stopped

    @property
    def done(self) -> bool:
        """True when every element has stopped."""
        return self.stopped is not None and bool(self.stopped.all())

    @property
    def samples(self) -> Tensor:
        """Tensor[int64, S]: examples each element used (0-d zero before the first batch)."""
        if self.moments is None:
            return torch.zeros((), dtype=torch.int64)
        return self.moments.n.round().to(torch.int64)
