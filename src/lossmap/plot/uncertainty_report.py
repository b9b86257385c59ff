"""The interactive report's view of uncertainty (plotly, as :mod:`lossmap.plot.interactive`).

* :func:`error_bars` — the error bars of a landscape's 1-D curves: ± 1.96 standard errors (``m_se``, a 95 %
  interval for the mean over the data distribution), which the report draws on every curve of a file that
  holds them;
* :func:`ensemble_report_html` / :func:`write_ensemble_report` — the report of direction ensembles: per file
  the median curve with the 10–90 % band over seeds, in 2-D one contour panel per seed on one colour scale,
  the table of the flatness numbers over seeds with confidence intervals; with two files, whether their
  flatness numbers differ beyond the spread across seeds (the test named).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from .. import store
from ..errors import LossmapError
from ..uncertainty import ensemble as ens
from ..uncertainty.pointwise import se_of
from ..uncertainty.seeds import SEED, is_ensemble
from ..uncertainty.summary import LEVEL, comparison_text, ensemble_rows
from . import interactive as ia
from .scale import DEFAULT_LEVELS, higher_is_better, is_2d

__all__ = ["error_bars", "section_errors", "ensemble_report_html", "write_ensemble_report", "Z"]

#: error bars span ± Z standard errors
Z = 1.96


def section_errors(ds: xr.Dataset, metric: str) -> list[np.ndarray | None]:
    """``m_se`` along each curve of :func:`lossmap.plot.interactive._cross_sections` (None: the file has none)."""
    se = se_of(ds, metric, "se")
    if se is None:
        return [None] * (2 if is_2d(ds) else 1)
    if not is_2d(ds):
        return [np.asarray(se.transpose("x").values, dtype=np.float64)]
    z = np.asarray(se.transpose("x", "y").values, dtype=np.float64)
    xs, ys = ds["x"].values.astype(float), ds["y"].values.astype(float)
    i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
    return [z[:, j0], z[i0, :]]


def error_bars(errors: np.ndarray | None, log: bool = False) -> dict[str, Any] | None:
    """plotly ``error_y`` of ± :data:`Z` standard errors (None without errors or on a log axis)."""
    if errors is None or log:
        return None
    arr = np.where(np.isfinite(errors), Z * errors, np.nan)
    return {"type": "data", "array": ia._nan_to_none(arr), "visible": True, "thickness": 1, "width": 2}


# ---------------------------------------------------------------------------------------------------------
# ensembles
# ---------------------------------------------------------------------------------------------------------


def _band_figure(ds: xr.Dataset, metric: str, log: bool, title: str) -> go.Figure:
    from .uncertainty import _sections

    fig = go.Figure()
    colors = [("#1f77b4", "rgba(31,119,180,0.22)"), ("#d62728", "rgba(214,39,40,0.22)")]
    k = ds.sizes[SEED]
    for s, (label, coords, curves) in enumerate(_sections(ds, metric)):
        med, lo, hi = ens.band(np.where(np.isfinite(curves), curves, np.nan))
        line, fill = colors[s % 2]
        name = f"{label} ".lstrip()
        fig.add_trace(go.Scatter(x=coords, y=ia._nan_to_none(hi), mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=coords, y=ia._nan_to_none(lo), mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=fill, name=f"{name}10–90 % of {k} seeds"))
        fig.add_trace(go.Scatter(x=coords, y=ia._nan_to_none(med), mode="lines", name=f"{name}median",
                                 line={"color": line, "width": 2.5, "dash": "solid" if s == 0 else "dash"}))
    fig.update_layout(title={"text": title}, height=420, legend={"orientation": "h", "y": -0.2},
                      xaxis={"title": {"text": "coefficient"}},
                      yaxis={"title": {"text": metric}, "type": "log" if log else "linear"})
    return fig


def _seeds_figure(ds: xr.Dataset, metric: str, log: bool, levels: int, title: str) -> go.Figure:
    panels = [ds.isel({SEED: i}) for i in range(ds.sizes[SEED])]
    arrays = [ia._values(p, metric) for p in panels]
    lo, hi, floor = ia.shared_range(arrays, metric, log, higher_is_better(ds, metric))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"seed {int(p[SEED].values)}" for p in panels],
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    for i, p in enumerate(panels):
        fig.add_trace(ia._contour_trace(p, metric, log, lo, hi, floor, levels, coloraxis="coloraxis"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(coloraxis={"colorscale": ia.COLORSCALE, "cmin": lo, "cmax": hi,
                                 "colorbar": {"title": {"text": ia._zlabel(metric, log)}}},
                      height=300 * rows + 80, title={"text": title})
    return fig


def _rows_table(rows: dict[str, dict[str, Any]], k: int) -> str:
    head = ("<tr><th>number</th><th>median</th><th>q10</th><th>q90</th><th>mean</th>"
            f"<th>{100 * LEVEL:g} % CI of the mean (t)</th><th>seeds with a value</th></tr>")
    body = "".join(
        f"<tr><th>{html.escape(key)}</th>{ia._cell(d['median'])}{ia._cell(d['q10'])}{ia._cell(d['q90'])}"
        f"{ia._cell(d['mean'])}<td class=\"num\">[{d['ci_low']:.4g}, {d['ci_high']:.4g}]</td>"
        f"<td class=\"num\">{d['n']}/{k}</td></tr>"
        for key, d in rows.items()
    )
    return f"<table>{head}{body}</table>"


_NOTE = (
    "Each seed draws its own random directions; the band shows the spread of the curves over seeds (10 % and 90 % "
    "quantiles), not a confidence interval. The table gives, per flatness number, its median and quantiles over "
    "seeds and a confidence interval for its mean over random directions (t-interval). rise_radius_*: NaN where the "
    "rise is not reached inside the grid; curvature_*: second difference of the slice at the centre."
)


def ensemble_report_html(datasets: Sequence[xr.Dataset], titles: Sequence[str], metric: str = "loss",
                         log: bool = False, levels: int = DEFAULT_LEVELS, rise: float | None = None) -> str:
    """The report of direction ensembles as one HTML string (see :func:`write_ensemble_report`)."""
    doc = ia._Html()
    doc.text(f"<h1>Direction ensemble{'s' if len(datasets) > 1 else ''}: {html.escape(', '.join(titles))}</h1>")
    verdict = comparison_text(datasets, titles, metric=metric, rise=rise)
    if verdict:
        lines = verdict.strip().splitlines()
        items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:])
        doc.text(f"<h2>Do the flatness numbers differ?</h2><p>{html.escape(lines[0])}</p><ul>{items}</ul>")
    for d, t in zip(datasets, titles):
        store.require_metric(d, metric, str(t))
        k = d.sizes[SEED]
        doc.text(f"<h2>{html.escape(t)}</h2>")
        doc.text(doc.figure(_band_figure(d, metric, log, f"{t} — {metric} over {k} direction seeds")))
        if is_2d(d) and d.sizes["x"] >= 2 and d.sizes["y"] >= 2:
            doc.text(doc.figure(_seeds_figure(d, metric, log, levels, f"{t} — one panel per seed, one colour scale")))
        doc.text("<h3>Flatness numbers over seeds</h3>" + _rows_table(ensemble_rows(d, metric, rise), k))
        doc.text(f'<p class="note">{_NOTE}</p>')
        doc.text(f"<details><summary>Metadata</summary>{ia._meta_table(d)}</details>")
    body = "\n".join(doc.parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>lossmap report: {html.escape(', '.join(titles))}</title><style>{ia._CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_ensemble_report(datasets: Sequence[xr.Dataset], path: str | Path, titles: Sequence[str], metric: str = "loss",
                          log: bool = False, levels: int = DEFAULT_LEVELS, rise: float | None = None) -> Path:
    """Write the report of direction ensembles (every file made with ``--seeds``) to ``path``; returns the path."""
    datasets = list(datasets)
    if not datasets or not all(is_ensemble(d) for d in datasets):
        raise LossmapError("a report mixes direction ensembles (files made with --seeds) and single landscapes: "
                           "report them separately")
    path = store.check_output(path, "report.html")
    text = ensemble_report_html(datasets, [str(t) for t in titles], metric=metric, log=log, levels=levels, rise=rise)
    with store.atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
