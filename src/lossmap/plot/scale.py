"""Value scales shared by the static figures and the interactive report, so both draw the same range."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from ..errors import LossmapError

#: percentile of the finite values used as the upper end of loss-like colour ranges and surface clips
ROBUST_PERCENTILE = 95.0


def is_2d(ds: xr.Dataset) -> bool:
    return "y" in ds.dims


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics (name contains ``acc``) are bounded and drawn over their full range."""
    return "acc" in metric.lower()


def log_floor(arrays: Iterable[np.ndarray], metric: str) -> float:
    """The smallest positive finite value: on a log scale, values ≤ 0 are raised to it."""
    positives = [a[np.isfinite(a) & (a > 0)] for a in arrays]
    positives = [p for p in positives if p.size]
    if not positives:
        raise LossmapError(f"log scale needs positive values but metric {metric!r} has none: plot it without --log")
    return float(min(p.min() for p in positives))
