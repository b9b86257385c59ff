"""The landscape of a training run's plane, with its checkpoints on it, computed into one file.

:func:`trajectory_landscape` does four things:

1. the plane of the run(s): :func:`~lossmap.trajectory.trajectory_plane` (two passes over the
   checkpoint files; under torchrun rank 0 computes it and the other ranks receive it);
2. the grid on that plane with the landscape engine (:func:`lossmap.landscape.compute_run`: resumable,
   shared among torchrun ranks), on axes that cover every checkpoint with a margin unless given;
3. for every checkpoint, every metric at its own weights (the whole state of its file, batch-norm
   statistics included) and the plane's metrics at its projection θ_o + xᵢu₁ + yᵢu₂ (the value the map
   shows there), with the grid's objective and engine (no second pass over the data to cache it, no
   second engine to set up) — on rank 0;
4. both stored with the grid (layout: :mod:`lossmap.trajectory.stored`).

Resuming. The file's settings hold hashes of θ_o and of the directions, so a resume with another run
folder (another plane) is refused; a file whose ``trajectory_runs`` name other folders is refused
first, with a line naming them. The plane is recomputed on every call; when the directions saved
beside the file differ from the recomputed ones only by rounding (the Gram matrix's sums may be
ordered differently with another thread count), the saved ones are used, so the resume is accepted.
A complete file whose checkpoints are stored is returned as it is.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import distributed, store
from ..errors import LossmapError
from ..precision import tf32_allowed
from .pca import CHUNK_VALUES, Plane, load_origin, plane_axes, trajectory_plane
from .run import Run, as_runs
from .stored import attach, has_trajectory, plane_attrs, stored_runs

__all__ = ["trajectory_landscape", "trajectory_run", "TrajectoryResult", "evaluate_checkpoints", "DEFAULT_POINTS"]

#: points per axis of the default grid
DEFAULT_POINTS = 41
#: options of compute() that the plane decides
_PLANE_DECIDES = ("directions", "seed", "normalization", "bias", "orthogonalize", "extra_attrs")


@dataclass
class TrajectoryResult:
    """``landscape``: the dataset (grid + checkpoints); ``plane``: the plane; ``computed``: grid points this
    call evaluated; ``resumed``: whether an existing file was continued."""

    landscape: xr.Dataset
    plane: Plane
    computed: int
    resumed: bool


def trajectory_landscape(model: nn.Module, runs: Any, data: Any, x: str | Sequence[float] | None = None,
                         y: str | Sequence[float] | None = None, **options: Any) -> xr.Dataset:
    """The landscape of the plane of ``runs`` with every checkpoint on it (see the module docstring).

    Args:
        model (nn.Module): a model of the recorded architecture (not changed; its weights do not matter).
        runs (str | Path | Run | list): a run folder written by :class:`~lossmap.trajectory.Recorder`, or
            several (e.g. two optimizers from one initialization), which share one plane.
        data: the evaluation data, as for :func:`lossmap.compute`.
        x, y (str | list[float] | None): the grid; default: :func:`~lossmap.trajectory.plane_axes` with
            ``points`` per axis and ``margin``.
        **options: ``origin`` (``"final"``, ``"initial"``, ``"mean"``), ``points`` (41), ``margin`` (0.15),
            ``include_buffers``, ``tensor_filter``, ``labels`` (one per run), ``chunk_values``, and every
            option of :func:`lossmap.compute` except the directions' (``out``, ``overwrite``, ``loss_fn``,
            ``metrics``, ``device``, ``samples``, …).
    Returns:
        xr.Dataset: the grid's metrics as data variables; the checkpoints as coordinates
        (:mod:`lossmap.trajectory.stored`).
    Raises:
        LossmapError: bad runs (empty, mixed architectures, fewer than 3 checkpoints, …), a file of other
            runs or settings at ``out``, and every error of :func:`lossmap.compute`.
    Example:
        >>> ds = trajectory_landscape(Net(), "runs/sgd", test_set, points=31, out="traj.nc")  # doctest: +SKIP
        >>> ds.plane_metric.sel(metric="loss") - ds.checkpoint_metric.sel(metric="loss")  # doctest: +SKIP
    """
    return trajectory_run(model, runs, data, x, y, **options).landscape


def trajectory_run(model: nn.Module, runs: Any, data: Any, x: str | Sequence[float] | None = None,
                   y: str | Sequence[float] | None = None, *, origin: Any = "final", points: int | tuple[int, int] = DEFAULT_POINTS,
                   margin: float = 0.15, include_buffers: bool = False, tensor_filter: str | Sequence[str] | None = None,
                   labels: Sequence[str] | None = None, chunk_values: int = CHUNK_VALUES, **options: Any) -> TrajectoryResult:
    """:func:`trajectory_landscape`, returning a :class:`TrajectoryResult` (the plane and what was computed)."""
    from ..landscape import compute_run

    bad = [k for k in _PLANE_DECIDES if k in options]
    if bad:
        raise LossmapError(f"option {bad[0]!r} is decided by the trajectory's plane: leave it out")
    out = None if options.get("out") is None else store.check_output(options["out"])
    coord, _ = distributed.coordinator(options.get("device", "cpu"))
    plane, problem = None, None
    if coord.primary:
        try:
            folders = as_runs(runs)
            if out is not None and not options.get("overwrite", False):
                _refuse_other_runs(out, folders)
            plane = trajectory_plane(folders, origin, include_buffers=include_buffers, tensor_filter=tensor_filter,
                                     labels=labels, chunk_values=chunk_values)
            if out is not None and not options.get("overwrite", False):
                _keep_saved_directions(plane, out)
        except LossmapError as exc:
            problem = str(exc)
    problem = coord.broadcast(problem)
    if problem is not None:
        raise LossmapError(problem)
    plane = coord.broadcast(plane)
    if x is None or y is None:
        ax, ay = plane_axes(plane, points=points, margin=margin)
        x, y = (ax if x is None else x), (ay if y is None else y)
    at_origin = load_origin(copy.deepcopy(model), plane)
    run = compute_run(at_origin, data, x, y, directions=plane.directions, extra_attrs=plane_attrs(plane), **options)
    ds = run.landscape()
    if not distributed.is_primary():  # rank 0 evaluates the checkpoints and writes the file
        return TrajectoryResult(ds, plane, run.computed, run.resumed)
    kept = _stored(out, plane) if run.resumed and run.computed == 0 else None
    if kept is not None:
        return TrajectoryResult(kept, plane, 0, True)
    with tf32_allowed(run.objective.device, bool(options.get("tf32", False))):
        ds = attach(ds, plane, *evaluate_checkpoints(run.objective, run.engine, plane))
    if out is not None:
        store.save(ds, out)
    return TrajectoryResult(ds, plane, run.computed, run.resumed)


def _refuse_other_runs(out: Path, runs: list[Run]) -> None:
    """Refuse, naming them, a file at ``out`` made from other run folders."""
    if not out.is_file():
        return
    try:
        old = stored_runs(store.load(out))
    except LossmapError:
        return  # compute_run says what is wrong with the file
    new = [str(r.folder.resolve()) for r in runs]
    if old and old != new:
        raise LossmapError(f"output file {str(out)!r} holds the trajectory of {', '.join(old)}, not of {', '.join(new)}: "
                           "choose another --out, or pass --overwrite (overwrite=True) to replace it")


def _keep_saved_directions(plane: Plane, out: Path) -> None:
    """Use the directions saved beside ``out`` when the recomputed ones equal them up to rounding."""
    from ..directions import Directions

    path = store.directions_path(out)
    if not (out.is_file() and path.is_file()):
        return
    try:
        saved = Directions.load(path)
    except LossmapError:
        return
    new = plane.directions.tensors
    if len(saved.tensors) < 2 or any(set(s) != set(d) for s, d in zip(saved.tensors, new)):
        return
    for s, d in zip(saved.tensors, new):
        if any(s[n].shape != d[n].shape or s[n].dtype != d[n].dtype for n in d):
            return
        diff = sum(float((s[n].double() - d[n].double()).square().sum()) for n in d)
        size = sum(float(d[n].double().square().sum()) for n in d)
        eps = torch.finfo(next(iter(d.values())).dtype).eps
        if not diff <= (1000 * eps) ** 2 * size:
            return
    plane.directions.tensors = [dict(s) for s in saved.tensors[:2]]


def _stored(out: Path | None, plane: Plane) -> xr.Dataset | None:
    """The complete file at ``out`` when it stores this plane's checkpoints already."""
    if out is None or not out.is_file():
        return None
    ds = store.load(out)
    if not has_trajectory(ds):
        return None
    same = ([str(v) for v in ds["run_label"].values] == [r.label for r in plane.runs]
            and np.array_equal(ds["step"].values, np.concatenate([r.steps for r in plane.runs])))
    return ds if same else None


