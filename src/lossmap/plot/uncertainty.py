"""Static figures of how much of a landscape is noise (matplotlib, as :mod:`lossmap.plot.static`).

* :func:`plot_contour_noise` — a contour map whose contours are left out where the change from the centre
  is within ``k`` paired standard errors (``|m − m(centre)| ≤ k·m_paired_se``, see
  :func:`lossmap.uncertainty.pointwise.noise_mask`); that region is shaded grey. The contour levels and
  colours are those of the unmasked map.
* :func:`plot_band` — a direction ensemble's curves: the median over seeds with the 10–90 % band
  (:func:`lossmap.uncertainty.ensemble.band`) and every seed's curve faintly; for a 2-D ensemble the two
  central cross-sections.
* :func:`plot_seeds` — a 2-D ensemble as small multiples, one panel per seed on one colour scale.
* :func:`plot_summaries` — the distribution over seeds of the flatness numbers (rise radii, ball mean
  increase, curvature at the centre): each seed's value, the median and the confidence interval of the mean
  (:func:`lossmap.uncertainty.ensemble.describe`), for one or several models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..errors import LossmapError
from ..uncertainty import ensemble as ens
from ..uncertainty.pointwise import noise_mask
from ..uncertainty.seeds import SEED, is_ensemble
from . import canvas, plane, static
from .scale import axis_label, higher_is_better, is_2d

__all__ = ["plot_contour_noise", "plot_band", "plot_seeds", "plot_summaries", "ensemble_figure", "ENSEMBLE_KINDS",
           "plot_ensemble_all"]

#: figure kinds of an ensemble file (``lossmap plot``)
ENSEMBLE_KINDS = ("line", "contour", "contourf", "heatmap", "summary")


def _values(ds: xr.Dataset, metric: str) -> np.ndarray:
    return canvas._grid_values(ds, metric, False)


def plot_contour_noise(ds: xr.Dataset, ax: Any = None, metric: str = "loss", log: bool = False, levels: Any = None,
                       vmin: float | None = None, vmax: float | None = None, filled: bool = False, k: float = 2.0):
    """:func:`lossmap.plot.static.plot_contour` with the contours left out where the change from the centre
    is within ``k`` paired standard errors, that region shaded. Returns ``(fig, ax)``.

    Raises :class:`LossmapError` when the landscape holds no paired errors (a file made before lossmap stored them).
    """
    canvas._require_2d(ds, "contour plot", 2)
    values = canvas._grid_values(ds, metric, log)
    lo, hi = canvas._value_range([values], metric, log, vmin, vmax, higher_is_better(ds, metric))
    lv = canvas._levels(levels, lo, hi, log)
    shown, mask = _without_noise(ds, metric, values, k)
    if not np.isfinite(shown).any():  # everything is noise: nothing to contour, only the shade
        fig, ax = canvas._new_axes(ax, figsize=canvas._figsize_2d(ds, filled))
        plane._finish_2d(ax, ds, f"{canvas._metric_label(metric, log)}: {canvas.describe(ds)}")
    else:
        masked = ds.assign({metric: (("x", "y"), shown)})
        fig, ax = static.plot_contour(masked, ax=ax, metric=metric, log=log, levels=lv, vmin=lo, vmax=hi, filled=filled)
    _shade(ax, ds, mask, k)
    return fig, ax


def _without_noise(ds: xr.Dataset, metric: str, values: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """``(values with the noise region NaN, the noise mask)``."""
    mask = noise_mask(ds, metric, k)
    if mask is None:
        raise LossmapError(f"the landscape holds no paired standard errors of {metric!r} (it was made before lossmap "
                           "stored them): recompute it, or drop --mask-noise")
    shown = values.copy()
    shown[mask] = np.nan
    return shown, mask


def _shade(ax: Any, ds: xr.Dataset, mask: np.ndarray, k: float, legend: bool = True) -> None:
    """Shade grey where ``mask`` (x, y) is True."""
    if not mask.any():
        return
    x, y = ds["x"].values.astype(np.float64), ds["y"].values.astype(np.float64)
    ax.contourf(x, y, mask.T.astype(float), levels=[0.5, 1.5], colors=["0.5"], alpha=0.3)
    if legend:
        ax.legend(handles=[Patch(color="0.5", alpha=0.3, label=f"within {k:g} paired SE of the centre")],
                  loc="upper right", fontsize=7, framealpha=0.85)


def _sections(ds: xr.Dataset, metric: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, coords, values [K, G])`` per curve of an ensemble: the line, or the two central sections."""
    dims = (SEED, "x", "y") if is_2d(ds) else (SEED, "x")
    z = np.asarray(ds[metric].transpose(*dims).values, dtype=np.float64)
    xs = ds["x"].values.astype(np.float64)
    if not is_2d(ds):
        return [("", xs, z)]
    ys = ds["y"].values.astype(np.float64)
    i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
    xl, yl = axis_label(ds, "x").split()[0], axis_label(ds, "y").split()[0]
    return [(f"along {xl}", xs, z[:, :, j0]), (f"along {yl}", ys, z[:, i0, :])]


