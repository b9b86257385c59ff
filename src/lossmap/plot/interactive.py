"""One self-contained interactive HTML report of one or several landscapes (plotly, library embedded).

Per landscape: a 3-D surface (rotate, zoom; hover shows the coefficients and every metric), the contour map,
the 1-D curves (for a 2-D landscape the two central cross-sections), the summary numbers of
:mod:`lossmap.stats` and a table of all metadata. With several landscapes on the same grid with the same
metrics, a comparison section draws them side by side on ONE colour scale with the same contour levels,
overlays their curves and tabulates their summary numbers.

Orientation: metric arrays are stored ``(x, y)``; plotly's ``Surface``/``Contour`` take ``z[row][column]``
with rows along ``y``, so they get the transpose (``z[j][i] = metric[x_i, y_j]``), which is what puts ``x``
on the horizontal axis for any grid shape.

Colour range (as in the static figures): from the smallest finite value to
:func:`lossmap.plot.scale.robust_upper` (the 95th percentile) for loss-like metrics, full range for metrics
whose name contains ``acc``. The surface is clipped at the upper end (a flat plateau) so a few exploding
points at the rim do not flatten the basin; hover always shows the stored, unclipped values. ``log=True``
draws ``log10`` of the metric (values ``<= 0`` raised to the smallest positive one). NaN/inf points are gaps.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import xarray as xr
from plotly.subplots import make_subplots

from .. import stats, store
from ..errors import LossmapError
from ..store import meta
from .scale import DEFAULT_LEVELS, MAX_EQUAL_ASPECT_RATIO, robust_upper
from .scale import axis_label as _axis_label
from .scale import higher_is_better as _higher_is_better
from .scale import is_2d as _is_2d
from .scale import log_floor as _log_floor

__all__ = ["write_report", "landscape_figures", "comparison_figures", "report_html", "shared_range", "DEFAULT_LEVELS"]

#: number of contour levels
COLORSCALE = "Viridis"
_PLOT_CONFIG = {"displaylogo": False}
#: width of the surface and contour figures, drawn side by side when the window is wide enough
PANEL_WIDTH = 640


# ---------------------------------------------------------------------------------------------------------
# values and ranges
# ---------------------------------------------------------------------------------------------------------


def _metrics(ds: xr.Dataset) -> list[str]:
    listed = meta(ds).get("metrics")
    dims = {("x", "y"), ("y", "x")} if _is_2d(ds) else {("x",)}
    names = [m for m in listed if m in ds.data_vars] if isinstance(listed, list) else []
    names += [str(n) for n, v in ds.data_vars.items() if tuple(v.dims) in dims and str(n) not in names]
    return names


def _values(ds: xr.Dataset, metric: str) -> np.ndarray:
    """float64 ``(nx,)`` or ``(nx, ny)`` array of ``metric``."""
    store.require_metric(ds, metric)
    dims = ("x", "y") if _is_2d(ds) else ("x",)
    return np.asarray(ds[metric].transpose(*dims).values, dtype=np.float64)


def _display(values: np.ndarray, log: bool, floor: float | None) -> np.ndarray:
    """What is drawn: the values (log10 of them, floored), non-finite -> NaN."""
    v = np.where(np.isfinite(values), values, np.nan)
    if log:
        with np.errstate(invalid="ignore"):
            v = np.log10(np.maximum(v, floor))
    return v


def shared_range(arrays: Sequence[np.ndarray], metric: str, log: bool = False, higher: bool = False
                 ) -> tuple[float, float, float | None]:
    """``(lo, hi, floor)`` of the drawn values over all ``arrays`` (stored values; see the module docstring)."""
    floor = _log_floor(arrays, metric) if log else None
    drawn = np.concatenate([_display(a, log, floor).ravel() for a in arrays])
    finite = drawn[np.isfinite(drawn)]
    if finite.size == 0:
        raise LossmapError(f"metric {metric!r} has no finite value: the landscape was not evaluated or diverged")
    lo = float(finite.min())
    hi = float(finite.max()) if higher else robust_upper(finite)
    if hi <= lo:  # constant landscape
        pad = abs(lo) * 0.01 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi, floor


def _contours(lo: float, hi: float, levels: int) -> dict[str, Any]:
    """Evenly spaced contour levels at round values (step 1, 2, 2.5 or 5 × 10^k, the one nearest to
    ``(hi − lo)/(levels − 1)``) inside [lo, hi], so about ``levels`` of them (plotly contours need an even spacing; with log values they are geometric)."""
    if levels < 2:
        raise LossmapError(f"levels={levels}: give at least 2 contour levels")
    raw = (hi - lo) / (levels - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0)), key=lambda c: abs(math.log(c / raw)))
    start, end = math.ceil(lo / step - 1e-9) * step, math.floor(hi / step + 1e-9) * step
    if end <= start:
        start, end, step = lo, hi, raw
    return {"start": start, "end": end, "size": step, "coloring": "fill", "showlabels": True,
            "labelformat": ".3g"}


def _nan_to_none(a: np.ndarray) -> list:
    """Nested lists with None where values are not finite (plotly draws gaps there)."""
    obj = np.asarray(a, dtype=object)
    obj[~np.isfinite(np.asarray(a, dtype=np.float64))] = None
    return obj.tolist()


# ---------------------------------------------------------------------------------------------------------
# labels, hover, markers
# ---------------------------------------------------------------------------------------------------------


def _short(ds: xr.Dataset, axis: str) -> str:
    return _axis_label(ds, axis).split(" ")[0]


def _hover(ds: xr.Dataset, metrics: Sequence[str], axes: Sequence[str]) -> str:
    parts = [f"{_short(ds, a)}=%{{{a}:.4g}}" for a in axes]
    parts += [f"{m}=%{{customdata[{k}]:.5g}}" for k, m in enumerate(metrics)]
    return "<br>".join(parts) + "<extra></extra>"


def _customdata_2d(ds: xr.Dataset, metrics: Sequence[str]) -> list:
    """``[j][i][k]`` = metric k at ``(x_i, y_j)`` (row along y, like ``z``)."""
    stack = np.stack([_values(ds, m).T for m in metrics], axis=-1)
    return _nan_to_none(stack)


def _markers(ds: xr.Dataset) -> dict[str, tuple[float, float | None]]:
    raw = meta(ds).get("markers")
    out: dict[str, tuple[float, float | None]] = {}
    if isinstance(raw, dict):
        for label, pos in raw.items():
            try:
                vals = [float(v) for v in (pos if isinstance(pos, (list, tuple)) else [pos])]
            except (TypeError, ValueError):
                continue
            if vals and all(math.isfinite(v) for v in vals):
                out[str(label)] = (vals[0], vals[1] if len(vals) > 1 else None)
    return out


def _marker_trace(ds: xr.Dataset, showlegend: bool = False) -> go.Scatter | None:
    marks = _markers(ds)
    if not marks:
        return None
    return go.Scatter(
        x=[p[0] for p in marks.values()], y=[p[1] if p[1] is not None else 0.0 for p in marks.values()],
        mode="markers+text", text=list(marks), textposition="top right", name="models",
        marker={"size": 9, "color": "white", "line": {"color": "black", "width": 1.5}},
        textfont={"size": 13, "color": "black"}, showlegend=showlegend, hoverinfo="text",
    )


# ---------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------


def _surface_trace(ds, metric, log, lo, hi, floor, **kw) -> go.Surface:
    metrics = _metrics(ds)
    drawn = _display(_values(ds, metric), log, floor)
    z = np.minimum(drawn, hi)  # plateau at the top of the colour range
    return go.Surface(
        x=ds["x"].values.astype(float), y=ds["y"].values.astype(float), z=_nan_to_none(z.T),
        cmin=lo, cmax=hi, colorscale=COLORSCALE, customdata=_customdata_2d(ds, metrics),
        hovertemplate=_hover(ds, metrics, ("x", "y")), **kw,
    )


def _contour_trace(ds, metric, log, lo, hi, floor, levels, **kw) -> go.Contour:
    metrics = _metrics(ds)
    drawn = _display(_values(ds, metric), log, floor)
    return go.Contour(
        x=ds["x"].values.astype(float), y=ds["y"].values.astype(float), z=_nan_to_none(drawn.T),
        zmin=lo, zmax=hi, autocontour=False, contours=_contours(lo, hi, levels), colorscale=COLORSCALE,
        customdata=_customdata_2d(ds, metrics), hovertemplate=_hover(ds, metrics, ("x", "y")),
        line={"width": 0.6}, **kw,
    )


def _scene(ds: xr.Dataset, metric: str, log: bool) -> dict[str, Any]:
    return {
        "xaxis": {"title": {"text": _short(ds, "x")}}, "yaxis": {"title": {"text": _short(ds, "y")}},
        "zaxis": {"title": {"text": _zlabel(metric, log)}}, "aspectmode": "manual",
        "aspectratio": {"x": 1, "y": 1, "z": 0.7}, "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 1.0}},
    }


def _zlabel(metric: str, log: bool) -> str:
    return f"log₁₀ {metric}" if log else metric


def _cross_sections(ds: xr.Dataset) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """``(name, coordinates, {metric: values})`` per 1-D curve: the line itself, or the two central sections."""
    metrics = _metrics(ds)
    if not _is_2d(ds):
        return [("", ds["x"].values.astype(float), {m: _values(ds, m) for m in metrics})]
    xs, ys = ds["x"].values.astype(float), ds["y"].values.astype(float)
    i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
    return [
        (f"along {_short(ds, 'x')} ({_short(ds, 'y')}={ys[j0]:.3g})", xs, {m: _values(ds, m)[:, j0] for m in metrics}),
        (f"along {_short(ds, 'y')} ({_short(ds, 'x')}={xs[i0]:.3g})", ys, {m: _values(ds, m)[i0, :] for m in metrics}),
    ]


def _lines_figure(ds: xr.Dataset, metric: str, log: bool, title: str) -> go.Figure:
    from .uncertainty_report import error_bars, section_errors

    metrics = _metrics(ds)
    others = [m for m in metrics if m != metric]
    errors = {m: section_errors(ds, m) for m in [metric, *others]}
    fig = make_subplots(specs=[[{"secondary_y": bool(others)}]])
    dashes = ["solid", "dash"]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    for s, (name, coords, curves) in enumerate(_cross_sections(ds)):
        for k, m in enumerate([metric, *others]):
            v = np.where(np.isfinite(curves[m]), curves[m], np.nan)
            label = f"{m} {name}".strip()
            fig.add_trace(
                go.Scatter(x=coords, y=_nan_to_none(v), mode="lines", name=label,
                           error_y=error_bars(errors[m][s], log and k == 0),
                           line={"dash": dashes[s % 2], "color": palette[k % len(palette)], "width": 2.5 if k == 0 else 1.5},
                           hovertemplate=f"coefficient=%{{x:.4g}}<br>{m}=%{{y:.5g}}<extra>{html.escape(label)}</extra>"),
                secondary_y=(k > 0) if others else None,
            )
    for label, (mx, my) in _markers(ds).items():
        if not _is_2d(ds):
            fig.add_vline(x=mx, line={"dash": "dot", "color": "gray"}, annotation_text=label)
    fig.update_xaxes(title_text="coefficient" if _is_2d(ds) else _axis_label(ds, "x"))
    fig.update_yaxes(title_text=metric, type="log" if log else "linear", secondary_y=False)
    if others:
        fig.update_yaxes(title_text=", ".join(others), secondary_y=True)
    fig.update_layout(title={"text": title}, height=420, legend={"orientation": "h", "y": -0.2})
    return fig


def _equal_aspect(ds: xr.Dataset) -> dict[str, Any]:
    """Equal units on both axes unless that would make the map a sliver (see MAX_EQUAL_ASPECT_RATIO)."""
    xs, ys = ds["x"].values, ds["y"].values
    spans = sorted([float(xs.max() - xs.min()), float(ys.max() - ys.min())])
    return {"scaleanchor": "x", "scaleratio": 1} if spans[0] > 0 and spans[1] / spans[0] <= MAX_EQUAL_ASPECT_RATIO else {}


def landscape_figures(
    ds: xr.Dataset, metric: str = "loss", log: bool = False, title: str = "", levels: int = DEFAULT_LEVELS
) -> dict[str, go.Figure]:
    """The plotly figures of one landscape, as the report shows them (they display in notebooks).

    Args:
        ds (xr.Dataset): a 1-D or 2-D landscape.
        metric (str): the metric of the surface and contour map.
        log (bool): log10 of the values (hover shows the stored ones).
        title (str): a title for the figures.
        levels (int): the number of contour levels.

    Returns:
        dict[str, go.Figure]: ``surface`` and ``contour`` (2-D only) and ``lines``.

    Examples:
        >>> from lossmap.plot.interactive import landscape_figures
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> sorted(landscape_figures(plane))
        ['contour', 'lines', 'surface']
    """
    values = _values(ds, metric)
    figs: dict[str, go.Figure] = {}
    if _is_2d(ds) and ds.sizes["x"] >= 2 and ds.sizes["y"] >= 2:
        lo, hi, floor = shared_range([values], metric, log, _higher_is_better(ds, metric))
        surf = go.Figure(_surface_trace(ds, metric, log, lo, hi, floor, colorbar={"title": {"text": _zlabel(metric, log)}}))
        surf.update_layout(title={"text": f"{title} — surface"}, scene=_scene(ds, metric, log), height=560, width=PANEL_WIDTH,
                           margin={"l": 0, "r": 0, "t": 40, "b": 0})
        figs["surface"] = surf
        cont = go.Figure(_contour_trace(ds, metric, log, lo, hi, floor, levels,
                                        colorbar={"title": {"text": _zlabel(metric, log)}}))
        marks = _marker_trace(ds)
        if marks is not None:
            cont.add_trace(marks)
        cont.update_layout(title={"text": f"{title} — contours"}, height=560, width=PANEL_WIDTH,
                           xaxis={"title": {"text": _axis_label(ds, "x")}},
                           yaxis={"title": {"text": _axis_label(ds, "y")}, **_equal_aspect(ds)})
        figs["contour"] = cont
        if "trajectory_runs" in ds.attrs:  # a trajectory file: its path on both, with a step slider
            from .trajectory import add_paths

            add_paths(figs, ds, metric, log, (lo, hi, floor))
    figs["lines"] = _lines_figure(ds, metric, log, f"{title} — {'central cross-sections' if _is_2d(ds) else 'curve'}")
    return figs


def comparison_figures(
    datasets: Sequence[xr.Dataset], titles: Sequence[str], metric: str = "loss", log: bool = False,
    levels: int = DEFAULT_LEVELS,
) -> dict[str, go.Figure]:
    """Side-by-side figures of comparable landscapes on ONE colour scale (same cmin/cmax and contour levels).

    Args:
        datasets (Sequence[xr.Dataset]): landscapes with the same grid and metric.
        titles (Sequence[str]): a title per landscape.
        metric (str): the metric to draw.
        log (bool): log10 of the values.
        levels (int): the number of contour levels.

    Returns:
        dict[str, go.Figure]: ``contour``, ``surface`` (2-D) and ``lines``.

    Raises:
        LossmapError: the landscapes cannot be compared (different grids or metrics).

    Examples:
        >>> import torch, lossmap
        >>> from lossmap.plot.interactive import comparison_figures
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> planes = [lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:5", y="-1:1:5") for _ in range(2)]
        >>> figs = comparison_figures(planes, ["a", "b"])
        >>> figs["contour"].layout.coloraxis.cmax == figs["surface"].layout.coloraxis.cmax   # one scale
        True
    """
    stats.require_comparable(datasets, titles, metric)
    arrays = [_values(d, metric) for d in datasets]
    lo, hi, floor = shared_range(arrays, metric, log, _higher_is_better(datasets[0], metric))
    n = len(datasets)
    figs: dict[str, go.Figure] = {}
    coloraxis = {"colorscale": COLORSCALE, "cmin": lo, "cmax": hi, "colorbar": {"title": {"text": _zlabel(metric, log)}}}
    if _is_2d(datasets[0]) and datasets[0].sizes["x"] >= 2 and datasets[0].sizes["y"] >= 2:
        cont = make_subplots(rows=1, cols=n, subplot_titles=list(titles), shared_yaxes=True, horizontal_spacing=0.04)
        for k, d in enumerate(datasets):
            cont.add_trace(_contour_trace(d, metric, log, lo, hi, floor, levels, coloraxis="coloraxis", name=titles[k]),
                           row=1, col=k + 1)
            marks = _marker_trace(d)
            if marks is not None:
                cont.add_trace(marks, row=1, col=k + 1)
            cont.update_xaxes(title_text=_short(d, "x"), row=1, col=k + 1)
        cont.update_yaxes(title_text=_short(datasets[0], "y"), row=1, col=1)
        cont.update_layout(coloraxis=coloraxis, height=480, title={"text": f"{_zlabel(metric, log)}: shared colour scale"})
        figs["contour"] = cont
        surf = make_subplots(rows=1, cols=n, specs=[[{"type": "scene"}] * n], subplot_titles=list(titles),
                             horizontal_spacing=0.02)
        for k, d in enumerate(datasets):
            surf.add_trace(_surface_trace(d, metric, log, lo, hi, floor, coloraxis="coloraxis", name=titles[k]),
                           row=1, col=k + 1)
        scenes = {f"scene{'' if k == 0 else k + 1}": {**_scene(d, metric, log), "zaxis": {
            "title": {"text": _zlabel(metric, log)}, "range": [lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)]}}
            for k, d in enumerate(datasets)}
        surf.update_layout(coloraxis=coloraxis, height=520, margin={"l": 0, "r": 0, "t": 60, "b": 0},
                           title={"text": f"{_zlabel(metric, log)}: surfaces on one scale"}, **scenes)
        figs["surface"] = surf
    lines = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for k, (d, t) in enumerate(zip(datasets, titles)):
        for s, (name, coords, curves) in enumerate(_cross_sections(d)):
            v = curves[metric]
            lines.add_trace(go.Scatter(
                x=coords, y=_nan_to_none(np.where(np.isfinite(v), v, np.nan)), mode="lines",
                name=f"{t} {name}".strip(), line={"color": palette[k % len(palette)], "dash": ["solid", "dash"][s % 2]},
            ))
    lines.update_layout(title={"text": f"{metric}: curves overlaid"}, height=420, xaxis={"title": {"text": "coefficient"}},
                        yaxis={"title": {"text": metric}, "type": "log" if log else "linear"},
                        legend={"orientation": "h", "y": -0.2})
    figs["lines"] = lines
    return figs


# ---------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1500px;padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.row{display:flex;flex-wrap:wrap;gap:1em}
details{margin:.5em 0}code{font-size:.9em}.note{color:#555;font-size:.9em}
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.6g}</td>'
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f'<td class="num">{int(value)}</td>'
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return f"<td>{html.escape(str(value))}</td>"


def _meta_table(ds: xr.Dataset) -> str:
    rows = []
    for key, value in meta(ds).items():
        value = _plain(value)
        if isinstance(value, str) and value[:1] in "[{":
            try:  # structured values some writers store as JSON text
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        text = html.escape(str(value))
        if len(text) > 160:
            text = f"<details><summary>{text[:100]}…</summary>{text}</details>"
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{text}</td></tr>")
    return f"<table class=\"meta\">{''.join(rows)}</table>"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _summary_table(summaries: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    keys = stats.ordered_keys(summaries)
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>" + "".join(_cell(s.get(k, "")) for s in summaries) + "</tr>" for k in keys
    )
    return f"<table>{head}{body}</table>"


_SUMMARY_NOTE = (
    "centre: the grid point nearest coefficient 0. rise_radius_*: distance from the centre along each axis at "
    "which the metric first exceeds centre + rise (linearly interpolated; NaN: never inside the grid); larger is "
    "flatter. ball_mean_increase: mean of (metric − centre) over grid points within ball_radius of the centre; "
    "smaller is flatter. Distances are in coefficient units."
)


class _Html:
    """Collects plotly divs; the first one embeds plotly.js, so the page works offline."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.embedded = False
        self.count = 0

    def text(self, s: str) -> None:
        self.parts.append(s)

    def figure(self, fig: go.Figure) -> str:
        self.count += 1
        div = pio.to_html(fig, full_html=False, include_plotlyjs=not self.embedded, config=_PLOT_CONFIG,
                          div_id=f"lossmap-plot-{self.count}", validate=False, auto_play=False)
        self.embedded = True
        return f"<div>{div}</div>"


def report_html(
    datasets: Sequence[xr.Dataset], titles: Sequence[str], metric: str = "loss", log: bool = False,
    levels: int = DEFAULT_LEVELS, rise: float | None = None, sections: Sequence[tuple[str, Sequence[go.Figure], str]] = (),
) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    doc = _Html()
    for d, t in zip(datasets, titles):
        store.require_metric(d, metric, str(t))
    summaries = [stats.summarize(d, metric=metric, rise=rise) for d in datasets]
    doc.text(f"<h1>Loss landscape{'s' if len(datasets) > 1 else ''}: {html.escape(', '.join(titles))}</h1>")
    for heading, figures, note in sections:
        doc.text(f"<h2>{html.escape(heading)}</h2>" + (f'<p class="note">{html.escape(note)}</p>' if note else ""))
        for fig in figures:
            doc.text(doc.figure(fig))
    if len(datasets) > 1:
        links = "".join(f'<li><a href="#landscape-{k + 1}">{html.escape(t)}</a></li>' for k, t in enumerate(titles))
        doc.text(f"<ul>{links}</ul>")
        try:
            figs = comparison_figures(datasets, titles, metric=metric, log=log, levels=levels)
        except LossmapError as exc:
            doc.text("<h2>Summary numbers</h2>" + _summary_table(summaries, titles))
            doc.text(f'<p class="note">{_SUMMARY_NOTE}</p><p class="note">Not drawn side by side '
                     f"(that needs landscapes on one grid with the same metrics): {html.escape(str(exc))}</p>")
        else:
            doc.text("<h2>Comparison</h2>")
            doc.text('<p class="note">All panels share one colour scale and the same contour levels.</p>')
            for note in stats.caveats(datasets, titles):
                doc.text(f'<p class="note"><b>Note:</b> {html.escape(note)}.</p>')
            for key in ("contour", "surface", "lines"):
                if key in figs:
                    doc.text(doc.figure(figs[key]))
            doc.text("<h3>Summary numbers</h3>" + _summary_table(summaries, titles))
            doc.text(f'<p class="note">{_SUMMARY_NOTE}</p>')
    for k, (d, t, s) in enumerate(zip(datasets, titles, summaries)):
        doc.text(f'<h2 id="landscape-{k + 1}">{html.escape(t)}</h2>')
        figs = landscape_figures(d, metric=metric, log=log, title=t, levels=levels)
        if "surface" in figs:
            doc.text('<div class="row">' + doc.figure(figs["surface"]) + doc.figure(figs["contour"]) + "</div>")
        doc.text(doc.figure(figs["lines"]))
        if f"{metric}_se" in d.variables:
            doc.text('<p class="note">Error bars: ± 1.96 standard errors (s/√n) of each point, a 95 % interval for the '
                     "mean over the distribution the data were drawn from.</p>")
        doc.text("<h3>Summary numbers</h3>" + _summary_table([s], [t]))
        if len(datasets) == 1:
            doc.text(f'<p class="note">{_SUMMARY_NOTE}</p>')
        doc.text(f"<details open><summary>Metadata</summary>{_meta_table(d)}</details>")
    body = "\n".join(doc.parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>lossmap report: {html.escape(', '.join(titles))}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(
    datasets: xr.Dataset | Sequence[xr.Dataset], path: str | Path, titles: Sequence[str] | None = None,
    metric: str = "loss", log: bool = False, levels: int = DEFAULT_LEVELS, rise: float | None = None,
    sections: Sequence[tuple[str, Sequence[go.Figure], str]] = (),
) -> Path:
    """Write ONE self-contained HTML report of ``datasets`` to ``path`` (plotly.js embedded; opens offline).

    Per landscape: an interactive 3-D surface, the contour map with the models marked, the 1-D curves, the
    summary numbers and every metadata field; comparable landscapes also side by side on one colour scale.

    Args:
        datasets (xr.Dataset | Sequence[xr.Dataset]): one landscape or several.
        path (str | Path): the ``.html`` file to write; its folder must exist.
        titles (Sequence[str] | None): a title per landscape (default: its ``title`` attribute or ``landscape N``).
        metric (str): the metric of the surfaces and contour maps.
        log (bool): log10 of the values.
        levels (int): the number of contour levels.
        rise (float | None): passed to :func:`lossmap.stats.summarize` (default: each landscape's own threshold).
        sections (Sequence[tuple[str, Sequence[go.Figure], str]]): ``(heading, figures, note)`` drawn first, e.g.
            :func:`lossmap.plot.connect_html.connect_sections` (default: none).

    Returns:
        Path: the path written.

    Examples:
        >>> import pathlib, tempfile
        >>> import torch, lossmap
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:9", y="-1:1:7", seed=0)
        >>> page = lossmap.write_report(plane, pathlib.Path(tempfile.mkdtemp()) / "report.html", titles=["plane"])
        >>> page.stat().st_size > 1_000_000                       # plotly.js is inside: it opens offline
        True
    """
    if isinstance(datasets, xr.Dataset):
        datasets = [datasets]
    datasets = list(datasets)
    if not datasets:
        raise LossmapError("no landscape to report: give at least one landscape file")
    if titles is None:
        titles = [str(d.attrs.get("title") or f"landscape {k + 1}") for k, d in enumerate(datasets)]
    titles = [str(t) for t in titles]
    if len(titles) != len(datasets):
        raise LossmapError(f"{len(titles)} titles for {len(datasets)} landscapes: give one title per landscape")
    path = store.check_output(path, "report.html")
    text = report_html(datasets, titles, metric=metric, log=log, levels=levels, rise=rise, sections=sections)
    with store.atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
