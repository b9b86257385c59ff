"""Figures of a training trajectory: its path over the contour map, and lifted onto the 3-D surface.

A *path* is one run's checkpoints in the plane: an object with ``coords`` (n × 2: the checkpoints'
coordinates along the plane's two directions), ``steps`` (n) and optionally ``residuals`` (n) and
``label`` — a :class:`~lossmap.trajectory.pca.RunCoordinates` is one; so is any object or mapping
with those names. Several paths (runs in one frame) share one colour scale of steps.

Conventions:

* **Colour = step**, on one scale for all paths (colour bar "step"). The scale is logarithmic in
  step + 1 when the steps are log-spaced (their gaps vary more than they average), so the many early
  checkpoints of a log schedule are told apart; linear otherwise.
* **Start** is a large white circle, **end** a large white star, both edged in black.
* **Off-plane checkpoints** — residual ‖dᵢ − Pdᵢ‖/‖dᵢ‖ above ``residual_threshold`` (default 0.3:
  the offset is more than 17° out of the plane, and ≥ 9 % of its squared length is not shown) — get a
  hollow red ring: the loss drawn under them is the plane's, which may differ from theirs.
* The landscape is drawn by :func:`lossmap.plot.static.plot_contour` / ``plot_surface`` with their
  own conventions (colour range, clipping, log scale).

matplotlib is imported when a figure is drawn, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import LossmapError

__all__ = ["plot_path", "plot_path_surface", "trajectory_figure", "file_figure", "RESIDUAL_THRESHOLD", "STEP_CMAP",
           "as_paths", "step_norm", "log_steps", "FILE_KINDS"]

#: residual above which a checkpoint is flagged (sine of its offset's angle to the plane)
RESIDUAL_THRESHOLD = 0.3
#: colour map of the steps (distinct from the landscape's viridis)
STEP_CMAP = "plasma"
_RUN_MARKERS = ("o", "s", "^", "D", "v", "P")
#: the legend goes below the axes, where it hides no part of the path
LEGEND = {"loc": "upper center", "bbox_to_anchor": (0.5, 0.0), "borderaxespad": 3.6, "ncol": 3, "fontsize": 8,
          "frameon": False}


class _Path:
    def __init__(self, coords: np.ndarray, steps: np.ndarray, residuals: np.ndarray, label: str) -> None:
        self.coords, self.steps, self.residuals, self.label = coords, steps, residuals, label


def as_paths(paths: Any) -> list[_Path]:
    """One path, a list of paths or a :class:`~lossmap.trajectory.pca.Plane`, as checked arrays."""
    if hasattr(paths, "runs") and not isinstance(paths, Mapping):
        paths = paths.runs
    if isinstance(paths, Mapping) or hasattr(paths, "coords"):
        paths = [paths]
    out = []
    for i, p in enumerate(paths):
        get = (lambda k, p=p: p.get(k)) if isinstance(p, Mapping) else (lambda k, p=p: getattr(p, k, None))
        coords = np.asarray(get("coords"), dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise LossmapError(f"path {i} has coordinates of shape {coords.shape}: give an (n, 2) array of plane coordinates")
        steps = np.asarray(get("steps") if get("steps") is not None else np.arange(len(coords)), dtype=np.float64)
        res = get("residuals")
        residuals = np.zeros(len(coords)) if res is None else np.asarray(res, dtype=np.float64)
        if steps.shape != (len(coords),) or residuals.shape != (len(coords),):
            raise LossmapError(f"path {i}: {len(coords)} coordinates but {steps.size} steps and {residuals.size} "
                               "residuals: give one of each per checkpoint")
        out.append(_Path(coords, steps, residuals, str(get("label") or (f"run {i + 1}" if len(paths) > 1 else ""))))
    if not out:
        raise LossmapError("no path to draw: pass a plane or at least one run's coordinates")
    return out


def log_steps(steps: np.ndarray) -> bool:
    """Whether steps are drawn on a logarithmic colour scale (log(step + 1)): when they are log-spaced,
    i.e. their gaps vary more than they average (see the module docstring)."""
    steps = np.unique(np.asarray(steps, dtype=np.float64))
    gaps = np.diff(steps)
    return bool(steps.size and steps.min() >= 0 and gaps.size > 1 and gaps.std() > gaps.mean())


def step_norm(paths: Sequence[_Path]) -> Any:
    """The colour normalization of the steps of all paths (see the module docstring)."""
    from matplotlib import colors as mcolors

    steps = np.unique(np.concatenate([p.steps for p in paths]))
    lo, hi = float(steps.min()), float(steps.max())
    if hi == lo:
        hi = lo + 1.0
    if log_steps(steps):
        return mcolors.FuncNorm((np.log1p, np.expm1), vmin=lo, vmax=hi)
    return mcolors.Normalize(vmin=lo, vmax=hi)


def step_ticks(norm: Any) -> list[float] | None:
    """Colour-bar ticks of a logarithmic step scale (0, 1, 3, 10, 30, …); None for a linear one."""
    if norm.__class__.__name__ != "FuncNorm":
        return None
    candidates = [0.0] + [m * 10.0**k for k in range(12) for m in (1, 3)]
    ticks = [v for v in candidates if norm.vmin <= v <= norm.vmax]
    return ticks if len(ticks) >= 3 else None


def _legend_handles(paths: Sequence[_Path], threshold: float, flagged: bool) -> list:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", ms=9, mfc="white", mec="black", label="start"),
               Line2D([], [], marker="*", ls="", ms=13, mfc="white", mec="black", label="end")]
    if flagged:
        handles.append(Line2D([], [], marker="o", ls="", ms=10, mfc="none", mec="red", mew=1.6,
                              label=f"off the plane (residual > {threshold:g})"))
    if len(paths) > 1:
        handles += [Line2D([], [], color="0.15", marker=_RUN_MARKERS[i % len(_RUN_MARKERS)], ms=5, label=p.label)
                    for i, p in enumerate(paths)]
    return handles


def _draw_path(ax: Any, i: int, p: _Path, xyz: tuple, norm: Any, cmap: str, threshold: float) -> bool:
    """One path on a 2-D or 3-D axes (``xyz`` holds 2 or 3 arrays); returns whether any point is flagged."""
    extra: dict[str, Any] = {"depthshade": False} if len(xyz) == 3 else {}
    ax.plot(*xyz, color="0.15", lw=1.1, zorder=20)
    ax.scatter(*xyz, c=p.steps, cmap=cmap, norm=norm, s=22, marker=_RUN_MARKERS[i % len(_RUN_MARKERS)],
               edgecolors="black", linewidths=0.3, zorder=21, **extra)
    first, last = [a[:1] for a in xyz], [a[-1:] for a in xyz]
    ax.scatter(*first, s=90, marker="o", c="white", edgecolors="black", linewidths=1.2, zorder=23, **extra)
    ax.scatter(*last, s=200, marker="*", c="white", edgecolors="black", linewidths=1.2, zorder=23, **extra)
    flag = p.residuals > threshold
    if flag.any():
        ax.scatter(*[a[flag] for a in xyz], s=110, marker="o", facecolors="none", edgecolors="red",
                   linewidths=1.6, zorder=24, **extra)
    return bool(flag.any())


def _finish(fig: Any, ax: Any, paths: Sequence[_Path], norm: Any, cmap: str, threshold: float, flagged: bool,
            **colorbar_kw: Any) -> None:
    from matplotlib.cm import ScalarMappable

    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="step", **colorbar_kw)
    ticks = step_ticks(norm)
    if ticks:
        cbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.legend(handles=_legend_handles(paths, threshold, flagged), **LEGEND)


def plot_path(ds: xr.Dataset, paths: Any, ax: Any = None, *, metric: str = "loss", log: bool = False,
              levels: int | Sequence[float] | None = None, filled: bool = False,
              residual_threshold: float = RESIDUAL_THRESHOLD, cmap: str = STEP_CMAP, vmin: float | None = None,
              vmax: float | None = None):
    """The path(s) over the contour map of the plane's landscape.

    Args:
        ds (xr.Dataset): a 2-D landscape of the plane (dims x, y).
        paths: a :class:`~lossmap.trajectory.pca.Plane`, one path, or a list (see the module docstring).
        ax: a matplotlib axes to draw on (default: a new figure).
        metric, log, levels, filled, vmin, vmax: as for :func:`lossmap.plot.static.plot_contour`.
        residual_threshold (float): checkpoints whose residual exceeds it get a hollow red ring.
        cmap (str): colour map of the steps.
    Returns:
        (Figure, Axes): the figure and the axes drawn on.
    Example:
        >>> fig, ax = plot_path(ds, plane)  # doctest: +SKIP
        >>> lossmap.plot.save_figure(fig, "trajectory.png")  # doctest: +SKIP
    """
    from ..plot.static import plot_contour

    items = as_paths(paths)
    fig, ax = plot_contour(ds, ax=ax, metric=metric, log=log, levels=levels, filled=filled, vmin=vmin, vmax=vmax)
    norm = step_norm(items)
    flagged = False
    for i, p in enumerate(items):
        flagged |= _draw_path(ax, i, p, (p.coords[:, 0], p.coords[:, 1]), norm, cmap, residual_threshold)
    _finish(fig, ax, items, norm, cmap, residual_threshold, flagged, shrink=0.85)
    return fig, ax


def _interp(ds: xr.Dataset, metric: str, coords: np.ndarray) -> np.ndarray:
    pts = ds[metric].interp(x=xr.DataArray(coords[:, 0], dims="p"), y=xr.DataArray(coords[:, 1], dims="p"))
    return np.asarray(pts.values, dtype=np.float64)


def plot_path_surface(ds: xr.Dataset, paths: Any, z: Sequence[np.ndarray] | np.ndarray | None = None, ax: Any = None, *,
                      metric: str = "loss", log: bool = False, residual_threshold: float = RESIDUAL_THRESHOLD,
                      cmap: str = STEP_CMAP, vmin: float | None = None, vmax: float | None = None):
    """The path(s) lifted onto the 3-D surface of the plane's landscape.

    Args:
        ds (xr.Dataset): a 2-D landscape of the plane.
        paths: as for :func:`plot_path`.
        z (array | list of arrays | None): per path, the value of ``metric`` on the plane at each
            checkpoint's projection (evaluated by the caller). None: interpolated linearly from the
            grid (an approximation; NaN outside it).
        ax: a 3-D axes (default: a new figure).
        metric, log, vmin, vmax: as for :func:`lossmap.plot.static.plot_surface`; heights are clipped
            to the surface's z range as the surface is.
        residual_threshold, cmap: as for :func:`plot_path`.
    Returns:
        (Figure, Axes3D): the figure and the axes drawn on.
    Example:
        >>> fig, ax = plot_path_surface(ds, plane, z=[plane_loss])  # doctest: +SKIP
    """
    from ..plot.static import plot_surface

    items = as_paths(paths)
    if z is None:
        zs = [_interp(ds, metric, p.coords) for p in items]
    else:
        zs = [np.asarray(v, dtype=np.float64) for v in ([z] if np.ndim(z[0]) == 0 else z)]
        if len(zs) != len(items) or any(v.shape != (len(p.coords),) for v, p in zip(zs, items)):
            raise LossmapError(f"z must give one value per checkpoint of each path ({[len(p.coords) for p in items]}), "
                               f"got {[v.size for v in zs]}")
    fig, ax = plot_surface(ds, ax=ax, metric=metric, log=log, vmin=vmin, vmax=vmax)
    zlo, zhi = ax.get_zlim()
    norm = step_norm(items)
    flagged = False
    for i, (p, v) in enumerate(zip(items, zs)):
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.log10(np.where(v > 0, v, np.nan))
        v = np.clip(np.where(np.isfinite(v), v, zlo), zlo, zhi)
        flagged |= _draw_path(ax, i, p, (p.coords[:, 0], p.coords[:, 1], v), norm, cmap, residual_threshold)
    _finish(fig, ax, items, norm, cmap, residual_threshold, flagged, shrink=0.6, pad=0.12)
    return fig, ax


def trajectory_figure(ds: xr.Dataset, paths: Any, z: Sequence[np.ndarray] | np.ndarray | None = None, *,
                      metric: str = "loss", log: bool = False, residual_threshold: float = RESIDUAL_THRESHOLD,
                      levels: int | Sequence[float] | None = None, vmin: float | None = None, vmax: float | None = None):
    """Both views side by side: the path over the contour map (left) and on the surface (right).

    Args:
        ds, paths, z, metric, log, residual_threshold, vmin, vmax: as for :func:`plot_path_surface`.
        levels: as for :func:`plot_path`.
    Returns:
        Figure: the figure (save it with :func:`lossmap.plot.save_figure`).
    Example:
        >>> lossmap.plot.save_figure(trajectory_figure(ds, plane), "lossmap-demo/trajectory.png")  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 5.8), layout="constrained")
    plot_path(ds, paths, fig.add_subplot(1, 2, 1), metric=metric, log=log, levels=levels,
              residual_threshold=residual_threshold, vmin=vmin, vmax=vmax)
    plot_path_surface(ds, paths, z, fig.add_subplot(1, 2, 2, projection="3d"), metric=metric, log=log,
                      residual_threshold=residual_threshold, vmin=vmin, vmax=vmax)
    return fig


