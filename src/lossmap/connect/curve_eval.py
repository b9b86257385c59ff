"""A trained curve evaluated, and the plane it lies in (Garipov et al. 2018, figure 1).

Every point of a Bezier curve or polygonal chain through A, B and the bend θ lies in the plane through
the three models (:func:`~lossmap.directions.target_directions`: A at (0, 0), B at (1, 0), θ at
(x_θ, y_θ), one unit = ‖B − A‖): φ(t) = A + c1(t)(θ − A) + c2(t)(B − A) sits at
(c1·x_θ + c2, c1·y_θ), with (c1, c2) from :func:`~lossmap.connect.curve.curve_coefficients`. So the
curve, the straight segment (at (t, 0)) and the landscape of the plane are all evaluated through one
set of directions, with the same engine.

The models are given as full state dicts (buffers included); :func:`bend_state` makes the bend's from
a trained :class:`~lossmap.connect.curve.Curve`. Where the model has batch norm, statistics are
re-estimated at every point (``bn="recompute"``) from ``bn_data`` — the training data — as the
running statistics of a point between models mean nothing.

Curve file layout (:func:`save_curve`; netCDF/HDF5, format ``lossmap.curve``): dims ``path``
(``curve``, ``line``) and ``t``; ``loss(path, t)`` and ``error(path, t)`` (1 − accuracy, for
classifiers); ``plane_x(path, t)``, ``plane_y(path, t)``: each point's place in the plane;
``peak(path, quantity)`` and ``peak_t(...)``: the largest value along each path and its t;
``barrier(path, quantity, definition)`` and ``barrier_t(...)``: Frankle's and Entezari's barriers
over the evaluated t; attributes: the curve's kind and training record, the bend's coordinates
(``bend_x``, ``bend_y``), the data and the batch-norm policy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..data.source import make_source
from ..directions import Directions, target_directions
from ..errors import LossmapError
from ..models import load_state_dict_into
from ..objective import Objective
from ..space import borrow, select_tensors, tensor_hash
from .barrier import barriers
from .check import as_state, check_states
from .curve import Curve, curve_coefficients
from .path import DEFINITIONS, quantities_of, to_quantities

__all__ = ["has_batch_norm", "bend_state", "plane_directions", "curve_points", "evaluate_curve", "plane_axes", "curve_plane",
           "save_curve", "FORMAT"]

FORMAT = "lossmap.curve"
FORMAT_VERSION = 1
NAMES = ("A", "B", "bend")


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has batch-norm layers (whose statistics must be recomputed along a curve)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def _recompute_bn(net: nn.Module, data: Any, batch_size: int) -> None:
    """Batch-norm running statistics of ``net`` re-estimated on ``data`` (cumulative average, train mode)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ref = next(iter(net.parameters()))
    source = make_source(data, batch_size=batch_size, device=ref.device, dtype=ref.dtype)
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for b in source:
        net(b.inputs)
    net.eval()


