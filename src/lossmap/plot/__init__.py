"""Figures of landscapes.

The static (matplotlib) functions of :mod:`lossmap.plot.static` are available here too and loaded on
first use, so that importing ``lossmap.plot`` or its sibling modules does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

#: the names of :mod:`lossmap.plot.static` (its ``__all__``) that this package hands out
_STATIC = (
    "plot_line",
    "plot_contour",
    "plot_heatmap",
    "plot_surface",
    "plot_compare",
    "save_figure",
    "plot_all",
    "figure",
    "kinds_for",
    "KINDS_2D",
    "robust_upper",
    "describe",
    "FORMATS",
    "ROBUST_PERCENTILE",
    "DEFAULT_LEVELS",
)

__all__ = list(_STATIC)


def __getattr__(name: str) -> Any:
    if name not in _STATIC:  # anything else (a submodule being imported, a typo) without importing matplotlib
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import static

    value = globals()[name] = getattr(static, name)  # later lookups find it without coming here
    return value
