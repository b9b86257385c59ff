"""A trajectory in a landscape file: the path of one or several runs beside the grid of their plane.

``lossmap trajectory`` (:func:`lossmap.trajectory.trajectory_landscape`) writes ONE netCDF file: the
landscape of the plane (its metrics on the ``x``/``y`` grid, exactly as :func:`lossmap.compute` writes
them) plus the checkpoints. The checkpoints are stored as **coordinates**, never as data variables,
so ``ds.data_vars`` — and :func:`lossmap.store.metric_names`, ``lossmap info``'s metric lines,
``lossmap compare``, ``lossmap export`` — still see only the grid's metrics.

Dimensions and coordinates added to the landscape:

==========================  ========================  ==================================================
name                        dims                      meaning
==========================  ========================  ==================================================
``step``                    (checkpoint,)             the optimizer step of each checkpoint (int64)
``checkpoint_run``          (checkpoint,)             which run it belongs to (index along ``run``)
``checkpoint_x``/``_y``     (checkpoint,)             its least-squares coordinates in the plane
``checkpoint_residual``     (checkpoint,)             ‖dᵢ − Pdᵢ‖ / ‖dᵢ‖ (0: in the plane)
``checkpoint_distance``     (checkpoint,)             ‖dᵢ‖, its distance from the origin
``checkpoint_epoch``/       (checkpoint,)             epoch, learning rate and training loss from the
``_lr``/``_train_loss``                               manifest (NaN where it has none)
``metric``                  (metric,)                 the grid's metric names (``loss``, ``accuracy``…)
``checkpoint_metric``       (checkpoint, metric)      every metric at the checkpoint's own weights
``plane_metric``            (checkpoint, metric)      every metric of the plane at its projection
                                                      (θ_o + xᵢu₁ + yᵢu₂): the value the map shows there
``run_label``/``run_folder``(run,)                    each run's label and folder (as an absolute path)
``pca_share``               (component,)              λₖ / Σλ of every principal direction, descending
==========================  ========================  ==================================================

Checkpoints of all runs follow each other along ``checkpoint`` (run 0's in step order, then run 1's,
…); ``checkpoint_run`` says where each run's stretch is, so runs of different lengths need no padding.

Attributes (flat, beside the landscape's own): ``trajectory_runs`` (JSON list of the folders),
``trajectory_labels`` (JSON list), ``trajectory_origin`` (``final``/``initial``/``mean``),
``trajectory_origin_label``, ``trajectory_explained`` ((λ₁ + λ₂)/Σλ of the uncentred offsets: the
share of the plotted offsets the plane holds), ``trajectory_explained_pc1``/``_pc2``,
``trajectory_checkpoints`` (M) and ``trajectory_residual_max``. They are written with the grid from
the first save on (so a resume can tell which runs a file belongs to); the coordinates above are
added when the grid is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import LossmapError

__all__ = ["TrajectoryPath", "plane_attrs", "attach", "has_trajectory", "read_paths", "stored_runs",
           "trajectory_lines", "summary_text", "COORDINATES"]

#: the coordinates :func:`attach` adds (all of them, metric names aside)
COORDINATES = ("step", "checkpoint_run", "checkpoint_x", "checkpoint_y", "checkpoint_residual", "checkpoint_distance",
               "checkpoint_epoch", "checkpoint_lr", "checkpoint_train_loss", "checkpoint_metric", "plane_metric",
               "run_label", "run_folder", "pca_share")


@dataclass
class TrajectoryPath:
    """One run's checkpoints as stored: what the figures draw (``coords``, ``steps``, ``residuals``,
    ``label``) and the values at them (``checkpoint[metric]``, ``plane[metric]``: arrays of length n)."""

    label: str
    folder: str
    steps: np.ndarray
    coords: np.ndarray
    residuals: np.ndarray
    distances: np.ndarray
    checkpoint: dict[str, np.ndarray] = field(default_factory=dict)
    plane: dict[str, np.ndarray] = field(default_factory=dict)


def plane_attrs(plane: Any) -> dict[str, Any]:
    """The flat attributes that say which plane a file holds (passed to ``compute_run(extra_attrs=...)``)."""
    pc1, pc2 = plane.explained_each
    residuals = np.concatenate([r.residuals for r in plane.runs])
    return {
        "trajectory_runs": [str(Path(r.folder).resolve()) for r in plane.runs],
        "trajectory_labels": [r.label for r in plane.runs],
        "trajectory_origin": plane.origin,
        "trajectory_origin_label": plane.origin_label,
        "trajectory_explained": float(plane.explained),
        "trajectory_explained_pc1": float(pc1),
        "trajectory_explained_pc2": float(pc2),
        "trajectory_checkpoints": int(residuals.size),
        "trajectory_residual_max": float(residuals.max()),
    }


def attach(ds: xr.Dataset, plane: Any, names: Sequence[str], checkpoint_values: np.ndarray,
           plane_values: np.ndarray) -> xr.Dataset:
    """``ds`` with the plane's checkpoints as coordinates (see the module docstring).

    Args:
        ds (xr.Dataset): the landscape of the plane.
        plane (Plane): from :func:`~lossmap.trajectory.trajectory_plane`.
        names (list[str]): the metric names, in the columns' order.
        checkpoint_values, plane_values (ndarray): (M, len(names)) metrics at the checkpoints' own weights
            and of the plane at their projections, checkpoints in the plane's order (run by run).
    Returns:
        xr.Dataset: a new dataset; ``ds`` is not changed.
    """
    runs = plane.runs
    m = sum(len(r.steps) for r in runs)
    names = [str(n) for n in names]
    for what, v in (("checkpoint values", checkpoint_values), ("plane values", plane_values)):
        if np.shape(v) != (m, len(names)):
            raise ValueError(f"{what} have shape {np.shape(v)}, expected {(m, len(names))}")
    cat = lambda key: np.concatenate([np.asarray(getattr(r, key), dtype=np.float64) for r in runs])  # noqa: E731
    coords = np.concatenate([r.coords for r in runs])
    c = ("checkpoint",)
    lam = np.clip(np.asarray(plane.eigenvalues, dtype=np.float64), 0, None)
    new = {
        "step": (c, np.concatenate([np.asarray(r.steps, dtype=np.int64) for r in runs])),
        "checkpoint_run": (c, np.concatenate([np.full(len(r.steps), k, dtype=np.int32) for k, r in enumerate(runs)])),
        "checkpoint_x": (c, coords[:, 0].copy()), "checkpoint_y": (c, coords[:, 1].copy()),
        "checkpoint_residual": (c, cat("residuals")), "checkpoint_distance": (c, cat("distances")),
        "checkpoint_epoch": (c, cat("epochs")), "checkpoint_lr": (c, cat("lrs")), "checkpoint_train_loss": (c, cat("losses")),
        "metric": (("metric",), np.array(names, dtype=object)),
        "checkpoint_metric": (("checkpoint", "metric"), np.asarray(checkpoint_values, dtype=np.float64)),
        "plane_metric": (("checkpoint", "metric"), np.asarray(plane_values, dtype=np.float64)),
        "run_label": (("run",), np.array([r.label for r in runs], dtype=object)),
        "run_folder": (("run",), np.array([str(Path(r.folder).resolve()) for r in runs], dtype=object)),
        "pca_share": (("component",), lam / lam.sum()),
    }
    out = ds.drop_vars([k for k in COORDINATES + ("metric",) if k in ds.variables]).assign_coords(new)
    out["checkpoint_metric"].attrs["long_name"] = "metric at the checkpoint's own weights"
    out["plane_metric"].attrs["long_name"] = "metric of the plane at the checkpoint's projection"
    out["checkpoint_residual"].attrs["long_name"] = "off-plane residual |d - Pd| / |d|"
    out.attrs.update(plane_attrs(plane))
    return out


def has_trajectory(ds: xr.Dataset) -> bool:
    """Whether ``ds`` holds a complete trajectory (its checkpoints' coordinates)."""
    return all(k in ds.variables for k in ("step", "checkpoint_x", "checkpoint_y", "checkpoint_run", "run_label"))


def _json_list(value: Any) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return []
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else []


def stored_runs(ds: xr.Dataset) -> list[str]:
    """The run folders a trajectory file (complete or not) was made from; [] for other landscapes."""
    return [str(v) for v in _json_list(ds.attrs.get("trajectory_runs"))]


def _column(ds: xr.Dataset, name: str, metric: str) -> np.ndarray:
    return np.asarray(ds[name].sel(metric=metric).values, dtype=np.float64)


def read_paths(ds: xr.Dataset, source: str = "the landscape") -> list[TrajectoryPath]:
    """The runs' paths stored in ``ds``, one :class:`TrajectoryPath` per run.

    Args:
        ds (xr.Dataset): a file written by ``lossmap trajectory`` (or :func:`attach`).
        source (str): how errors name the file.
    Returns:
        list[TrajectoryPath]: in the runs' order; the figures of :mod:`lossmap.trajectory.figures` take it.
    Raises:
        LossmapError: ``ds`` holds no (complete) trajectory.
    Example:
        >>> paths = read_paths(lossmap.load("traj.nc"))  # doctest: +SKIP
        >>> paths[0].steps[:3], paths[0].checkpoint["loss"][:3]  # doctest: +SKIP
    """
    if not has_trajectory(ds):
        hint = ("its checkpoints are added when the grid is complete: rerun the same lossmap trajectory command"
                if stored_runs(ds) else "compute one with lossmap trajectory RUN --out FILE.nc")
        raise LossmapError(f"{source} holds no trajectory ({hint})")
    run_of = np.asarray(ds["checkpoint_run"].values)
    metrics = [str(m) for m in ds["metric"].values] if "metric" in ds.variables else []
    out = []
    for k, label in enumerate(ds["run_label"].values):
        sel = run_of == k
        get = lambda name: np.asarray(ds[name].values, dtype=np.float64)[sel]  # noqa: E731
        out.append(TrajectoryPath(
            label=str(label), folder=str(ds["run_folder"].values[k]) if "run_folder" in ds.variables else "",
            steps=np.asarray(ds["step"].values, dtype=np.int64)[sel],
            coords=np.stack([get("checkpoint_x"), get("checkpoint_y")], axis=1),
            residuals=get("checkpoint_residual"), distances=get("checkpoint_distance"),
            checkpoint={m: _column(ds, "checkpoint_metric", m)[sel] for m in metrics},
            plane={m: _column(ds, "plane_metric", m)[sel] for m in metrics},
        ))
    return out


def _range(v: np.ndarray) -> str:
    v = v[np.isfinite(v)]
    return "–" if v.size == 0 else f"{v[0]:.4g} → {v[-1]:.4g}"


def trajectory_lines(ds: xr.Dataset, threshold: float = 0.3) -> list[str]:
    """``lossmap info``'s trajectory section (empty for other landscapes)."""
    if not stored_runs(ds):
        return []
    a = ds.attrs
    out = ["trajectory:",
           f"  origin: {a.get('trajectory_origin_label', a.get('trajectory_origin', '?'))}",
           f"  explained: {100 * float(a.get('trajectory_explained', np.nan)):.1f} % of the offsets' squared length "
           f"(PC1 {100 * float(a.get('trajectory_explained_pc1', np.nan)):.1f} %, "
           f"PC2 {100 * float(a.get('trajectory_explained_pc2', np.nan)):.1f} %)"]
    if not has_trajectory(ds):
        return out + ["  checkpoints: not stored yet (the grid is not complete; rerun the command to finish it)"]
    metric = "loss" if "metric" in ds.variables and "loss" in [str(m) for m in ds["metric"].values] else None
    for p in read_paths(ds):
        flagged = int((p.residuals > threshold).sum())
        line = (f"  run {p.label}: {len(p.steps)} checkpoints, steps {p.steps[0]}–{p.steps[-1]}; residual max "
                f"{p.residuals.max():.3g} ({flagged} above {threshold:g})")
        if metric is not None:
            gap = np.abs(p.plane[metric] - p.checkpoint[metric])
            line += (f"; checkpoint loss {_range(p.checkpoint[metric])}, plane loss at the projections "
                     f"{_range(p.plane[metric])} (largest gap {np.nanmax(gap):.3g})" if np.isfinite(gap).any() else "")
        out.append(line + (f"  [{p.folder}]" if p.folder else ""))
    return out


def summary_text(ds: xr.Dataset) -> str:
    """One line for the command's output: the plane's share and how well it holds the checkpoints."""
    a = ds.attrs
    text = (f"plane: {100 * float(a['trajectory_explained']):.1f} % of the offsets from the "
            f"{a.get('trajectory_origin_label', 'origin')} (PC1 {100 * float(a['trajectory_explained_pc1']):.1f} %, "
            f"PC2 {100 * float(a['trajectory_explained_pc2']):.1f} %)")
    if not has_trajectory(ds):
        return text
    res = np.asarray(ds["checkpoint_residual"].values, dtype=np.float64)
    text += f"; {res.size} checkpoints, residual max {res.max():.3g}"
    if "loss" in [str(m) for m in ds["metric"].values]:
        gap = np.abs(_column(ds, "plane_metric", "loss") - _column(ds, "checkpoint_metric", "loss"))
        if np.isfinite(gap).any():
            text += f"; |plane loss − checkpoint loss| max {np.nanmax(gap):.3g}"
    return text
