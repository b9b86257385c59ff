"""The path of a trajectory file in the interactive report: over the contour map and on the 3-D surface,
with a step slider and a play button.

Each run's checkpoints are drawn as in the static figures (:mod:`lossmap.trajectory.figures`): colour =
step on one scale for all runs (Plasma; logarithmic in step + 1 for log-spaced steps), a white circle at
the start, a white star (a diamond on the surface, which has no star) at the newest checkpoint shown,
and a red ring around each checkpoint whose off-plane residual exceeds the threshold. Hovering a
checkpoint shows its run, step, residual, its metric at its own weights and the plane's at its projection.

The slider has one position per frame: frame f shows every checkpoint whose step is at most the f-th
step of all runs together (:func:`lossmap.trajectory.animation.frame_steps`, at most ``max_frames``).
The figure opens at the last frame (the whole path); the play button runs the frames from the start.
On the surface, a checkpoint sits at the plane's stored value at its projection, drawn as the surface
is (log10 with ``log``, clipped to the colour range).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from ..trajectory.animation import frame_steps
from ..trajectory.figures import RESIDUAL_THRESHOLD, log_steps
from ..trajectory.stored import TrajectoryPath, has_trajectory, read_paths

__all__ = ["add_paths", "STEP_COLORSCALE", "MAX_FRAMES"]

STEP_COLORSCALE = "Plasma"
#: the most slider positions / animation frames
MAX_FRAMES = 120
_FPS = 6


def _hover(p: TrajectoryPath, metric: str) -> list[str]:
    own = p.checkpoint.get(metric, np.full(len(p.steps), np.nan))
    plane = p.plane.get(metric, np.full(len(p.steps), np.nan))
    return [f"{p.label} step {s}<br>{metric} at the checkpoint {a:.5g}<br>{metric} of the plane here {b:.5g}"
            f"<br>residual {r:.3g}" for s, a, b, r in zip(p.steps, own, plane, p.residuals)]


class _Layer:
    """The traces of one path on one figure, and their data up to a frame's step."""

    def __init__(self, p: TrajectoryPath, z: np.ndarray | None, colour: np.ndarray, text: list[str],
                 threshold: float) -> None:
        self.p, self.z, self.colour, self.text = p, z, colour, text
        self.flag = p.residuals > threshold

    def _xyz(self, sel: Any) -> dict[str, Any]:
        out = {"x": self.p.coords[sel, 0].tolist(), "y": self.p.coords[sel, 1].tolist()}
        if self.z is not None:
            out["z"] = self.z[sel].tolist()
        return out

    def upto(self, step: float) -> list[dict[str, Any]]:
        """The trace data of the path, the newest point and the flagged rings, for checkpoints up to ``step``
        (what a frame sets: plotly merges it into the traces)."""
        k = int(np.searchsorted(self.p.steps, step, side="right"))
        shown = np.arange(k)
        return [{**self._xyz(shown), "marker": {"color": self.colour[:k].tolist()}, "text": self.text[:k]},
                self._xyz(shown[-1:]), self._xyz(shown[self.flag[:k]])]


def _traces(layer: _Layer, three_d: bool, cmin: float, cmax: float, colorbar: dict | None, first: bool) -> list:
    """The path, the start marker (never changes), the newest point and the flagged rings."""
    Scatter = go.Scatter3d if three_d else go.Scatter
    p = layer.p
    size = (4, 7, 9) if three_d else (7, 12, 16)
    marker = {"color": layer.colour.tolist(), "colorscale": STEP_COLORSCALE, "cmin": cmin, "cmax": cmax, "size": size[0],
              "line": {"color": "black", "width": 0.5}, "showscale": colorbar is not None, "colorbar": colorbar}
    path, now, rings = layer.upto(np.inf)
    path = {k: v for k, v in path.items() if k != "marker"}
    extra = {} if three_d else {"cliponaxis": False}
    return [
        Scatter(**path, mode="lines+markers", name=p.label, line={"color": "#262626", "width": 2}, marker=marker,
                hovertemplate="%{text}<extra></extra>", **extra),
        Scatter(**layer._xyz(slice(0, 1)), mode="markers", name="start", legendgroup="start", showlegend=first,
                marker={"symbol": "circle", "size": size[1], "color": "white", "line": {"color": "black", "width": 2}},
                hoverinfo="skip", **extra),
        Scatter(**now, mode="markers", name="newest checkpoint", legendgroup="now", showlegend=first,
                marker={"symbol": "diamond" if three_d else "star", "size": size[2], "color": "white",
                        "line": {"color": "black", "width": 2}}, hoverinfo="skip", **extra),
        Scatter(**rings, mode="markers", name=f"off the plane (residual > {RESIDUAL_THRESHOLD:g})", legendgroup="flag",
                showlegend=first and bool(layer.flag.any()), hoverinfo="skip",
                marker={"symbol": "circle-open", "size": size[2] + 4, "color": "red", "line": {"color": "red", "width": 2}},
                **extra),
    ]


