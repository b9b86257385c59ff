"""Static figures of a landscape (matplotlib, Agg backend): the conventions, the entry points and the files.

Every function takes a landscape :class:`xarray.Dataset` (see :mod:`lossmap.store`) and returns the figure
(and axes) it drew on, so that callers can adjust it or place it in a larger figure via ``ax=``. Figures are plain
:class:`matplotlib.figure.Figure` objects (no pyplot state, no display needed); they are rendered by the Agg
backend when saved, so this works on headless machines and never changes the user's pyplot backend.

Conventions shared by all plots:

* **Orientation.** Metric arrays are stored with dims ``("x", "y")``; they are always drawn with ``x`` on the
  horizontal axis and ``y`` on the vertical axis, and cell edges are the midpoints between coordinates, so
  non-uniform and non-square grids are placed correctly.
* **Missing points.** NaN and ±inf values are masked (drawn as gaps / transparent cells). A metric with no
  finite value at all raises :class:`~lossmap.errors.LossmapError`.
* **Colour range.** Unless ``vmin``/``vmax`` are given, the range runs from the smallest finite value to
  :func:`robust_upper` (the 95th percentile of the finite values) for loss-like metrics, so that a few
  exploding points at the rim do not flatten the basin; values beyond the range are drawn in the colour map's
  end colours (colour bars show an arrow). Metrics whose name contains ``acc`` (higher is better, bounded)
  use their full range.
* **Surface clip.** :func:`plot_surface` clips z to the same upper bound (``min(value, vmax)``), which keeps
  the surface continuous (a flat plateau where it is clipped) and the basin visible.
* **Log scale.** ``log=True`` needs positive values: values ``<= 0`` are raised to a floor equal to the
  smallest positive finite value of the data shown (a metric with no positive value raises
  :class:`~lossmap.errors.LossmapError`). Contour levels are then geometric.

The figures live in :mod:`lossmap.plot.line`, :mod:`lossmap.plot.plane` and :mod:`lossmap.plot.compare` (their
shared pieces in :mod:`lossmap.plot.canvas`); this module hands them out with :func:`figure`, :func:`plot_all`
and :func:`save_figure`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import LossmapError
from ..store import check_output
from .canvas import _metric_names, describe
from .compare import plot_compare
from .line import plot_line
from .plane import plot_contour, plot_heatmap, plot_surface
from .scale import DEFAULT_LEVELS, ROBUST_PERCENTILE, robust_upper
from .scale import is_2d as _is_2d

__all__ = [
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
]

#: file formats :func:`save_figure` writes
FORMATS = ("png", "pdf", "svg")
PNG_DPI = 150


def _close(fig: Any) -> None:
    """Release a figure: pyplot-managed figures are closed; others are dropped with their last reference."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)


def save_figure(fig: Any, path_or_stem: str | Path, formats: Sequence[str] | str = ("png",)) -> list[Path]:
    """Write ``fig`` and close it.

    A path ending in ``.png``/``.pdf``/``.svg`` names exactly one file, written in that format (``formats`` is
    then ignored); any other path is a stem and gets one file per format (``stem.png``, ``stem.pdf``, …).
    PNGs are written at 150 dpi.

    Args:
        fig (Any): a matplotlib figure.
        path_or_stem (str | Path): a file or a stem; its folder must exist.
        formats (Sequence[str] | str): the formats for a stem.

    Returns:
        list[Path]: the paths written.

    Examples:
        >>> import pathlib, tempfile
        >>> from lossmap.plot.static import save_figure
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig, _ = lossmap.plot_contour(plane)
        >>> [p.name for p in save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "plane", ("png", "svg"))]
        ['plane.png', 'plane.svg']
    """
    path = Path(path_or_stem)
    try:
        suffix = path.suffix.lower().lstrip(".")
        if suffix in FORMATS:
            targets = [(path, suffix)]
        else:
            fmts = [formats] if isinstance(formats, str) else list(formats)
            if not fmts:
                raise LossmapError("no figure format given: choose one or more of png, pdf, svg")
            targets = []
            for f in fmts:
                f = str(f).lower().lstrip(".")
                if f not in FORMATS:
                    raise LossmapError(f"unknown figure format {f!r}: choose one of {', '.join(FORMATS)}")
                targets.append((path.with_name(f"{path.name}.{f}"), f))
        check_output(path, "figure.png")
        written = []
        for target, f in targets:
            kw = {"dpi": PNG_DPI} if f == "png" else {}
            try:
                fig.savefig(target, format=f, bbox_inches="tight", **kw)
            except PermissionError as exc:
                raise LossmapError(f"cannot write {str(target)!r}: permission denied; choose another --out") from exc
            except OSError as exc:
                raise LossmapError(f"cannot write {str(target)!r}: {exc}") from exc
            written.append(target)
        return written
    finally:
        _close(fig)


KINDS_2D = ("contour", "contourf", "heatmap", "surface", "line")


