"""Loss and error barriers along a path between two models, and locating the path's worst point.

Along θ(α) = (1 − α)A + αB (or any path with A at α = 0 and B at α = 1):

* Frankle et al. (2020): ``max_α L(θ(α)) − ½(L(A) + L(B))``;
* Entezari et al. (2022): ``max_α [L(θ(α)) − (1 − α)L(A) − αL(B)]``.

Both take the maximum over the evaluated α in [0, 1] (endpoints included) and apply to any value
along the path: loss, error, on any data set. Since a fixed grid misses sharp peaks,
:func:`locate_max` refines around the grid's worst point through a callback that evaluates the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import LossmapError

__all__ = ["Barriers", "PeakSearch", "barriers", "frankle_barrier", "entezari_barrier", "locate_max"]


@dataclass(frozen=True)
class Barriers:
    """Both barrier heights with the α where each is reached, and the endpoint values used."""

    frankle: float
    frankle_alpha: float
    entezari: float
    entezari_alpha: float
    value_a: float
    value_b: float


@dataclass(frozen=True)
class PeakSearch:
    """Every point :func:`locate_max` evaluated (sorted by α), the best one and its score.

    ``values`` has one row per α (one column per quantity when the callback returns several)."""

    alphas: np.ndarray
    values: np.ndarray
    alpha: float
    score: float
    rounds: int


def _path(alphas, values) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.shape != v.shape:
        raise LossmapError(f"{a.size} α values but {v.size} path values: pass one value per α")
    if a.size < 2:
        raise LossmapError(f"{a.size} α value(s): a barrier needs at least 2 points along the path")
    if not np.isfinite(a).all():
        raise LossmapError("an α value is not finite: pass finite α values")
    order = np.argsort(a, kind="stable")
    return a[order], v[order]


def _ends(a: np.ndarray, v: np.ndarray, value_a: float | None, value_b: float | None) -> tuple[float, float]:
    out = []
    for given, at, label in ((value_a, 0.0, "A"), (value_b, 1.0, "B")):
        if given is None:
            hit = np.nonzero(a == at)[0]
            if hit.size == 0:
                raise LossmapError(f"no value at α = {at:g} and no value_{label.lower()}= given: include α = {at:g} or pass model {label}'s value")
            given = v[hit[0]]
        out.append(float(given))
    return out[0], out[1]


def _max_on_unit(a: np.ndarray, excess: np.ndarray) -> tuple[float, float]:
    inside = (a >= 0.0) & (a <= 1.0)
    if not inside.any():
        raise LossmapError("no α lies in [0, 1]: evaluate the path between the two models")
    ai, ei = a[inside], excess[inside]
    if np.isnan(ei).all():
        return float("nan"), float("nan")
    i = int(np.nanargmax(ei))
    return float(ei[i]), float(ai[i])


def frankle_barrier(alphas, values, value_a: float | None = None, value_b: float | None = None) -> tuple[float, float]:
    """Frankle et al. (2020): ``max_α L(α) − ½(L(A) + L(B))`` over α in [0, 1], and its α.

    Args:
        alphas: positions along the path (array-like of float; A at 0, B at 1).
        values: the value (loss or error) at each α.
        value_a: L(A); by default the value at α = 0.
        value_b: L(B); by default the value at α = 1.

    Returns:
        tuple[float, float]: (barrier height, α of the maximum).

    Example:
        >>> frankle_barrier([0, 0.5, 1], [1.0, 3.0, 2.0])
        (1.5, 0.5)
    """
    a, v = _path(alphas, values)
    la, lb = _ends(a, v, value_a, value_b)
    return _max_on_unit(a, v - 0.5 * (la + lb))


def entezari_barrier(alphas, values, value_a: float | None = None, value_b: float | None = None) -> tuple[float, float]:
    """Entezari et al. (2022): ``max_α [L(α) − (1 − α)L(A) − αL(B)]`` over α in [0, 1], and its α.

    Args:
        alphas: positions along the path (array-like of float; A at 0, B at 1).
        values: the value (loss or error) at each α.
        value_a: L(A); by default the value at α = 0.
        value_b: L(B); by default the value at α = 1.

    Returns:
        tuple[float, float]: (barrier height, α of the maximum).

    Example:
        >>> entezari_barrier([0, 0.5, 1], [1.0, 3.0, 2.0])
        (1.5, 0.5)
    """
    a, v = _path(alphas, values)
    la, lb = _ends(a, v, value_a, value_b)
    return _max_on_unit(a, v - ((1.0 - a) * la + a * lb))


def barriers(alphas, values, value_a: float | None = None, value_b: float | None = None) -> Barriers:
    """Both barrier definitions of one quantity along a path.

    Args:
        alphas: positions along the path (array-like of float; A at 0, B at 1).
        values: the value (loss or error) at each α.
        value_a: L(A); by default the value at α = 0.
        value_b: L(B); by default the value at α = 1.

    Returns:
        Barriers: heights, their α, and the endpoint values used.

    Example:
        >>> barriers([0, 0.25, 0.5, 1], [0.0, 2.0, 1.0, 1.0]).entezari
        1.75
    """
    a, v = _path(alphas, values)
    la, lb = _ends(a, v, value_a, value_b)
    fr, fa = frankle_barrier(a, v, la, lb)
    en, ea = entezari_barrier(a, v, la, lb)
    return Barriers(frankle=fr, frankle_alpha=fa, entezari=en, entezari_alpha=ea, value_a=la, value_b=lb)


def _score(alphas: np.ndarray, values: np.ndarray, column: int, score: str | Callable) -> np.ndarray:
    col = values if values.ndim == 1 else values[:, column]
    if callable(score):
        return np.asarray(score(alphas, values), dtype=np.float64).reshape(-1)
    if score == "value":
        return col
    if score == "entezari":  # excess over the chord between the first and last α
        t = (alphas - alphas[0]) / (alphas[-1] - alphas[0])
        return col - ((1.0 - t) * col[0] + t * col[-1])
    raise LossmapError(f"score {score!r} is not known: use 'value', 'entezari' or a function (alphas, values) -> scores")


def _candidates(a: np.ndarray, s: np.ndarray, xtol: float) -> np.ndarray:
    """Around the best point: the midpoints to its neighbours and the vertex of the parabola through
    the three points (when it falls strictly inside the bracket)."""
    i = int(np.nanargmax(s))
    lo, hi = a[max(i - 1, 0)], a[min(i + 1, a.size - 1)]
    new = [0.5 * (lo + a[i]), 0.5 * (a[i] + hi)]
    if 0 < i < a.size - 1:
        x0, x1, x2, y0, y1, y2 = a[i - 1], a[i], a[i + 1], s[i - 1], s[i], s[i + 1]
        den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        if den != 0 and np.isfinite(den):
            x = x1 - 0.5 * ((x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)) / den
            if lo < x < hi:
                new.append(x)
    new = np.unique(np.asarray(new, dtype=np.float64))
    gaps = np.abs(new[:, None] - a[None, :]).min(axis=1)
    return new[gaps > xtol]


def locate_max(
    evaluate: Callable[[np.ndarray], np.ndarray],
    alphas,
    refine_rounds: int = 8,
    *,
    column: int = 0,
    score: str | Callable = "value",
    xtol: float = 1e-6,
) -> PeakSearch:
    """Evaluate a grid along the path, then zoom in on its worst point.

    Each round takes the best-scoring point so far and evaluates, in one call, the midpoints to its
    two neighbours and the vertex of the parabola through the three (so the bracket halves every
    round, and a smooth peak is reached faster). Rounds stop early when no new point is farther than
    ``xtol`` from the evaluated ones.

    Args:
        evaluate: ``evaluate(alphas) -> values``, one value (or one row of values) per α.
        alphas: the starting grid (≥ 2 finite values).
        refine_rounds: the most refinement rounds after the grid (0: the grid only).
        column: which column of a 2-D result to maximize.
        score: ``"value"`` (the value itself: Frankle's barrier), ``"entezari"`` (the value minus the
            chord between the first and last α) or a function ``(alphas, values) -> scores``.
        xtol: the smallest spacing worth evaluating.

    Returns:
        PeakSearch: all points evaluated, sorted by α, and the best α with its score.

    Example:
        >>> import numpy as np
        >>> peak = locate_max(lambda a: -(a - 0.3) ** 2, np.linspace(0, 1, 5), refine_rounds=20)
        >>> round(peak.alpha, 6)
        0.3
    """
    grid = np.unique(np.asarray(alphas, dtype=np.float64).reshape(-1))
    if grid.size < 2 or not np.isfinite(grid).all():
        raise LossmapError(f"the α grid has {grid.size} distinct finite value(s): locate_max needs at least 2")
    if refine_rounds < 0:
        raise LossmapError(f"refine_rounds={refine_rounds!r}: use 0 or more rounds")
    a, v = grid, _evaluate(evaluate, grid)
    rounds = 0
    for rounds in range(1, refine_rounds + 1):
        s = _score(a, v, column, score)
        if np.isnan(s).all():
            raise LossmapError("every value along the path is NaN: check the model and data")
        new = _candidates(a, s, xtol)
        if new.size == 0:
            rounds -= 1
            break
        a, v = np.concatenate([a, new]), np.concatenate([v, _evaluate(evaluate, new)])
        order = np.argsort(a, kind="stable")
        a, v = a[order], v[order]
    s = _score(a, v, column, score)
    i = int(np.nanargmax(s)) if not np.isnan(s).all() else 0
    return PeakSearch(alphas=a, values=v, alpha=float(a[i]), score=float(s[i]), rounds=rounds)


def _evaluate(evaluate: Callable, alphas: np.ndarray) -> np.ndarray:
    out = np.asarray(evaluate(alphas.copy()), dtype=np.float64)
    if out.ndim == 0 or out.shape[0] != alphas.size or out.ndim > 2:
        raise LossmapError(f"the path callback returned shape {out.shape} for {alphas.size} α values: return one value (or one row) per α")
    return out
