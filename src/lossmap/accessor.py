"""``ds.lossmap``: the plotting and summary functions as methods of a landscape, for notebooks.

Registered when ``lossmap.compute``, ``lossmap.load`` or another top-level name is first used (or on
``import lossmap.accessor``). Figures are returned, so a notebook cell ending in one displays it.

Example:
    >>> import lossmap                                    # doctest: +SKIP
    >>> ds = lossmap.load("plane.nc")                     # doctest: +SKIP
    >>> ds.lossmap.contour()                              # doctest: +SKIP
    >>> ds.lossmap.summary()["rise_radius_xpos"]          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import xarray as xr

__all__ = ["LandscapeAccessor"]


@xr.register_dataset_accessor("lossmap")
class LandscapeAccessor:
    """Methods on a landscape ``Dataset``: figures (matplotlib ``Figure``; ``report`` writes HTML) and numbers."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def line(self, **kw: Any) -> Any:
        """The 1-D curve(s) (:func:`lossmap.plot.static.plot_line`); returns the figure."""
        from .plot.static import plot_line

        return plot_line(self._ds, **kw)[0]

    def contour(self, **kw: Any) -> Any:
        """The contour map (:func:`lossmap.plot.static.plot_contour`); returns the figure."""
        from .plot.static import plot_contour

        return plot_contour(self._ds, **kw)[0]

    def heatmap(self, **kw: Any) -> Any:
        """The heat map (:func:`lossmap.plot.static.plot_heatmap`); returns the figure."""
        from .plot.static import plot_heatmap

        return plot_heatmap(self._ds, **kw)[0]

    def surface(self, **kw: Any) -> Any:
        """The 3-D surface (:func:`lossmap.plot.static.plot_surface`); returns the figure."""
        from .plot.static import plot_surface

        return plot_surface(self._ds, **kw)[0]

    def interactive(self, metric: str = "loss", **kw: Any) -> Any:
        """The plotly figures of the report (``{"surface", "contour", "lines"}``), which display in notebooks."""
        from .plot.interactive import landscape_figures

        return landscape_figures(self._ds, metric=metric, **kw)

    def summary(self, metric: str = "loss", **kw: Any) -> dict[str, Any]:
        """The summary numbers (:func:`lossmap.stats.summarize`)."""
        from .stats import summarize

        return summarize(self._ds, metric=metric, **kw)

    def report(self, path: str, **kw: Any) -> Any:
        """Write the interactive HTML report of this landscape; returns its path."""
        from .plot.interactive import write_report

        return write_report([self._ds], path, **kw)
