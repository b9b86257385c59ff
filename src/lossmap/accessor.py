"""``ds.lossmap``: the plotting and summary functions as methods of a landscape, for notebooks.

Registered when ``lossmap.compute``, ``lossmap.load`` or another top-level name is first used (or on
``import lossmap.accessor``). Figures are returned, so a notebook cell ending in one displays it.

Examples:
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
    """Methods on a landscape ``Dataset``: figures (matplotlib ``Figure``; ``report`` writes HTML) and numbers.

    Registered as ``ds.lossmap`` once ``lossmap.compute`` or ``lossmap.load`` is used (or on
    ``import lossmap.accessor``). The keyword arguments of each method go to the function it names.

    Args:
        ds (xr.Dataset): the landscape (xarray passes it).

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig = plane.lossmap.contour(levels=8)          # a notebook cell ending in it shows the figure
        >>> plane.lossmap.summary()["centre"] == float(plane.loss.sel(x=0, y=0))
        True
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def line(self, **kw: Any) -> Any:
        """The 1-D curve(s) (:func:`lossmap.plot.static.plot_line`; of a plane, its central cross-sections).

        Args:
            **kw (Any): ``log``, ``metrics``.

        Returns:
            Any: the matplotlib figure.
        """
        from .plot.static import plot_line

        return plot_line(self._ds, **kw)[0]

    def contour(self, **kw: Any) -> Any:
        """The contour map (:func:`lossmap.plot.static.plot_contour`).

        Args:
            **kw (Any): ``metric``, ``log``, ``levels``, ``vmin``, ``vmax``, ``filled``.

        Returns:
            Any: the matplotlib figure.
        """
        from .plot.static import plot_contour

        return plot_contour(self._ds, **kw)[0]

    def heatmap(self, **kw: Any) -> Any:
        """The heat map (:func:`lossmap.plot.static.plot_heatmap`).

        Args:
            **kw (Any): ``metric``, ``log``, ``vmin``, ``vmax``.

        Returns:
            Any: the matplotlib figure.
        """
        from .plot.static import plot_heatmap

        return plot_heatmap(self._ds, **kw)[0]

    def surface(self, **kw: Any) -> Any:
        """The 3-D surface (:func:`lossmap.plot.static.plot_surface`).

        Args:
            **kw (Any): ``metric``, ``log``, ``vmin``, ``vmax``.

        Returns:
            Any: the matplotlib figure.
        """
        from .plot.static import plot_surface

        return plot_surface(self._ds, **kw)[0]

    def interactive(self, metric: str = "loss", **kw: Any) -> Any:
        """The plotly figures of the report (:func:`lossmap.plot.interactive.landscape_figures`).

        Args:
            metric (str): the metric of the surface and contour map.
            **kw (Any): ``log``, ``title``, ``levels``.

        Returns:
            Any: ``{"surface", "contour", "lines"}`` plotly figures (surface and contour for 2-D only), which
                display in notebooks.
        """
        from .plot.interactive import landscape_figures

        return landscape_figures(self._ds, metric=metric, **kw)

    def summary(self, metric: str = "loss", **kw: Any) -> dict[str, Any]:
        """The summary numbers (:func:`lossmap.stats.summarize`).

        Args:
            metric (str): the metric to summarize.
            **kw (Any): ``rise``, ``radius``.

        Returns:
            dict[str, Any]: the numbers by name.
        """
        from .stats import summarize

        return summarize(self._ds, metric=metric, **kw)

    def report(self, path: str, **kw: Any) -> Any:
        """Write the interactive HTML report of this landscape (:func:`lossmap.plot.interactive.write_report`).

        Args:
            path (str): the ``.html`` file to write.
            **kw (Any): ``titles``, ``metric``, ``log``, ``levels``, ``rise``.

        Returns:
            Any: the path written.
        """
        from .plot.interactive import write_report

        return write_report([self._ds], path, **kw)
