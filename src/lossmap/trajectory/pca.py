"""The plane of a training run: the top two principal directions of its checkpoints' offsets.

For checkpoints θ₁ … θ_M (one run, or several runs in one frame) and an origin θ_o, the offsets are
dᵢ = θᵢ − θ_o over the selected tensors. The plane is spanned by the top two eigenvectors of the
*uncentred* second-moment operator Σᵢ dᵢdᵢᵀ — the offsets exactly as they are plotted around the
origin — found from the M × M Gram matrix Gᵢⱼ = ⟨dᵢ, dⱼ⟩:

1. **Gram pass** (:mod:`lossmap.trajectory.passes`). Every tensor is read in flat pieces, the same
   piece from all M files at once (an M × k block, k ≈ ``chunk_values`` / M), and G += DDᵀ in
   float64. Memory: the block, G (M × M) and one copy of the origin; never M × P.
2. **Eigendecomposition** G = VΛVᵀ (λ₁ ≥ λ₂ ≥ …). The directions are uₖ = Σᵢ Vᵢₖ dᵢ / σₖ with
   σₖ = √λₖ: orthonormal.
3. **Direction pass.** The files are read again, piece by piece, to form u₁, u₂ (in the checkpoints'
   dtype) and each offset's off-plane remainder.

Results, per checkpoint:

* **coordinates** (aᵢ, bᵢ) = (⟨dᵢ, u₁⟩, ⟨dᵢ, u₂⟩) = σₖVᵢₖ, the least-squares position of θᵢ in the
  plane θ_o + a·u₁ + b·u₂. The directions are unit vectors, so coordinates are Euclidean lengths in
  parameter space (over the selected tensors, in the checkpoints' units), equal on both axes.
* **residual** ‖dᵢ − Pdᵢ‖ / ‖dᵢ‖ (P the projection on the plane): the sine of the angle between the
  offset and the plane; 0 when dᵢ = 0 (the origin checkpoint itself).
* **explained** variance (λ₁ + λ₂) / Σλ of the same uncentred offsets, so a label matches the figure
  (with ``origin="mean"`` the offsets are centred and this is the classic PCA ratio).

Sign convention (deterministic): each axis is oriented so that the first run travels towards +:
its last checkpoint's coordinate minus its first's is positive (time reads left to right and bottom
to top). When that difference is 0 (to 1e-9 of the axis' largest |coordinate|, e.g. a closed loop)
the checkpoint with the largest |coordinate| on that axis is made positive.

Origins: ``"final"`` (default) the last checkpoint of the first run; ``"initial"`` its first
checkpoint (natural for runs that share an initialization); ``"mean"`` the mean of all checkpoints
of all runs (rounded to the checkpoints' dtype, so it is a point the model can hold); or a given
state (a mapping name → tensor, or a module).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..directions import Directions
from ..errors import LossmapError
from ..space import _patterns, tensor_hash
from .passes import CHUNK_VALUES, Origin, direction_pass, gram_pass
from .run import FLOAT_DTYPES, Run, as_runs, read_header

__all__ = ["Plane", "RunCoordinates", "trajectory_plane", "select_names", "plane_axes", "load_origin", "CHUNK_VALUES",
           "ORIGINS"]

ORIGINS = ("final", "initial", "mean")


@dataclass
class RunCoordinates:
    """One run's checkpoints in the plane, in step order (arrays of length n; NaN where the manifest has
    no value). ``distances`` are ‖dᵢ‖, the checkpoints' distances from the origin."""

    folder: Path
    steps: np.ndarray
    coords: np.ndarray
    residuals: np.ndarray
    distances: np.ndarray
    epochs: np.ndarray
    lrs: np.ndarray
    losses: np.ndarray
    label: str = ""


@dataclass
class Plane:
    """The plane of one or several runs.

    ``directions`` (kind ``"trajectory"``) are u₁, u₂ in the checkpoints' dtype, ready for
    ``lossmap.compute(model_at_origin, data, x=..., y=..., directions=plane.directions)``;
    ``origin_tensors`` θ_o over the moved tensors; ``origin_checkpoint`` the checkpoint that is the
    origin (None for ``"mean"`` or a given state); ``state_checkpoint`` the file the rest of the
    model's state comes from (see :func:`load_origin`); ``eigenvalues`` all M eigenvalues of G,
    descending; ``explained`` (λ₁ + λ₂) / Σλ.
    """

    directions: Directions
    runs: list[RunCoordinates]
    origin: str
    origin_label: str
    origin_checkpoint: Path | None
    origin_tensors: dict[str, torch.Tensor]
    state_checkpoint: Path
    eigenvalues: np.ndarray
    explained: float
    names: list[str] = field(default_factory=list)

    @property
    def explained_each(self) -> tuple[float, float]:
        """λ₁ / Σλ and λ₂ / Σλ."""
        total = float(np.clip(self.eigenvalues, 0, None).sum())
        return float(self.eigenvalues[0]) / total, float(self.eigenvalues[1]) / total