def plot_band(ds: xr.Dataset, ax: Any = None, metric: str = "loss", log: bool = False, low: float = 0.1,
              high: float = 0.9):
    """A direction ensemble's curves: median and ``low``–``high`` quantile band over seeds, each seed faintly.
    Returns ``(fig, ax)``."""
    _require_ensemble(ds)
    fig, ax = canvas._new_axes(ax, figsize=(6.4, 4.6))
    colors = ["#1f77b4", "#d62728"]
    k = ds.sizes[SEED]
    for s, (label, coords, curves) in enumerate(_sections(ds, metric)):
        curves = np.where(np.isfinite(curves), curves, np.nan)
        med, lo, hi = ens.band(curves, low, high)
        c = colors[s % 2]
        for row in curves:
            ax.plot(coords, row, color=c, lw=0.6, alpha=0.25)
        ax.fill_between(coords, lo, hi, color=c, alpha=0.25, lw=0,
                        label=f"{100 * low:g}–{100 * high:g} % of {k} seeds {label}".strip())
        ax.plot(coords, med, color=c, lw=2, ls="-" if s == 0 else "--", label=f"median {label}".strip())
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("coefficient" if is_2d(ds) else axis_label(ds, "x"))
    ax.set_ylabel(canvas._metric_label(metric, log))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} over {k} direction seeds: {canvas.describe(ds)}")
    return fig, ax


