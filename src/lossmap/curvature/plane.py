"""Curvature over a landscape's grid, and Hessian eigenvectors as the directions of a landscape.

:func:`curvature_landscape` finds λmax and λmin of the Hessian (with respect to the selected parameters) at
every point ``θ0 + Σ cᵢ dᵢ`` of a grid, in the grid's serpentine order, each point's Lanczos warm-started
from the previous point's eigenvectors (neighbours' curvature directions differ little; each is mixed with an
equal share of a random start, :func:`~lossmap.curvature.extremes.warm_start`). It can start from a
partial result (points already done are skipped; the first pending point starts cold) and hands its state to
a ``checkpoint`` callback as it goes, so a long map can be saved and resumed. Li et al. (2018) draw
``|λmin / λmax|``: near 0 where the surface is locally convex, large where negative curvature is significant.

:func:`with_curvature` stores a state in a landscape as the variables ``lambda_max``, ``lambda_min`` and
``lambda_ratio`` (= ``|λmin/λmax|``, NaN where λmax = 0) with the landscape's dims, a ``curvature_done``
coordinate while unfinished, and ``curvature_*`` attributes; :func:`curvature_state` reads it back.

:func:`eigen_directions` computes the eigenvectors a landscape slices along (``surface --directions-from
hessian``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from ..directions import Directions
from ..errors import LossmapError
from ..grid import Grid
from ..objective import Objective
from ..space import tensor_hash
from .analysis import Spectrum, spectrum_of
from .extremes import largest, smallest, start, warm_start
from .hessian import Reduce, check_deterministic, hessian_operator
from .results import hessian_directions

__all__ = ["CurvatureState", "curvature_landscape", "with_curvature", "curvature_state", "eigen_directions",
           "CURVATURE_VARS", "CURVATURE_DONE"]

CURVATURE_VARS = ("lambda_max", "lambda_min", "lambda_ratio")
CURVATURE_DONE = "curvature_done"


@dataclass
class CurvatureState:
    """λmax and λmin at the grid's points (flat, C order), which are done, and the HVPs each used.

    Attributes:
        lmax, lmin (np.ndarray): float64 ``(size,)``; NaN where not done.
        done (np.ndarray): bool ``(size,)``.
        hvps (np.ndarray): int64 ``(size,)``.
        tol (float): the eigensolver's tolerance.
        method (str): the HVP method.
        seconds (float): time spent on the map (this call and the calls it resumes).
    """

    lmax: np.ndarray
    lmin: np.ndarray
    done: np.ndarray
    hvps: np.ndarray
    tol: float
    method: str = "auto"
    seconds: float = 0.0

    @classmethod
    def empty(cls, size: int, tol: float) -> "CurvatureState":
        return cls(np.full(size, np.nan), np.full(size, np.nan), np.zeros(size, bool), np.zeros(size, np.int64), float(tol))

    @property
    def ratio(self) -> np.ndarray:
        """``|λmin / λmax|`` (NaN where λmax is 0 or not done)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.lmax != 0, np.abs(self.lmin / np.where(self.lmax != 0, self.lmax, 1.0)), np.nan)


def _point(objective: Objective, directions: Sequence[Mapping[str, torch.Tensor]], c: np.ndarray) -> dict[str, torch.Tensor]:
    theta = {}
    for n in objective.names:
        t = objective.theta0[n].clone()
        for ci, d in zip(c, directions):
            if ci != 0:
                t.add_(d[n].to(device=t.device, dtype=t.dtype), alpha=float(ci))
        theta[n] = t
    return theta