def kinds_for(ds: xr.Dataset) -> tuple[str, ...]:
    """The figure kinds that apply to a landscape.

    Args:
        ds (xr.Dataset): a landscape.

    Returns:
        tuple[str, ...]: 1-D ``("line",)``; 2-D all of :data:`KINDS_2D`, but only ``heatmap`` and ``line`` when
            an axis has a single point (contours and surfaces need 2 points each way).

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.plot.static import kinds_for
        >>> kinds_for(xr.Dataset({"loss": (("x", "y"), np.zeros((5, 1)))}, coords={"x": np.arange(5.0), "y": [0.0]}))
        ('heatmap', 'line')
    """
    if not _is_2d(ds):
        return ("line",)
    if min(ds.sizes["x"], ds.sizes["y"]) < 2:
        return ("heatmap", "line")
    if "trajectory_runs" in ds.attrs:  # a trajectory file: the path over the map and on the surface, side by side
        from ..trajectory.stored import has_trajectory

        return KINDS_2D + ("trajectory",) if has_trajectory(ds) else KINDS_2D
    return KINDS_2D


def figure(ds: xr.Dataset, kind: str, metric: str | None = None, log: bool = False, levels: Any = None,
           vmin: float | None = None, vmax: float | None = None) -> Any:
    """One figure of a given kind (a file of ``lossmap trajectory`` also draws its stored path).

    Args:
        ds (xr.Dataset): a landscape.
        kind (str): ``line``, ``contour``, ``contourf``, ``heatmap`` or ``surface``; ``trajectory`` for a file
            of ``lossmap trajectory`` (its contour and surface figures also carry the path).
        metric (str | None): default ``loss`` (or the first metric when there is no loss); ``line`` draws every
            metric.
        log (bool): log scales.
        levels (Any): contour levels (a count or a list).
        vmin (float | None): the lower end of the colour scale.
        vmax (float | None): its upper end.

    Returns:
        Any: the matplotlib figure.

    Examples:
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> fig = lossmap.plot.figure(plane, "contourf", metric="accuracy")
        >>> type(fig).__name__
        'Figure'
    """
    if metric is None:
        names = _metric_names(ds)
        metric = "loss" if "loss" in ds.data_vars else (names[0] if names else "loss")
    if kind == "line":
        return plot_line(ds, log=log)[0]
    if "trajectory_runs" in ds.attrs or kind == "trajectory":  # the path of a trajectory file drawn on the map
        from ..trajectory.figures import file_figure

        fig = file_figure(ds, kind, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax)
        if fig is not None:
            return fig
    if kind in ("contour", "contourf"):
        return plot_contour(ds, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax, filled=kind == "contourf")[0]
    if kind == "heatmap":
        return plot_heatmap(ds, metric=metric, log=log, vmin=vmin, vmax=vmax)[0]
    if kind == "surface":
        return plot_surface(ds, metric=metric, log=log, vmin=vmin, vmax=vmax)[0]
    raise LossmapError(f"figure kind {kind!r} is unknown: choose one of {', '.join(KINDS_2D)}")


def figure_stem(stem: str | Path, kind: str) -> Path:
    """``<stem>_<kind>``, the stem of a ``kind`` figure's files (a ``.png``/``.pdf``/``.svg`` on ``stem`` dropped)."""
    stem = Path(stem)
    if stem.suffix.lower().lstrip(".") in FORMATS:
        stem = stem.with_suffix("")
    return stem.with_name(f"{stem.name}_{kind}")


def plot_all(ds: xr.Dataset, out_stem: str | Path, formats: Sequence[str] = ("png", "pdf"), log: bool = False,
             metric: str | None = None, levels: Any = None, vmin: float | None = None,
             vmax: float | None = None) -> list[Path]:
    """Every figure that applies (:func:`kinds_for`), as ``<stem>_<kind>.<fmt>``.

    Args:
        ds (xr.Dataset): a landscape.
        out_stem (str | Path): the stem, e.g. ``figures/plane``; its folder must exist.
        formats (Sequence[str]): ``png``, ``pdf``, ``svg``.
        log (bool): log scales.
        metric (str | None): the metric of the 2-D figures (default: ``loss``).
        levels (Any): contour levels (a count or a list).
        vmin (float | None): the lower end of the colour scales.
        vmax (float | None): their upper end.

    Returns:
        list[Path]: the paths written.

    Examples:
        >>> import pathlib, tempfile
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> written = lossmap.plot_all(plane, pathlib.Path(tempfile.mkdtemp()) / "plane", formats=("png",))
        >>> sorted(p.name for p in written)
        ['plane_contour.png', 'plane_contourf.png', 'plane_heatmap.png', 'plane_line.png', 'plane_surface.png']
    """
    fmts = [formats] if isinstance(formats, str) else list(formats)
    written: list[Path] = []
    for kind in kinds_for(ds):
        fig = figure(ds, kind, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax)
        written += save_figure(fig, figure_stem(out_stem, kind), fmts)
    return written
