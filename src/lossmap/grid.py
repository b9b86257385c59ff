"""Axis specs ("-1:1:51"), 1-D/2-D grids and the order in which points are evaluated."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import LossmapError

__all__ = ["parse_axis", "Grid"]


def parse_axis(spec: str | Sequence[float] | np.ndarray, name: str = "axis") -> np.ndarray:
    """Parse ``"min:max:count"`` (inclusive, evenly spaced) or an explicit sequence of coefficients.

    A one-point axis is ``"a:a:1"`` or ``[a]``.

    Args:
        spec (str | Sequence[float] | np.ndarray): ``"min:max:count"`` or the coefficients.
        name (str): how an error message names the axis.

    Returns:
        np.ndarray: the coefficients, float64.

    Examples:
        >>> from lossmap.grid import parse_axis
        >>> parse_axis("-1:1:5").tolist(), parse_axis([0.0, 0.5]).tolist()
        ([-1.0, -0.5, 0.0, 0.5, 1.0], [0.0, 0.5])
    """
    if isinstance(spec, str):
        text = spec.strip()
        parts = text.split(":")
        if len(parts) != 3:
            raise LossmapError(f"{name} spec {spec!r} is malformed: write min:max:count, e.g. '-1:1:51'")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise LossmapError(f"{name} spec {spec!r}: min and max must be numbers, e.g. '-1:1:51'") from None
        try:
            count = int(parts[2])
        except ValueError:
            raise LossmapError(f"{name} spec {spec!r}: count must be a whole number, e.g. '-1:1:51'") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise LossmapError(f"{name} spec {spec!r}: min and max must be finite")
        if count < 1:
            raise LossmapError(f"{name} spec {spec!r}: count must be at least 1")
        if count == 1 and lo != hi:
            raise LossmapError(f"{name} spec {spec!r}: one point needs min == max (e.g. '0:0:1'), or use count >= 2")
        if count > 1 and not lo < hi:
            raise LossmapError(f"{name} spec {spec!r}: min must be less than max")
        return np.linspace(lo, hi, count, dtype=np.float64)
    try:
        values = np.asarray(spec, dtype=np.float64)
    except (TypeError, ValueError):
        raise LossmapError(f"{name} {spec!r} is neither 'min:max:count' nor a sequence of numbers") from None
    if values.ndim != 1 or values.size == 0:
        raise LossmapError(f"{name} must be a non-empty 1-D sequence of coefficients, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise LossmapError(f"{name} has non-finite coefficients: use finite numbers")
    if values.size > 1 and not np.all(np.diff(values) > 0):
        raise LossmapError(f"{name} coefficients must be strictly increasing")
    return values


@dataclass(frozen=True)
class Grid:
    """A 1-D or 2-D grid of coefficients.

    Points are numbered in C order over the landscape's array shape: for a 2-D grid point ``p`` is
    ``(x[p // ny], y[p % ny])``; data arrays are shaped ``(nx,)`` or ``(nx, ny)`` with dims ``("x", "y")``.
    """

    x: np.ndarray
    y: np.ndarray | None = None

    @classmethod
    def from_specs(cls, x, y=None) -> "Grid":
        return cls(parse_axis(x, "x axis"), None if y is None else parse_axis(y, "y axis"))

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.x), len(self.y))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coefficients(self) -> np.ndarray:
        """All points' coefficients, shape ``(size, ndim)``, in flat-index order."""
        if self.y is None:
            return self.x[:, None].copy()
        xx, yy = np.meshgrid(self.x, self.y, indexing="ij")
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def serpentine(self) -> np.ndarray:
        """Flat indices in boustrophedon order (every step moves one grid cell): neighbouring points
        differ least, which keeps parameter updates small and the order stable for resuming."""
        if self.y is None:
            return np.arange(self.size)
        nx, ny = self.shape
        idx = np.arange(self.size).reshape(nx, ny)
        idx[1::2] = idx[1::2, ::-1]
        return idx.ravel()
