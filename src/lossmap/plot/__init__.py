"""Figures of landscapes.

The static (matplotlib) functions are re-exported here and loaded on first use, so that importing
``lossmap.plot`` or its sibling modules does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

_STATIC = (
    "plot_line",
    "plot_contour",
    "plot_heatmap",
    "plot_surface",
    "plot_compare",
    "save_figure",
    "plot_all",
    "robust_upper",
    "describe",
)

__all__ = list(_STATIC)


def __getattr__(name: str) -> Any:
    if name in _STATIC:
        from . import static

        return getattr(static, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