def select_names(run: Run, include_buffers: bool = False, tensor_filter: str | Sequence[str] | None = None) -> list[str]:
    """The tensors of ``run`` that move, in state-dict order: the parameters (plus floating-point
    buffers with ``include_buffers``), restricted to names matching ``tensor_filter``'s shell patterns —
    the same choice as :func:`lossmap.space.select_tensors` makes on the model.

    Example:
        >>> select_names(load_run("runs/sgd"), tensor_filter="fc*")  # doctest: +SKIP
        ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    """
    chosen = [n for n, t in run.tensors.items() if t.dtype in FLOAT_DTYPES and (include_buffers or n in run.parameters)]
    patterns = _patterns(tensor_filter)
    if patterns:
        chosen = [n for n in chosen if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not chosen:
            raise LossmapError(f"tensor filter {tensor_filter!r} matches no tensor of run {str(run.folder)!r}; names look "
                               f"like {', '.join(list(run.tensors)[:4])}")
    if not chosen:
        raise LossmapError(f"run {str(run.folder)!r} has no floating-point parameters to move: record a model with parameters")
    return chosen


# --------------------------------------------------------------------------------------------------------
# the plane
# --------------------------------------------------------------------------------------------------------


def _resolve_origin(origin: Any, runs: list[Run], names: list[str]) -> tuple[Origin, str, Path | None, str]:
    """The origin as a pass understands it, its label, its checkpoint file, and its kind's name."""
    first = runs[0]
    if isinstance(origin, str):
        if origin == "final":
            c = first.checkpoints[-1]
            return Origin("row", row=len(first) - 1), f"final checkpoint of {first.folder.name} (step {c.step})", c.path, "final"
        if origin == "initial":
            c = first.checkpoints[0]
            return Origin("row", row=0), f"initial checkpoint of {first.folder.name} (step {c.step})", c.path, "initial"
        if origin == "mean":
            return Origin("mean"), f"mean of {sum(len(r) for r in runs)} checkpoints", None, "mean"
        raise LossmapError(f"origin {origin!r} is unknown: choose final, initial, mean, or pass a state dict")
    if isinstance(origin, nn.Module):
        origin = origin.state_dict()
    if not isinstance(origin, Mapping):
        raise LossmapError(f"origin of type {type(origin).__name__} is not understood: pass 'final', 'initial', 'mean', "
                           "a state dict or a module")
    bad = [n for n in names if n not in origin or tuple(origin[n].shape) != first.tensors[n].shape]
    if bad:
        n = bad[0]
        got = "missing" if n not in origin else f"shape {tuple(origin[n].shape)}"
        raise LossmapError(f"origin state does not fit the run: {n} is {got}, the checkpoints have "
                           f"{first.tensors[n].shape}; pass a state of the same architecture")
    given = {n: origin[n].detach().cpu() for n in names}
    return Origin("given", given=given), "given state", None, "given"


def _orient(C: np.ndarray, first: int, last: int) -> np.ndarray:
    """Signs s (±1 per axis) such that the first run moves towards + (see the module docstring)."""
    signs = np.ones(C.shape[1])
    for k in range(C.shape[1]):
        scale = float(np.abs(C[:, k]).max())
        delta = float(C[last, k] - C[first, k])
        if abs(delta) > 1e-9 * scale:
            signs[k] = math.copysign(1.0, delta)
        else:
            signs[k] = math.copysign(1.0, float(C[int(np.argmax(np.abs(C[:, k]))), k]))
    return signs


def _check_same_tensors(runs: list[Run], names: list[str]) -> None:
    ref = runs[0]
    for r in runs[1:]:
        for n in names:
            t = r.tensors.get(n)
            if t is None or t.shape != ref.tensors[n].shape or t.dtype != ref.tensors[n].dtype:
                got = "no such tensor" if t is None else f"{t.dtype}{list(t.shape)}"
                raise LossmapError(f"run {str(r.folder)!r} does not match run {str(ref.folder)!r}: {n} is {got} instead of "
                                   f"{ref.tensors[n].dtype}{list(ref.tensors[n].shape)}; compare runs of one architecture")


def _field(run: Run, attr: str) -> np.ndarray:
    return np.array([np.nan if getattr(c, attr) is None else getattr(c, attr) for c in run.checkpoints], dtype=np.float64)


def trajectory_plane(runs: Run | str | Path | Sequence[Run | str | Path], origin: Any = "final", *,
                     include_buffers: bool = False, tensor_filter: str | Sequence[str] | None = None,
                     labels: Sequence[str] | None = None, chunk_values: int = CHUNK_VALUES) -> Plane:
    """The plane of one run, or of several runs in one frame (see the module docstring).

    Args:
        runs (Run | str | Path | list): a run folder, a :class:`Run`, or a list of them. Several runs
            share one Gram matrix over all their checkpoints and one origin.
        origin (str | Mapping[str, Tensor] | nn.Module): ``"final"`` (the first run's last checkpoint),
            ``"initial"`` (its first), ``"mean"`` (of all checkpoints), or a state.
        include_buffers (bool): move floating-point buffers too (batch-norm statistics).
        tensor_filter (str | list[str] | None): move only tensors matching these shell patterns;
            default: the recorder's ``model_filter`` (every parameter when it had none).
        labels (list[str] | None): a label per run (default: the folder names).
        chunk_values (int): values per block read (M × k); bounds the memory of the passes.
    Returns:
        Plane: directions, per-run coordinates and residuals, variance explained, origin.
    Raises:
        LossmapError: bad runs (see :func:`~lossmap.trajectory.run.load_run`), fewer than 3 checkpoints
            in all, runs of different architectures, a bad origin, offsets that do not span a plane.
    Example:
        >>> plane = trajectory_plane("runs/sgd")  # doctest: +SKIP
        >>> model = load_origin(Net(), plane)  # doctest: +SKIP
        >>> x, y = plane_axes(plane, points=41)  # doctest: +SKIP
        >>> ds = lossmap.compute(model, data, x=x, y=y, directions=plane.directions)  # doctest: +SKIP
    """
    runs = as_runs(runs)
    total = sum(len(r) for r in runs)
    if total < 3:
        raise LossmapError(f"the plane of a trajectory needs at least 3 checkpoints but the run(s) have {total}: "
                           "record more steps (a denser schedule or a longer run)")
    if tensor_filter is None and runs[0].model_filter:
        tensor_filter = runs[0].model_filter
    names = select_names(runs[0], include_buffers, tensor_filter)
    _check_same_tensors(runs, names)
    spec, origin_label, origin_path, kind = _resolve_origin(origin, runs, names)
    paths = [p for r in runs for p in r.paths]
    headers = [read_header(p) for p in paths]
    G, origin_tensors = gram_pass(paths, headers, names, spec, chunk_values)
    lam, V = _eigen(G, origin_label)
    C = V[:, :2] * np.sqrt(lam[:2])
    signs = _orient(C, 0, len(runs[0]) - 1)
    C, W = C * signs, V[:, :2] * signs / np.sqrt(lam[:2])
    dirs, remainder = direction_pass(paths, headers, names, origin_tensors, W, C, chunk_values)
    norms = np.sqrt(np.clip(np.diag(G), 0, None))
    residuals = np.where(norms > 0, np.sqrt(np.clip(remainder, 0, None)) / np.where(norms > 0, norms, 1.0), 0.0)
    total_var = float(np.clip(lam, 0, None).sum())
    share = np.clip(lam[:2], 0, None) / total_var
    directions = Directions(
        tensors=dirs, kind="trajectory", normalization="none", bias_policy="keep", orthogonalized=True,
        include_buffers=include_buffers, tensor_filter=_filter_text(tensor_filter),
        labels=[f"PC1 ({100 * share[0]:.1f} %)", f"PC2 ({100 * share[1]:.1f} %)"],
        origin_sha256=tensor_hash(origin_tensors),
    )
    return Plane(directions, _per_run(runs, C, residuals, norms, labels), kind, origin_label, origin_path,
                 origin_tensors, origin_path or runs[0].checkpoints[-1].path, lam, float(share.sum()), names)


def _eigen(G: np.ndarray, origin_label: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of G; raises unless the offsets span a plane."""
    lam, V = np.linalg.eigh(G)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    if lam[0] <= 0:
        raise LossmapError(f"every checkpoint equals the origin ({origin_label}): the run did not move; check that the "
                           "recorder saved the trained model")
    if lam[1] <= 1e-12 * lam[0]:
        raise LossmapError("the checkpoints' offsets from the origin lie on one line: there is no plane; use a 1-D "
                           "interpolation (lossmap interpolate) or another origin")
    return lam, V


def _filter_text(tensor_filter: str | Sequence[str] | None) -> str | None:
    return tensor_filter if tensor_filter is None or isinstance(tensor_filter, str) else ",".join(tensor_filter)


def _per_run(runs: list[Run], C: np.ndarray, residuals: np.ndarray, norms: np.ndarray,
             labels: Sequence[str] | None) -> list[RunCoordinates]:
    out, start = [], 0
    for i, r in enumerate(runs):
        sl = slice(start, start + len(r))
        out.append(RunCoordinates(
            folder=r.folder, steps=r.steps, coords=C[sl].copy(), residuals=residuals[sl].copy(),
            distances=norms[sl].copy(), epochs=_field(r, "epoch"), lrs=_field(r, "lr"), losses=_field(r, "loss"),
            label=labels[i] if labels is not None and i < len(labels) else r.folder.name,
        ))
        start += len(r)
    return out


def plane_axes(plane_or_coords: Plane | np.ndarray | Sequence[np.ndarray], points: int | tuple[int, int] = 51,
               margin: float = 0.15) -> tuple[str, str]:
    """Axis specs ``"lo:hi:count"`` covering every checkpoint (and the origin) with a margin.

    Args:
        plane_or_coords (Plane | array | list of arrays): a plane, or coordinates of shape (n, 2).
        points (int | (int, int)): points per axis (x, y).
        margin (float): added on each side, as a fraction of the axis' span (0.15 = 15 %). An axis
            whose span is 0 gets the other axis' margin.
    Returns:
        (str, str): the x and y specs for ``lossmap.compute``.
    Example:
        >>> plane_axes(np.array([[-2.0, -1.0], [0.0, 0.0], [1.0, 0.5]]), points=21)
        ('-2.45:1.45:21', '-1.225:0.725:21')
    """
    if isinstance(plane_or_coords, Plane):
        coords = np.concatenate([r.coords for r in plane_or_coords.runs])
    elif isinstance(plane_or_coords, np.ndarray):
        coords = plane_or_coords
    else:
        coords = np.concatenate([np.asarray(c, dtype=np.float64) for c in plane_or_coords])
    coords = np.concatenate([np.asarray(coords, dtype=np.float64).reshape(-1, 2), np.zeros((1, 2))])
    if not np.all(np.isfinite(coords)):
        raise LossmapError("coordinates have NaN or inf values: compute the plane again")
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise LossmapError(f"margin {margin!r} must be a number >= 0, e.g. 0.15")
    nx, ny = (points, points) if isinstance(points, (int, np.integer)) else tuple(points)
    if min(nx, ny) < 2:
        raise LossmapError(f"points {points!r}: give at least 2 points per axis")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = (hi - lo) * margin
    for a, b in ((0, 1), (1, 0)):
        if pad[a] == 0:
            pad[a] = pad[b] if pad[b] > 0 else 1.0
    lo, hi = lo - pad, hi + pad
    return (f"{_short(lo[0])}:{_short(hi[0])}:{int(nx)}", f"{_short(lo[1])}:{_short(hi[1])}:{int(ny)}")


def _short(v: float) -> str:
    return repr(float(f"{v:.10g}"))


def load_origin(model: nn.Module, plane: Plane) -> nn.Module:
    """Put ``model`` at the plane's origin (in place) and return it.

    The model's state comes from the origin checkpoint (for a ``"mean"`` or given origin: the first
    run's final checkpoint, which supplies what the plane does not move, e.g. batch-norm statistics);
    then the moved tensors are set to ``plane.origin_tensors``.

    Args:
        model (nn.Module): a model of the recorded architecture.
        plane (Plane): from :func:`trajectory_plane`.
    Returns:
        nn.Module: ``model``.
    Example:
        >>> model = load_origin(Net(), trajectory_plane("runs/sgd", origin="mean"))  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    from ..models import load_state_dict_into

    source = plane.state_checkpoint
    state = load_file(str(source))
    own = model.state_dict()
    if set(state) == set(own):
        load_state_dict_into(model, state, source=f"checkpoint {str(source)!r}")
    else:  # a filtered recording: it holds only some of the model's tensors
        partial = {k: v for k, v in state.items() if k in own}
        if len(partial) != len(state) or any(own[k].shape != v.shape for k, v in partial.items()):
            load_state_dict_into(model, state, source=f"checkpoint {str(source)!r}")  # raises, naming the mismatch
        with torch.no_grad():
            for k, v in partial.items():
                own[k].copy_(v)
    with torch.no_grad():
        for n, t in plane.origin_tensors.items():
            own[n].copy_(t)
    return model

