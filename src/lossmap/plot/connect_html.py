"""Interactive (plotly) figures of mode connectivity, as sections of the HTML report.

:func:`connect_sections` returns ``(heading, figures, note)`` sections for
:func:`lossmap.plot.interactive.write_report`'s ``sections=``: the barrier curves (loss and error
along θ(α) = (1 − α)A + αB per data set, before and after alignment) and the plane through A, B and
a trained curve's bend with the curve and the straight segment drawn on its contour map (log10 of
the loss). The plane itself is a landscape: pass it to ``write_report`` too for its surface and
cross-sections.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from .interactive import DEFAULT_LEVELS, landscape_figures

__all__ = ["barrier_figures", "curve_plane_figure", "connect_sections"]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
_DASH = {"unaligned": "solid", "aligned": "dash", "curve": "solid", "line": "dash"}


def barrier_figures(ds: xr.Dataset) -> list[go.Figure]:
    """One figure per quantity (loss, error): every data set and path, every evaluated α.

    Args:
        ds: a connection dataset (:func:`lossmap.connect.connect`) or a loaded ``lossmap.connect`` file.

    Returns:
        list[plotly.graph_objects.Figure]: the figures.
    """
    alpha = ds["alpha"].values.astype(float)
    figs = []
    for q in (str(v) for v in ds["quantity"].values):
        fig = go.Figure()
        for j, name in enumerate(str(n) for n in ds["data"].values):
            for path in (str(p) for p in ds["path"].values):
                v = ds[q].sel(path=path, data=name).values
                keep = np.isfinite(v)
                h = float(ds["barrier"].sel(path=path, data=name, quantity=q, definition="frankle"))
                e = float(ds["barrier"].sel(path=path, data=name, quantity=q, definition="entezari"))
                fig.add_trace(go.Scatter(
                    x=alpha[keep], y=v[keep], mode="lines+markers", marker={"size": 4},
                    name=f"{name}, {path}: Frankle {h:.3g}, Entezari {e:.3g}",
                    line={"color": _PALETTE[j % len(_PALETTE)], "dash": _DASH.get(path, "dot")},
                    hovertemplate=f"α=%{{x:.4g}}<br>{q}=%{{y:.5g}}<extra>{name}, {path}</extra>",
                ))
        fig.update_layout(title={"text": f"{q} along θ(α) = (1 − α)A + αB"}, height=440,
                          xaxis={"title": {"text": "α (A at 0, B at 1)"}, "range": [0, 1]},
                          yaxis={"title": {"text": q}}, legend={"orientation": "h", "y": -0.25})
        figs.append(fig)
    return figs


def curve_plane_figure(plane: xr.Dataset, curve: xr.Dataset, levels: int = DEFAULT_LEVELS) -> go.Figure:
    """The plane's contour map (log10 loss) with the curve and the straight segment drawn on it.

    Args:
        plane: the landscape of the plane through A, B and the bend.
        curve: the curve file's contents (``plane_x``, ``plane_y`` per path).
        levels: contour levels.

    Returns:
        plotly.graph_objects.Figure: the figure.
    """
    fig = landscape_figures(plane, metric="loss", log=True, title="plane through A, B and the bend", levels=levels)["contour"]
    for path in ("curve", "line"):
        loss = curve["loss"].sel(path=path).values
        fig.add_trace(go.Scatter(
            x=curve["plane_x"].sel(path=path).values, y=curve["plane_y"].sel(path=path).values, mode="lines",
            name=f"{path} (max loss {np.nanmax(loss):.3g})", customdata=np.stack([curve["t"].values, loss], axis=1),
            line={"color": "white" if path == "curve" else "#d62728", "width": 3, "dash": _DASH[path]},
            hovertemplate="t=%{customdata[0]:.3g}<br>loss=%{customdata[1]:.5g}<extra>" + path + "</extra>",
        ))
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.2})
    return fig


def connect_sections(connection: xr.Dataset | None = None, plane: xr.Dataset | None = None,
                     curve: xr.Dataset | None = None) -> list[tuple[str, Sequence[go.Figure], str]]:
    """Report sections: the barrier curves (with a connection) and the curve on its plane (with both).

    Args:
        connection: a connection dataset.
        plane: the plane through A, B and the bend.
        curve: the curve file's contents.

    Returns:
        list[tuple[str, list[go.Figure], str]]: ``(heading, figures, note)`` per section.
    """
    out: list[tuple[str, Sequence[go.Figure], str]] = []
    if connection is not None:
        note = ("Solid: the models as trained; dashed: B's hidden units permuted to match A (weight matching). "
                "Frankle: max L(α) − (L(A) + L(B))/2; Entezari: max L(α) − (1 − α)L(A) − αL(B).")
        out.append(("Barriers between A and B", barrier_figures(connection), note))
    if plane is not None and curve is not None:
        note = (f"The trained {curve.attrs.get('kind', 'bezier')} curve (white) and the straight segment (red) on "
                "the plane through A, B and the bend; one unit is ‖B − A‖ on both axes.")
        out.append(("Low-loss curve", [curve_plane_figure(plane, curve)], note))
    return out