def evaluate_checkpoints(objective: Any, engine: Any, plane: Plane) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every metric at each checkpoint's own weights, and of the plane at each checkpoint's projection.

    Args:
        objective (Objective): the objective of the plane's landscape (``compute_run(...).objective``); its
            model is a private copy at the plane's origin, and is left at the last checkpoint.
        engine (Engine): the engine of the plane's landscape (``compute_run(...).engine``), which evaluates
            θ_o + x·u₁ + y·u₂.
        plane (Plane): the plane of the runs.
    Returns:
        (list[str], ndarray, ndarray): the metric names and two (M, n_metrics) arrays, checkpoints in the
        plane's order: at the checkpoints' own weights (every tensor of their files, batch-norm statistics
        included; the reference loop), and of the plane at their projections (the landscape's engine).
    Example:
        >>> run = compute_run(load_origin(Net(), plane), data, x, y, directions=plane.directions)  # doctest: +SKIP
        >>> names, own, on_plane = evaluate_checkpoints(run.objective, run.engine, plane)  # doctest: +SKIP
    """
    from ..engine import Engine

    coords = np.concatenate([r.coords for r in plane.runs])
    paths = [p for r in plane.runs for p in _paths(r)]
    on_plane = engine.evaluate_many(coords)
    own = np.empty_like(on_plane)
    base = objective.workload([], autocast=engine.autocast)  # no directions: the weights as loaded
    for i, path in enumerate(paths):
        _load_state(objective.model, path)
        weights = [t.detach().clone() for t in base.live]
        own[i] = Engine(dataclasses.replace(base, origin=weights)).evaluate_many(np.zeros((1, 0)))[0]
    return list(engine.metric_names), own, on_plane


def _paths(run_coords: Any) -> list[Path]:
    """The checkpoint files of one run of a plane, in step order."""
    from .run import load_run

    run = load_run(run_coords.folder)
    by_step = {c.step: c.path for c in run.checkpoints}
    return [by_step[int(s)] for s in run_coords.steps]


def _load_state(model: nn.Module, path: Path) -> None:
    """Copy a checkpoint's tensors into the model's (a filtered recording holds only some of them)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise LossmapError(f"checkpoint {str(path)!r} does not fit the model: {bad[0]} is "
                           f"{'not in the model' if bad[0] not in own else tuple(own[bad[0]].shape)}; pass the recorded architecture")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