def curvature_landscape(objective: Objective, directions: Sequence[Mapping[str, torch.Tensor]], grid: Grid, *,
                        tol: float = 1e-3, seed: int = 0, method: str = "auto", reduce: Reduce | None = None,
                        previous: CurvatureState | None = None,
                        checkpoint: Callable[[CurvatureState], None] | None = None, every_seconds: float = 10.0,
                        on_point: Callable[[int, int], None] | None = None,
                        keep_memory: int | str | None = None) -> CurvatureState:
    """λmax and λmin at every grid point (see the module docstring).

    Args:
        objective: model, data and loss; its ``names`` are the tensors the directions move.
        directions: ``grid.ndim`` dicts over ``objective.names`` (e.g. ``Directions.tensors``).
        grid: the points.
        tol: relative tolerance (λmax: of λmax; λmin: of λmax − λmin; see :mod:`~lossmap.curvature.extremes`).
        seed: seed of the cold starts and of the determinism probe (run at the first pending point).
        method, reduce: the HVP method and the sum over torchrun ranks (see :func:`~lossmap.curvature.hessian.hessian_operator`).
        previous: a partial state to finish (its ``tol`` must equal ``tol``).
        checkpoint: called with the state every ``every_seconds`` and at the end.
        on_point: ``on_point(done, total)`` after each point.
        keep_memory: the memory each point's kept gradient graphs may hold
            (:func:`~lossmap.curvature.hessian.hessian_operator`).

    Returns:
        CurvatureState: every point done.

    Example:
        >>> from torch import nn
        >>> obj = Objective(nn.Linear(2, 1, bias=False).double(), (torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)))
        >>> s = curvature_landscape(obj, [{"weight": torch.tensor([[1.0, 0.0]])}], Grid.from_specs("-1:1:3"), tol=0)
        >>> s.lmax.round(12).tolist(), s.lmin.round(12).tolist()
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """
    if len(directions) < grid.ndim:
        raise LossmapError(f"a {grid.ndim}-D grid needs {grid.ndim} directions, {len(directions)} were given")
    missing = [n for n in objective.names if any(n not in d for d in directions[: grid.ndim])]
    if missing:
        raise LossmapError(f"the directions lack tensors {', '.join(missing[:4])}: make them for this model's selection")
    state = previous if previous is not None else CurvatureState.empty(grid.size, tol)
    if state.tol != float(tol) or state.done.shape != (grid.size,):
        raise LossmapError(f"the curvature map was made with tol={state.tol}, not {tol}: use its tolerance or start over")
    coeffs, order = grid.coefficients(), grid.serpentine()
    warm: dict[str, np.ndarray | None] = {"top": None, "bottom": None}
    began, last, probed = time.monotonic() - state.seconds, time.monotonic(), False
    before = int(state.done.sum())
    try:
        for p in order:
            if state.done[p]:
                continue
            op = hessian_operator(objective, _point(objective, directions[: grid.ndim], coeffs[p]), method=method, reduce=reduce,
                                  keep_memory=keep_memory)
            if not probed:  # on the (cold) start of this point's top Lanczos run, which then gets that product free
                check_deterministic(op, seed, v=start(seed, op.shape[0], "top"))
                method, probed = op.hvp.method, True
            top = largest(op, 1, tol, seed, v0=warm_start(warm["top"], seed, "top"))
            bottom = smallest(op, 1, tol, seed, v0=warm_start(warm["bottom"], seed, "bottom"), sigma=float(top.values[0]))
            warm["top"], warm["bottom"] = top.flat[:, 0], bottom.flat[:, 0]
            state.lmax[p], state.lmin[p], state.hvps[p], state.done[p] = top.values[0], bottom.values[0], op.count, True
            state.method, state.seconds = method, time.monotonic() - began
            if on_point is not None:
                on_point(int(state.done.sum()), grid.size)
            if checkpoint is not None and time.monotonic() - last >= every_seconds:
                checkpoint(state)
                last = time.monotonic()
    except BaseException:
        if checkpoint is not None and int(state.done.sum()) > before:
            checkpoint(state)  # the finished points are kept: a rerun resumes from them
        raise
    if checkpoint is not None:
        checkpoint(state)
    return state