def bend_state(model: nn.Module, a: nn.Module | Mapping[str, torch.Tensor], curve: Curve, bn_data: Any = None,
               batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The bend as a full state dict: the curve's trained tensors, every other tensor from A, and — where the
    model has batch norm and ``bn_data`` is given — statistics re-estimated at the bend on ``bn_data``.

    Args:
        model: the architecture (left unchanged; a copy runs the re-estimation).
        a: model A (the curve's start), for the tensors the curve does not move.
        curve: the trained curve.
        bn_data: the training data, for batch-norm statistics.
        batch_size: batches of ``bn_data``.

    Returns:
        dict[str, torch.Tensor]: the bend's state dict (CPU tensors).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lossmap.connect import train_curve
        >>> net = nn.Linear(2, 1)
        >>> b = {k: v + 1 for k, v in net.state_dict().items()}
        >>> curve = train_curve(net, net, b, [(torch.randn(4, 2), torch.randn(4, 1))], nn.functional.mse_loss, epochs=1)
        >>> sorted(bend_state(net, net, curve))
        ['bias', 'weight']
    """
    state = {k: v.detach().clone() for k, v in as_state(a).items()}
    missing = [n for n in curve.bend if n not in state]
    if missing:
        raise LossmapError(f"the curve moves {missing[0]!r}, which model A does not have: use the curve's own endpoints")
    state.update({n: t.detach().to(state[n]) for n, t in curve.bend.items()})
    if bn_data is not None and has_batch_norm(model):
        net = copy.deepcopy(model)
        load_state_dict_into(net, state, "the bend")
        _recompute_bn(net, bn_data, batch_size)
        state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    return {k: v.to("cpu") for k, v in state.items()}


def _copied(a: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in as_state(a).items()}


def plane_directions(model: nn.Module, b: Mapping[str, torch.Tensor], bend: Mapping[str, torch.Tensor]) -> Directions:
    """The plane through A (the model as it is), B and the bend, over the model's tensors, buffers included
    (in the model's device and dtype); markers A, B, bend."""
    live = select_tensors(model, include_buffers=True)
    pick = lambda s: {n: s[n].to(device=t.device, dtype=t.dtype) for n, t in live.items()}  # noqa: E731
    return target_directions(model, pick(b), pick(bend), include_buffers=True, names=NAMES)


def curve_points(kind: str, t: np.ndarray, bend_xy: tuple[float, float]) -> np.ndarray:
    """``(len(t), 2)`` plane coordinates of φ(t): ``(c1·x_θ + c2, c1·y_θ)``.

    Example:
        >>> curve_points("bezier", np.array([0.0, 0.5, 1.0]), (0.5, 1.0)).tolist()
        [[0.0, 0.0], [0.5, 0.5], [1.0, 0.0]]
    """
    c1, c2 = curve_coefficients(kind, np.asarray(t, dtype=np.float64))
    return np.stack([c1 * bend_xy[0] + c2, c1 * bend_xy[1]], axis=1)


def plane_axes(bend_xy: tuple[float, float], points: int = 21, margin: float = 0.2) -> tuple[str, str]:
    """Axis specs ``MIN:MAX:N`` covering A (0, 0), B (1, 0) and the bend with ``margin`` (in ‖B − A‖) on
    every side, ``points`` along each axis (the low-loss valley is narrow across the segment, so the
    shorter y axis gets as many points as x).

    Example:
        >>> plane_axes((0.5, 0.3), points=11, margin=0.2)
        ('-0.2:1.2:11', '-0.2:0.5:11')
    """
    bx, by = bend_xy
    x0, x1 = min(0.0, bx) - margin, max(1.0, bx) + margin
    y0, y1 = min(0.0, by) - margin, max(0.0, by) + margin
    return f"{x0:.4g}:{x1:.4g}:{int(points)}", f"{y0:.4g}:{y1:.4g}:{int(points)}"


def evaluate_curve(model: nn.Module, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                   bend: Mapping[str, torch.Tensor], data: Any, *, kind: str = "bezier", points: int = 61,
                   bn_data: Any = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   engine: str = "auto", **options: Any) -> xr.Dataset:
    """Loss and error along the curve and along the straight segment, at ``points`` evenly spaced t.

    Args:
        model: the architecture (left as it was).
        a, b, bend: full state dicts of A, B and the bend (:func:`bend_state`).
        data: the evaluation data.
        kind: ``"bezier"`` or ``"polychain"``.
        points: values of t in [0, 1] (at least 2).
        bn_data: with batch norm in the model, the data that re-estimates its statistics at every point
            (default: ``data``).
        device, dtype, engine: where and how to evaluate.
        **options: for :class:`~lossmap.objective.Objective` (``loss_fn``, ``batch_size``, ``samples``, …).

    Returns:
        xarray.Dataset: the curve file's contents (see the module docstring).
    """
    if points < 2:
        raise LossmapError(f"points={points}: evaluate the curve at 2 or more values of t")
    a, b, bend = _copied(a), as_state(b), as_state(bend)  # A may be the model evaluated in place
    check_states(model, a, b)
    check_states(model, a, bend)
    t = np.linspace(0.0, 1.0, int(points))
    bn = "recompute" if has_batch_norm(model) else "frozen"
    with borrow(model, device, dtype) as lease:
        load_state_dict_into(lease.model, a, "model A")
        dirs = plane_directions(lease.model, b, bend)
        bend_xy = tuple(dirs.markers["bend"])
        coords = np.concatenate([curve_points(kind, t, bend_xy), np.stack([t, np.zeros_like(t)], axis=1)])
        obj = Objective(lease.model, data, include_buffers=True, device=device, dtype=dtype, bn=bn,
                        bn_data=(bn_data if bn_data is not None else data) if bn == "recompute" else None, **options)
        ev = obj.engine(dirs.tensors, engine=engine)
        quantities = quantities_of(ev.metric_names)
        values = to_quantities(ev.evaluate_many(coords), ev.metric_names)
        samples, loss_name = int(obj.source.total), obj.loss.name
    attrs = dict(lossmap_format=FORMAT, lossmap_format_version=FORMAT_VERSION, kind=kind, bend_x=bend_xy[0],
                 bend_y=bend_xy[1], bn_policy=bn, samples=samples, loss_function=loss_name,
                 a_sha256=tensor_hash(a), b_sha256=tensor_hash(b), bend_sha256=tensor_hash(bend))
    return _curve_dataset(t, coords.reshape(2, len(t), 2), values.reshape(2, len(t), -1), quantities, attrs)


def _curve_dataset(t: np.ndarray, xy: np.ndarray, values: np.ndarray, quantities: tuple[str, ...],
                   attrs: dict[str, Any]) -> xr.Dataset:
    paths = ["curve", "line"]
    peak = np.nanmax(values, axis=1)  # (path, quantity)
    peak_t = t[np.nanargmax(np.where(np.isnan(values), -np.inf, values), axis=1)]
    heights = np.full((2, len(quantities), len(DEFINITIONS)), np.nan)
    where = np.full_like(heights, np.nan)
    for i in range(2):
        for q in range(len(quantities)):
            res = barriers(t, values[i, :, q])
            heights[i, q], where[i, q] = (res.frankle, res.entezari), (res.frankle_alpha, res.entezari_alpha)
    dims = ("path", "quantity", "definition")
    ds = xr.Dataset(
        {**{q: (("path", "t"), values[:, :, k]) for k, q in enumerate(quantities)},
         "plane_x": (("path", "t"), xy[:, :, 0]), "plane_y": (("path", "t"), xy[:, :, 1]),
         "peak": (dims[:2], peak), "peak_t": (dims[:2], peak_t),
         "barrier": (dims, heights), "barrier_t": (dims, where)},
        coords={"path": paths, "t": t, "quantity": list(quantities), "definition": list(DEFINITIONS)},
        attrs=attrs,
    )
    ds["t"].attrs["long_name"] = "t: the curve φ(t) from A (t = 0) to B (t = 1); the line (1 − t)A + tB"
    return ds


def curve_plane(model: nn.Module, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                bend: Mapping[str, torch.Tensor], data: Any, *, x: str | None = None, y: str | None = None,
                points: int = 21, margin: float = 0.2, bn_data: Any = None, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, **options: Any):
    """The landscape of the plane through A, B and the bend (:func:`lossmap.compute_run` with
    :func:`plane_directions`; batch-norm statistics recomputed at every point where the model has batch norm).

    Args:
        model: the architecture (left as it was).
        a, b, bend: full state dicts of A, B and the bend.
        data: the evaluation data.
        x, y: axis specs ``MIN:MAX:N``; default :func:`plane_axes` (``points``, ``margin``).
        points, margin: the default grid's points along x and its margin in units of ‖B − A‖.
        bn_data: the data that re-estimates batch-norm statistics (default: ``data``).
        device, dtype: where and in which precision to evaluate.
        **options: for :func:`~lossmap.landscape.compute_run` (``out``, ``overwrite``, ``samples``, ``loss_fn``…).

    Returns:
        lossmap.run.Run: ``run.landscape()`` is the plane, with markers A, B and bend.
    """
    from ..landscape import compute_run

    a, b, bend = _copied(a), as_state(b), as_state(bend)  # A may be the model evaluated in place
    check_states(model, a, b)
    check_states(model, a, bend)
    bn = "recompute" if has_batch_norm(model) else "frozen"
    with borrow(model, device, dtype) as lease:
        load_state_dict_into(lease.model, a, "model A")
        dirs = plane_directions(lease.model, b, bend)
        dx, dy = plane_axes(tuple(dirs.markers["bend"]), points, margin)
        return compute_run(lease.model, data, x or dx, y or dy, directions=dirs, bn=bn,
                           bn_data=bn_data if bn == "recompute" else None, device=device, dtype=dtype, **options)


def save_curve(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a curve file (see the module docstring) atomically; returns the path."""
    from .. import store
    from ..run import versions

    out = ds.copy()
    out.attrs["versions"] = versions()
    return store.save(out, path)
