"""Values along the straight path θ(α) = (1 − α)A + αB, and the search for its worst points.

:func:`line_grid` makes the starting α grid; :func:`path_evaluator` turns an engine of an
:class:`~lossmap.objective.Objective` (origin A, one direction B − A) into ``alphas -> values``, one
column per quantity: ``loss`` and, where the model is a classifier (the objective has an accuracy),
``error`` = 1 − accuracy; :func:`search_path` evaluates the grid and then runs
:func:`~lossmap.connect.barrier.locate_max` once per quantity and barrier definition (Frankle: the
value itself; Entezari: the excess over the chord), every search starting from all the points
evaluated so far, so that no α is evaluated twice.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import LossmapError
from .barrier import locate_max

__all__ = ["QUANTITIES", "DEFINITIONS", "line_grid", "quantities_of", "to_quantities", "path_evaluator", "search_path"]

#: what is measured along a path: the loss, and the error 1 − accuracy of a classifier
QUANTITIES = ("loss", "error")
#: the barrier definitions, and the score :func:`locate_max` maximizes for each
DEFINITIONS = {"frankle": "value", "entezari": "entezari"}


def line_grid(alphas: int | Sequence[float]) -> np.ndarray:
    """The starting α grid: ``N`` evenly spaced values on [0, 1], or the given values.

    Args:
        alphas: a count (at least 2) or the α values (in [0, 1], including 0 and 1).

    Returns:
        np.ndarray: the sorted distinct α values (float64).

    Example:
        >>> line_grid(5).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(alphas, (int, np.integer)) and not isinstance(alphas, bool):
        if alphas < 2:
            raise LossmapError(f"{int(alphas)} α point(s): a barrier needs at least 2 points along the path (A and B)")
        return np.linspace(0.0, 1.0, int(alphas))
    try:
        grid = np.unique(np.asarray(alphas, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise LossmapError(f"alphas {alphas!r} is neither a count nor a list of numbers: pass e.g. 25") from None
    if grid.size < 2 or not np.isfinite(grid).all():
        raise LossmapError(f"the α grid has {grid.size} distinct finite value(s): a barrier needs at least 2 (A and B)")
    if grid[0] != 0.0 or grid[-1] != 1.0:
        raise LossmapError(f"the α grid runs from {grid[0]:g} to {grid[-1]:g}: give values in [0, 1] that include 0 (A) and 1 (B)")
    return grid


def quantities_of(metric_names: Sequence[str]) -> tuple[str, ...]:
    """``("loss", "error")`` when the engine measures accuracy, else ``("loss",)``."""
    return QUANTITIES if "accuracy" in metric_names else QUANTITIES[:1]


def to_quantities(rows: np.ndarray, metric_names: Sequence[str]) -> np.ndarray:
    """An engine's rows (columns ``metric_names``) as the columns :func:`quantities_of` names: the loss, and
    1 − accuracy where there is an accuracy.

    Example:
        >>> to_quantities(np.array([[0.5, 0.75]]), ["loss", "accuracy"]).tolist()
        [[0.5, 0.25]]
    """
    rows = np.asarray(rows, dtype=np.float64)
    names = list(metric_names)
    if "accuracy" not in names:
        return rows[:, :1]
    return np.stack([rows[:, 0], 1.0 - rows[:, names.index("accuracy")]], axis=1)


def path_evaluator(engine) -> Callable[[np.ndarray], np.ndarray]:
    """``alphas -> values`` (one row per α; columns :func:`quantities_of` the engine's metrics) through an
    engine whose one direction is B − A."""

    def evaluate(alphas: np.ndarray) -> np.ndarray:
        rows = engine.evaluate_many(np.asarray(alphas, dtype=np.float64).reshape(-1, 1))
        return to_quantities(rows, engine.metric_names)

    return evaluate


def search_path(evaluate: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, refine: int,
                quantities: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the grid, then refine around the worst point of each quantity under each definition.

    Args:
        evaluate: ``alphas -> values``, one row per α and one column per quantity.
        grid: the starting α values (0 and 1 among them).
        refine: the most refinement rounds of each search (0: the grid only).
        quantities: how many columns ``evaluate`` returns.

    Returns:
        tuple[np.ndarray, np.ndarray]: every α evaluated (sorted) and the values there, ``(P, quantities)``.

    Example:
        >>> f = lambda a: np.stack([np.exp(-((a - 0.37) / 0.01) ** 2)], axis=1)
        >>> alphas, values = search_path(f, np.linspace(0, 1, 11), 12, 1)
        >>> round(float(values.max()), 3)
        1.0
    """
    if refine < 0:
        raise LossmapError(f"refine={refine!r}: use 0 or more refinement rounds")
    seen: dict[float, np.ndarray] = {}

    def cached(alphas: np.ndarray) -> np.ndarray:
        new = np.array([a for a in np.asarray(alphas, dtype=np.float64) if float(a) not in seen])
        if new.size:
            rows = np.asarray(evaluate(new), dtype=np.float64).reshape(new.size, quantities)
            seen.update((float(a), r) for a, r in zip(new, rows))
        return np.stack([seen[float(a)] for a in alphas])

    cached(np.asarray(grid, dtype=np.float64))
    if refine:
        for q in range(quantities):
            for score in DEFINITIONS.values():
                if np.isnan(np.stack(list(seen.values()))[:, q]).all():
                    continue  # nothing to locate; the barrier is NaN
                locate_max(cached, np.array(sorted(seen)), refine, column=q, score=score)
    alphas = np.array(sorted(seen))
    return alphas, np.stack([seen[float(a)] for a in alphas])