def plot_seeds(ds: xr.Dataset, metric: str = "loss", kind: str = "contour", log: bool = False, levels: Any = None,
               vmin: float | None = None, vmax: float | None = None, mask_noise: bool = False, cols: int = 4) -> Figure:
    """A 2-D ensemble as small multiples: one ``kind`` panel (``contour``, ``contourf``, ``heatmap``) per seed,
    one colour scale and the same contour levels for all; ``mask_noise`` leaves out contours within 2 paired
    standard errors of the centre in each panel. Returns the figure."""
    _require_ensemble(ds)
    canvas._require_2d(ds, "small-multiples plot", 1 if kind == "heatmap" else 2)
    if kind not in ("contour", "contourf", "heatmap"):
        raise LossmapError(f"small multiples of kind {kind!r}: choose contour, contourf or heatmap")
    panels = [ds.isel({SEED: i}) for i in range(ds.sizes[SEED])]
    arrays = [canvas._grid_values(p, metric, log) for p in panels]
    lo, hi = canvas._value_range(arrays, metric, log, vmin, vmax, higher_is_better(ds, metric))
    lv = canvas._levels(levels, lo, hi, log)
    n = len(panels)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    w, h = canvas._panel_size(ds)
    fig = Figure(figsize=(cols * (0.7 * w + 0.5) + 1.6, rows * (0.7 * h + 0.7) + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    norm = canvas._norm(min(lo, lv[0]), max(hi, lv[-1]), log) if kind != "heatmap" else canvas._norm(lo, hi, log)
    extend = canvas._extend(arrays, lv[0], lv[-1]) if kind != "heatmap" else canvas._extend(arrays, lo, hi)
    mappable = None
    for i, (ax, panel, values) in enumerate(zip(axes, panels, arrays)):
        mask = None
        if mask_noise:
            values, mask = _without_noise(panel, metric, values, 2.0)
        if kind == "heatmap":
            mappable = ax.pcolormesh(canvas._edges(panel["x"].values), canvas._edges(panel["y"].values),
                                     canvas._masked(values).T, norm=norm, cmap=canvas.CMAP, shading="flat")
        elif np.isfinite(values).any():
            mappable = plane._draw_contour(ax, panel, values, lv, norm, kind == "contourf", extend)
        if mask is not None:
            _shade(ax, panel, mask, 2.0, legend=i == 0)
        plane._finish_2d(ax, panel, f"seed {int(panel[SEED].values)}")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
    for ax in axes[n:]:
        ax.set_visible(False)
    if mappable is not None:
        canvas._colorbar(fig, mappable, list(axes[:n]), canvas._metric_label(metric, log), log,
                         lv if kind != "heatmap" else None, **({"extend": extend} if kind == "heatmap" else {}))
    fig.suptitle(f"{canvas._metric_label(metric, log)} over {n} direction seeds: {canvas.describe(ds)} (one colour scale)")
    return fig


def plot_summaries(datasets: Sequence[xr.Dataset], names: Sequence[str] | None = None, metric: str = "loss",
                   rise: float | None = None, radius: float | None = None, level: float = 0.9,
                   keys: Sequence[str] | None = None) -> Figure:
    """The distribution over seeds of each flatness number, one panel per number: each seed's value (dots),
    the median (a tick) and the ``level`` confidence interval of the mean (a bar), per model. Returns the figure."""
    datasets = list(datasets)
    names = [f"model {i + 1}" for i in range(len(datasets))] if names is None else [str(n) for n in names]
    for d in datasets:
        _require_ensemble(d)
    summaries = [ens.seed_summaries(d, metric=metric, rise=rise, radius=radius) for d in datasets]
    chosen = list(keys) if keys is not None else [k for k in ens.FLATNESS_KEYS if all(k in s for s in summaries)]
    fig = Figure(figsize=(6.4, 0.9 + 0.75 * len(chosen) * max(1, len(datasets)) ** 0.5), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False).ravel()
    rng = np.random.default_rng(0)  # jitter of the dots only
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for ax, key in zip(axes, chosen):
        for m, (s, name) in enumerate(zip(summaries, names)):
            values = np.asarray(s[key], dtype=np.float64)
            d = ens.describe(values, level=level)
            yy = m + rng.uniform(-0.12, 0.12, size=values.size)
            c = colors[m % len(colors)]
            ax.plot(values, yy, "o", ms=3.5, color=c, alpha=0.6)
            if d["n"] >= 2:
                ax.plot([d["ci_low"], d["ci_high"]], [m, m], color=c, lw=3, alpha=0.8, solid_capstyle="butt")
                ax.plot([d["median"]], [m], "|", color="k", ms=12, mew=1.5)
        if not any(np.isfinite(np.asarray(s[key], dtype=np.float64)).any() for s in summaries):
            ax.text(0.5, 0.5, "not reached inside the grid for any seed" if key.startswith("rise_radius") else "no finite value",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4")
            ax.set_xticks([])
        ax.set_yticks(range(len(names)), labels=names, fontsize=8)
        ax.set_ylim(-0.6, len(names) - 0.4)
        counts = ", ".join(f"{int(np.isfinite(np.asarray(s[key], dtype=float)).sum())}/{len(s[key])}" for s in summaries)
        ax.set_title(f"{key} (seeds with a value: {counts})", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{metric}: flatness numbers over direction seeds (dots: seeds, bar: {100 * level:g} % CI of the mean, "
                 "tick: median)", fontsize=9)
    return fig


def ensemble_figure(ds: xr.Dataset, kind: str, metric: str = "loss", log: bool = False, levels: Any = None,
                    vmin: float | None = None, vmax: float | None = None, mask_noise: bool = False,
                    rise: float | None = None) -> Figure:
    """One figure of an ensemble file: ``line`` (band), ``contour``/``contourf``/``heatmap`` (small multiples)
    or ``summary`` (the flatness numbers' distribution)."""
    _require_ensemble(ds)
    if kind == "line":
        return plot_band(ds, metric=metric, log=log)[0]
    if kind == "summary":
        return plot_summaries([ds], [str(ds.attrs.get("title") or "this model")], metric=metric, rise=rise)
    if kind in ("contour", "contourf", "heatmap"):
        if not is_2d(ds):
            raise LossmapError(f"--kind {kind} needs a 2-D landscape; this ensemble is 1-D: use --kind line or summary")
        return plot_seeds(ds, metric=metric, kind=kind, log=log, levels=levels, vmin=vmin, vmax=vmax, mask_noise=mask_noise)
    raise LossmapError(f"figure kind {kind!r} does not apply to a direction ensemble: choose one of {', '.join(ENSEMBLE_KINDS)}")


def plot_ensemble_all(ds: xr.Dataset, out_stem: str | Path, formats: Sequence[str], **options: Any) -> list[Path]:
    """Every figure of an ensemble file (the band, small multiples in 2-D, the summary distribution)."""
    kinds = ("line", "contour", "summary") if is_2d(ds) else ("line", "summary")
    written: list[Path] = []
    for kind in kinds:
        written += static.save_figure(ensemble_figure(ds, kind, **options), static.figure_stem(out_stem, kind), formats)
    return written


def _require_ensemble(ds: xr.Dataset) -> None:
    if not is_ensemble(ds):
        raise LossmapError("this figure needs a direction ensemble (a file made with --seeds): compute one with "
                           "lossmap surface --seeds 0:8")
