"""Value scales shared by the static figures and the interactive report, so both draw the same range."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from ..errors import LossmapError
from ..store import meta

#: percentile of the finite values used as the upper end of loss-like colour ranges and surface clips
ROBUST_PERCENTILE = 95.0
#: number of contour levels when none is asked for
DEFAULT_LEVELS = 15
#: axis spans whose ratio exceeds this are not drawn with equal units (the map would become a sliver)
MAX_EQUAL_ASPECT_RATIO = 4.0


def is_2d(ds: xr.Dataset) -> bool:
    return "y" in ds.dims


def higher_is_better(ds: xr.Dataset, metric: str) -> bool:
    """Whether higher values of ``metric`` are better, as the landscape declares it (``higher_is_better``);
    such metrics (accuracy) are bounded and drawn over their full range. Files of lossmap 0.1 declare
    nothing: their only such metric was the built-in accuracy."""
    declared = meta(ds).get("higher_is_better")
    if isinstance(declared, dict) and metric in declared:
        return bool(declared[metric])
    return metric == "accuracy"


def log_floor(arrays: Iterable[np.ndarray], metric: str) -> float:
    """The smallest positive finite value: on a log scale, values ≤ 0 are raised to it."""
    positives = [a[np.isfinite(a) & (a > 0)] for a in arrays]
    positives = [p for p in positives if p.size]
    if not positives:
        raise LossmapError(f"log scale needs positive values but metric {metric!r} has none: plot it without --log")
    return float(min(p.min() for p in positives))


def robust_upper(values: np.ndarray | xr.DataArray) -> float:
    """Default upper end of a loss colour range and of the surface z clip.

    The :data:`ROBUST_PERCENTILE` (95th) percentile of the finite values; when that equals the minimum (a
    nearly constant landscape) the finite maximum is used instead. NaN/inf are ignored.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise LossmapError("no finite value to compute a colour range from: the landscape is empty or diverged")
    upper = float(np.percentile(finite, ROBUST_PERCENTILE))
    if upper <= float(finite.min()):
        upper = float(finite.max())
    return upper


def axis_label(ds: xr.Dataset, axis: str) -> str:
    """The direction's name stored with the landscape (``x_label``/``y_label``), else α / β."""
    label = meta(ds).get(f"{axis}_label")
    return label if isinstance(label, str) and label.strip() else ("α" if axis == "x" else "β")