#: the figure kinds of ``lossmap plot`` that draw a trajectory file's path
FILE_KINDS = ("contour", "contourf", "surface", "trajectory")


def file_figure(ds: xr.Dataset, kind: str, *, metric: str = "loss", log: bool = False,
                levels: int | Sequence[float] | None = None, vmin: float | None = None, vmax: float | None = None):
    """``lossmap plot``'s figure ``kind`` of a trajectory file, with the stored path(s) drawn on it.

    ``contour``/``contourf``: the path over the map; ``surface``: the path lifted to the plane's value at
    each checkpoint's projection (stored, not interpolated); ``trajectory``: both side by side.

    Args:
        ds (xr.Dataset): a file written by ``lossmap trajectory``.
        kind (str): one of :data:`FILE_KINDS`.
        metric, log, levels, vmin, vmax: as for :func:`lossmap.plot.static.figure`.
    Returns:
        Figure | None: the figure; None when ``ds`` holds no complete trajectory and ``kind`` is not
        ``trajectory`` (the plain figure applies).
    Raises:
        LossmapError: ``kind`` is ``trajectory`` and ``ds`` holds no trajectory.
    Example:
        >>> fig = file_figure(lossmap.load("traj.nc"), "contour")  # doctest: +SKIP
    """
    from .stored import has_trajectory, read_paths

    if kind not in FILE_KINDS or (kind != "trajectory" and not has_trajectory(ds)):
        return None
    paths = read_paths(ds)
    z = [p.plane[metric] for p in paths] if all(metric in p.plane for p in paths) else None
    if kind in ("contour", "contourf"):
        return plot_path(ds, paths, metric=metric, log=log, levels=levels, filled=kind == "contourf", vmin=vmin,
                         vmax=vmax)[0]
    if kind == "surface":
        return plot_path_surface(ds, paths, z, metric=metric, log=log, vmin=vmin, vmax=vmax)[0]
    return trajectory_figure(ds, paths, z, metric=metric, log=log, levels=levels, vmin=vmin, vmax=vmax)