def with_curvature(ds: xr.Dataset, state: CurvatureState, seed: int = 0) -> xr.Dataset:
    """``ds`` (a landscape) with the curvature variables, coordinate and attributes of ``state``."""
    metrics = [m for m in ds.data_vars if m not in CURVATURE_VARS]
    dims = ds[metrics[0]].dims
    shape = ds[metrics[0]].shape
    out = ds.drop_vars([*CURVATURE_VARS, CURVATURE_DONE], errors="ignore")
    units = "1/(parameter-space distance)² (loss units)"
    long = {"lambda_max": "largest Hessian eigenvalue", "lambda_min": "smallest Hessian eigenvalue",
            "lambda_ratio": "|λmin / λmax| (Li et al. 2018)"}
    for name, values in zip(CURVATURE_VARS, (state.lmax, state.lmin, state.ratio)):
        out[name] = xr.DataArray(np.where(state.done, values, np.nan).reshape(shape), dims=dims,
                                 attrs={"long_name": long[name], **({"units": units} if name != "lambda_ratio" else {})})
    if not state.done.all():
        out = out.assign_coords({CURVATURE_DONE: (dims, state.done.reshape(shape).astype(np.uint8))})
    out.attrs.update(curvature_tol=state.tol, curvature_seed=int(seed), curvature_hvp_method=state.method,
                     curvature_hvps=int(state.hvps[state.done].sum()), curvature_points_done=int(state.done.sum()),
                     curvature_seconds=round(state.seconds, 3))
    return out


def curvature_state(ds: xr.Dataset) -> CurvatureState | None:
    """The curvature state stored in a landscape (None when it has none)."""
    if "lambda_max" not in ds.data_vars:
        return None
    lmax = np.asarray(ds["lambda_max"].values, dtype=np.float64).reshape(-1)
    done = (np.asarray(ds[CURVATURE_DONE].values, dtype=bool).reshape(-1) if CURVATURE_DONE in ds.variables
            else np.ones(lmax.size, dtype=bool))
    hvps = np.zeros(lmax.size, np.int64)
    if done.any():  # only the total is stored: it goes to the first finished point
        hvps[int(np.argmax(done))] = int(ds.attrs.get("curvature_hvps", 0))
    return CurvatureState(lmax.copy(), np.asarray(ds["lambda_min"].values, dtype=np.float64).reshape(-1).copy(), done.copy(),
                          hvps, float(ds.attrs.get("curvature_tol", float("nan"))), str(ds.attrs.get("curvature_hvp_method", "auto")),
                          float(ds.attrs.get("curvature_seconds", 0.0)))


def eigen_directions(objective: Objective, picks: Sequence[tuple[str, int]], *, tol: float = 1e-3, seed: int = 0,
                     method: str = "auto", reduce: Reduce | None = None, tensor_filter: str | None = None
                     ) -> tuple[Directions, Spectrum]:
    """The picked eigenvectors at θ0 as directions of kind ``"hessian"`` (unit norm, normalization ``none``).

    Args:
        objective: model, data, loss; its selection must be parameters only (what a landscape then moves).
        picks: e.g. ``[("top", 0), ("top", 1)]`` or ``[("top", 0), ("bottom", 0)]``
            (:func:`~lossmap.curvature.results.parse_picks`).
        tol, seed, method, reduce: as :func:`~lossmap.curvature.analysis.spectrum_of`.
        tensor_filter: the selection's patterns, recorded in the directions.

    Returns:
        tuple[Directions, Spectrum]: the directions and the spectrum they came from.
    """
    extra = [n for n in objective.names if n not in dict(objective.model.named_parameters())]
    if extra:
        raise LossmapError(f"Hessian directions move parameters only, but {', '.join(extra[:3])} are buffers: drop --include-buffers")
    n_top = sum(1 for end, _ in picks if end == "top")
    n_bottom = sum(1 for end, _ in picks if end == "bottom")
    spectrum = spectrum_of(objective, top=n_top, bottom=n_bottom, tol=tol, seed=seed, method=method, reduce=reduce)
    return hessian_directions(spectrum, picks, tensor_filter, tensor_hash(objective.theta0)), spectrum