def _controls(times: np.ndarray, redraw: bool) -> dict[str, Any]:
    """The slider (one position per frame, at the last) and the play / pause buttons."""
    names = [f"step {t:g}" for t in times]
    frame = lambda duration: {"frame": {"duration": duration, "redraw": redraw}, "transition": {"duration": 0}}  # noqa: E731
    slider = {"active": len(times) - 1, "currentvalue": {"prefix": "up to step "}, "pad": {"t": 0}, "len": 0.86, "x": 0.14,
              "y": -0.34, "yanchor": "top",
              "steps": [{"label": f"{t:g}", "method": "animate",
                         "args": [[name], {**frame(0), "mode": "immediate"}]} for t, name in zip(times, names)]}
    buttons = {"type": "buttons", "direction": "down", "x": 0.12, "y": -0.34, "xanchor": "right", "yanchor": "top",
               "pad": {"t": 0, "r": 6}, "showactive": False,
               "buttons": [{"label": "▶ play", "method": "animate", "args": [names, {**frame(1000 // _FPS), "mode": "immediate"}]},
                           {"label": "❚❚ pause", "method": "animate", "args": [[None], {**frame(0), "mode": "immediate"}]}]}
    return {"sliders": [slider], "updatemenus": [buttons]}


def _drawn(values: np.ndarray, log: bool, floor: float | None, lo: float, hi: float) -> np.ndarray:
    """Heights on the surface: as the surface draws the metric (log10, clipped to [lo, hi]); NaN stays NaN."""
    v = np.asarray(values, dtype=np.float64)
    if log:
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.log10(np.maximum(v, floor if floor is not None else np.nanmin(v[v > 0])))
    return np.clip(v, lo, hi)


def add_paths(figures: dict[str, go.Figure], ds: xr.Dataset, metric: str = "loss", log: bool = False,
              value_range: tuple[float, float, float | None] | None = None, max_frames: int = MAX_FRAMES,
              threshold: float = RESIDUAL_THRESHOLD) -> None:
    """Draw the paths stored in ``ds`` on the report's ``contour`` and ``surface`` figures (in place), each
    with its own step slider and play button (see the module docstring). Nothing happens when ``ds`` holds
    no complete trajectory.

    Args:
        figures (dict[str, go.Figure]): :func:`lossmap.plot.interactive.landscape_figures`' figures.
        ds (xr.Dataset): a file written by ``lossmap trajectory``.
        metric, log: the metric drawn and whether the surface shows its log10.
        value_range ((lo, hi, floor)): the surface's drawn range (:func:`~lossmap.plot.interactive.shared_range`).
        max_frames (int): the most slider positions.
        threshold (float): residual above which a checkpoint is ringed.
    Example:
        >>> figs = landscape_figures(lossmap.load("traj.nc")); add_paths(figs, ds)  # doctest: +SKIP
    """
    if not has_trajectory(ds):
        return
    paths = read_paths(ds)
    steps = np.concatenate([p.steps for p in paths]).astype(np.float64)
    scale = np.log1p if log_steps(steps) else (lambda s: s)
    cmin, cmax = float(scale(steps.min())), float(scale(max(steps.max(), steps.min() + 1)))
    ticks = _ticks(steps) if scale is np.log1p else None
    colorbar = {"title": {"text": "step", "side": "top"}, "orientation": "h", "x": 0.5, "xanchor": "center",
                "y": -0.17, "yanchor": "top", "len": 0.6, "thickness": 10}
    if ticks:
        colorbar.update(tickvals=[float(np.log1p(t)) for t in ticks], ticktext=[f"{t:g}" for t in ticks])
    times = frame_steps([p.steps for p in paths], max_frames)
    for key, three_d in (("contour", False), ("surface", True)):
        fig = figures.get(key)
        if fig is None:
            continue
        layers = []
        for p in paths:
            z = None
            if three_d:
                raw = p.plane.get(metric, np.full(len(p.steps), np.nan))
                lo, hi, floor = value_range if value_range is not None else (np.nanmin(raw), np.nanmax(raw), None)
                z = _drawn(raw, log, floor, lo, hi)
            layers.append(_Layer(p, z, np.asarray(scale(p.steps.astype(np.float64))), _hover(p, metric), threshold))
        _add(fig, layers, times, three_d, cmin, cmax, colorbar)


def _add(fig: go.Figure, layers: Sequence[_Layer], times: np.ndarray, three_d: bool, cmin: float, cmax: float,
         colorbar: dict) -> None:
    moving: list[int] = []
    for i, layer in enumerate(layers):
        traces = _traces(layer, three_d, cmin, cmax, colorbar if i == 0 else None, i == 0)
        start = len(fig.data)
        fig.add_traces(traces)
        moving += [start, start + 2, start + 3]  # the start marker (start + 1) stays
    frames = []
    for t in times:
        data = []
        for layer in layers:
            data += [{"type": "scatter3d" if three_d else "scatter", **part} for part in layer.upto(t)]
        frames.append(go.Frame(name=f"step {t:g}", data=data, traces=moving))
    fig.frames = frames
    fig.update_layout(**_controls(times, redraw=three_d), height=(fig.layout.height or 560) + 220, margin={"b": 240},
                      legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.55, "yanchor": "top"})


def _ticks(steps: np.ndarray) -> list[float] | None:
    """Colour-bar ticks of a logarithmic step scale (0, 1, 3, 10, 30, …)."""
    lo, hi = float(steps.min()), float(steps.max())
    ticks = [v for v in [0.0] + [m * 10.0**k for k in range(12) for m in (1, 3)] if lo <= v <= hi]
    return ticks if len(ticks) >= 3 else None
