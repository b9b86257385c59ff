"""Barriers between two models, before and after permutation alignment: :func:`connect`.

Along θ(α) = (1 − α)A + αB the loss and the error (1 − accuracy, for classifiers) are evaluated on
one or more data sets; the starting grid is refined around each worst point
(:func:`~lossmap.connect.path.search_path`), and both barrier definitions are taken for each quantity
(:func:`~lossmap.connect.barrier.barriers`). Every floating tensor moves, batch-norm running statistics
included, so α = 1 is B in evaluation mode too; with ``bn="recompute"`` the statistics are
re-estimated at every α instead (from ``bn_data``, by default the first data set), as Frankle et al.
and Entezari et al. do. With ``align="weights"`` B's hidden units are first permuted to match A
(:func:`~lossmap.connect.align.align`), and the aligned path is measured beside the original one.

File layout (:func:`save_connection`; netCDF/HDF5, format ``lossmap.connect``):

* dims ``path`` (``unaligned``, and ``aligned`` with alignment), ``data`` (the data sets' names),
  ``alpha`` (every α any path evaluated on any data set, sorted), ``quantity`` (``loss``, ``error``)
  and ``definition`` (``frankle``, ``entezari``);
* ``loss(path, data, alpha)``, ``error(path, data, alpha)``: the values; NaN where that path was not
  evaluated at that α on that data set (the refinement points differ); the coordinate
  ``on_grid(alpha)`` is 1 for the starting grid, 0 for refinement points;
* ``barrier(path, data, quantity, definition)`` and ``barrier_alpha(...)``: the heights and the α of
  each maximum; ``value_a(path, data, quantity)``, ``value_b(...)``: the endpoints' values;
* attributes: the format, hashes of A and B, the data, the batch-norm policy, the grid and refinement,
  and with alignment the matching's record (``align_*``) and the aligned checkpoint's file name.

The aligned model is written beside the file (``ab.aligned.safetensors``), with its permutation spec
(``ab.spec.json``, the format ``--spec`` reads).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import LossmapError
from ..models import load_state_dict_into
from ..objective import Objective
from ..space import borrow, tensor_hash
from .align import AlignResult, align as align_states
from .barrier import barriers
from .check import as_state, check_states
from .files import save_spec, save_state, sibling
from .path import DEFINITIONS, QUANTITIES, line_grid, path_evaluator, quantities_of, search_path

__all__ = ["Connection", "connect", "save_connection", "barrier_table", "FORMAT", "ALIGN_METHODS"]

log = logging.getLogger("lossmap")

FORMAT = "lossmap.connect"
FORMAT_VERSION = 1
ALIGN_METHODS = ("none", "weights")


@dataclass
class Connection:
    """What :func:`connect` measured: the file's contents (see the module docstring) and, with
    alignment, the matching's result (``aligned.state`` is B permuted to match A)."""

    dataset: xr.Dataset
    aligned: AlignResult | None = None


def _named(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        if not data:
            raise LossmapError("no data set given: pass data or {name: data}")
        return {str(k): v for k, v in data.items()}
    return {"data": data}


def _direction(obj: Objective, b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """B − A over the objective's tensors (A is its θ0), on its device and dtype."""
    return {n: b[n].to(device=t.device, dtype=t.dtype) - t for n, t in obj.theta0.items()}


def _measure(objectives: dict[str, Objective], paths: dict[str, Mapping], grid: np.ndarray, refine: int,
             engine: str, say: Callable[[str], None]) -> tuple[dict, tuple[str, ...]]:
    """``{(path, data): (alphas, values)}`` and the quantities measured."""
    found: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    quantities: tuple[str, ...] | None = None
    for p, state in paths.items():
        direction = _direction(next(iter(objectives.values())), state)  # one model, one θ0: shared by all data sets
        for name, obj in objectives.items():
            start = time.perf_counter()
            ev = obj.engine([direction], engine=engine)
            qs = quantities_of(ev.metric_names)
            if quantities is not None and qs != quantities:
                raise LossmapError(f"data set {name!r} gives {', '.join(qs)} but another gives {', '.join(quantities)}: "
                                   "use data sets with the same kind of targets")
            quantities = qs
            found[(p, name)] = search_path(path_evaluator(ev), grid, refine, len(qs))
            n = found[(p, name)][0].size
            say(f"{p} path on {name}: {grid.size} grid + {n - grid.size} refinement points ({time.perf_counter() - start:.1f} s)")
    return found, quantities or QUANTITIES[:1]


def connect(model: nn.Module, a: nn.Module | Mapping[str, torch.Tensor], b: nn.Module | Mapping[str, torch.Tensor],
            data: Any, *, alphas: int | Sequence[float] = 25, refine: int = 4, align: str | None = None,
            spec: Any = None, seed: int = 0, bn: str = "frozen", bn_data: Any = None, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None, engine: str = "auto", log_fn: Callable[[str], None] | None = None,
            **options: Any) -> Connection:
    """Loss and error along the straight path from A to B, both barriers, before and after alignment.

    Args:
        model: the architecture of A and B (left as it was).
        a, b: the two models (modules or state dicts of ``model``'s names and shapes).
        data: a data set (Dataset, DataLoader, ``(inputs, targets)``…) or ``{name: data}`` for several
            (e.g. train and test).
        alphas: the starting grid: a count of evenly spaced α in [0, 1] (at least 2) or the values.
        refine: refinement rounds of each search for a maximum (0: the grid only).
        align: ``None``/``"none"`` or ``"weights"`` (weight matching; the aligned path is measured too).
        spec: with alignment, an explicit permutation spec (``{perm: [(tensor, axis), ...]}``); None derives it.
        seed: seed of the weight matching's sweep order and of the spec's functional check.
        bn, bn_data: ``"frozen"`` (A's and B's running statistics, interpolated) or ``"recompute"`` (at
            every α, from ``bn_data``; default: the first data set).
        device, dtype, engine: where, in which precision and with which engine to evaluate.
        log_fn: called with one line per path and data set measured.
        **options: for :class:`~lossmap.objective.Objective`: ``loss_fn``, ``output_transform``,
            ``batch_size``, ``samples``, ``cache``, ``memory_budget``, ``allow_nondeterministic``.

    Returns:
        Connection: the values, barriers and attributes as one ``xarray.Dataset``, and the alignment.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> other = {k: v + 1 for k, v in net.state_dict().items()}
        >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
        >>> res = connect(net, net.state_dict(), other, data, alphas=5, refine=0)
        >>> res.dataset["barrier"].sizes["definition"]
        2
    """
    grid = line_grid(alphas)
    method = "none" if align is None else align
    if method not in ALIGN_METHODS:
        raise LossmapError(f"align={align!r} is not known: use None or 'weights'")
    sets = _named(data)
    sa, sb = {k: v.clone() for k, v in as_state(a).items()}, as_state(b)  # A may be the model evaluated in place
    check_states(model, sa, sb)
    say = log_fn or (lambda line: log.info(line))
    bn_text = "" if bn != "recompute" else "given data" if bn_data is not None else next(iter(sets))
    if bn == "recompute" and bn_data is None:
        bn_data = next(iter(sets.values()))
    with borrow(model, device, dtype) as lease:
        load_state_dict_into(lease.model, sa, "model A")
        objectives = {name: Objective(lease.model, d, include_buffers=True, device=device, dtype=dtype, bn=bn,
                                      bn_data=bn_data if bn == "recompute" else None, **options)
                      for name, d in sets.items()}
        paths: dict[str, Mapping[str, torch.Tensor]] = {"unaligned": sb}
        result = None
        if method == "weights":
            probe = next(iter(objectives.values())).source.first().inputs
            result = align_states(lease.model, sa, sb, spec=spec, probe=probe, seed=seed)
            paths["aligned"] = result.state
        found, quantities = _measure(objectives, paths, grid, refine, engine, say)
        first = next(iter(objectives.values()))
        attrs = dict(
            lossmap_format=FORMAT, lossmap_format_version=FORMAT_VERSION, model=type(model).__name__,
            parameters=int(sum(p.numel() for p in model.parameters())), path="θ(α) = (1 − α)A + αB",
            a_sha256=tensor_hash({n: sa[n] for n in first.names}), b_sha256=tensor_hash({n: sb[n] for n in first.names}),
            data=list(sets), samples=[int(o.source.total) for o in objectives.values()], loss_function=first.loss.name,
            bn_policy=bn, bn_data=bn_text, alphas=int(grid.size), refine_rounds=int(refine), align=method, seed=int(seed),
        )
    if result is not None:
        attrs.update(_align_attrs(result, "given" if spec is not None else "derived"))
    return Connection(dataset=_dataset(found, list(paths), list(sets), quantities, grid, attrs), aligned=result)


def _align_attrs(res: AlignResult, source: str) -> dict[str, Any]:
    return dict(
        align_spec=source, align_permutations=len(res.spec.perms), align_units=int(sum(res.spec.sizes.values())),
        align_sweeps=res.iterations, align_converged=bool(res.converged),
        align_objective_before=res.objective_before, align_objective_after=res.objective_after,
        align_distance_before=res.distance_before, align_distance_after=res.distance_after,
        align_check_deviation=float("nan") if res.check_deviation is None else res.check_deviation,
    )


def _dataset(found: dict, paths: list[str], names: list[str], quantities: tuple[str, ...], grid: np.ndarray,
             attrs: dict[str, Any]) -> xr.Dataset:
    alpha = np.unique(np.concatenate([a for a, _ in found.values()]))
    values = np.full((len(quantities), len(paths), len(names), alpha.size), np.nan)
    heights = np.full((len(paths), len(names), len(quantities), len(DEFINITIONS)), np.nan)
    where, ends = np.full_like(heights, np.nan), np.full((2, len(paths), len(names), len(quantities)), np.nan)
    for (p, n), (al, v) in found.items():
        i, j = paths.index(p), names.index(n)
        values[:, i, j, np.searchsorted(alpha, al)] = v.T
        for q in range(len(quantities)):
            if np.isnan(v[:, q]).all():
                continue
            res = barriers(al, v[:, q])
            heights[i, j, q] = res.frankle, res.entezari
            where[i, j, q] = res.frankle_alpha, res.entezari_alpha
            ends[:, i, j, q] = res.value_a, res.value_b
    dims3, dims4 = ("path", "data", "alpha"), ("path", "data", "quantity", "definition")
    ds = xr.Dataset(
        {**{q: (dims3, values[k]) for k, q in enumerate(quantities)},
         "barrier": (dims4, heights), "barrier_alpha": (dims4, where),
         "value_a": (dims4[:3], ends[0]), "value_b": (dims4[:3], ends[1])},
        coords={"path": list(paths), "data": list(names), "alpha": alpha, "quantity": list(quantities),
                "definition": list(DEFINITIONS), "on_grid": ("alpha", np.isin(alpha, grid).astype(np.uint8))},
        attrs=attrs,
    )
    ds["alpha"].attrs["long_name"] = "α: θ(α) = (1 − α)A + αB"
    ds["barrier"].attrs["long_name"] = "frankle: max L(α) − (L(A) + L(B))/2; entezari: max L(α) − (1 − α)L(A) − αL(B)"
    return ds


def save_connection(conn: Connection, path: str | Path) -> list[Path]:
    """Write the file (see the module docstring) and, with alignment, the aligned checkpoint and its spec.

    Args:
        conn: what :func:`connect` returned.
        path: the ``.nc`` file (replaced).

    Returns:
        list[Path]: the files written: ``path``, then ``<stem>.aligned.safetensors`` and ``<stem>.spec.json``.
    """
    from .. import store
    from ..run import versions

    ds = conn.dataset.copy()
    written = []
    if conn.aligned is not None:
        ckpt = save_state(conn.aligned.state, sibling(path, ".aligned.safetensors"))
        spec = save_spec(conn.aligned.spec.axes(), sibling(path, ".spec.json"))
        ds.attrs.update(aligned_checkpoint=ckpt.name, spec_file=spec.name)
        written += [ckpt, spec]
    ds.attrs["versions"] = versions()
    return [store.save(ds, path), *written]


def _cell(ds: xr.Dataset, path: str, name: str, q: str, d: str) -> str:
    h = float(ds["barrier"].sel(path=path, data=name, quantity=q, definition=d))
    at = float(ds["barrier_alpha"].sel(path=path, data=name, quantity=q, definition=d))
    return "–" if h != h else f"{h:.4g} at α={at:.3g}"


def barrier_table(ds: xr.Dataset) -> str:
    """The barriers as a text table: one row per data set, quantity and definition, one column per path.

    Args:
        ds: a connection file's contents (:attr:`Connection.dataset` or a loaded file).

    Returns:
        str: the table (lines joined by newlines).
    """
    paths = [str(p) for p in ds["path"].values]
    rows = [["data", "quantity", "barrier", *paths]]
    for name in (str(n) for n in ds["data"].values):
        for q in (str(v) for v in ds["quantity"].values):
            ends = [f"A {float(ds['value_a'].sel(path=p, data=name, quantity=q)):.4g}, "
                    f"B {float(ds['value_b'].sel(path=p, data=name, quantity=q)):.4g}" for p in paths]
            rows.append([name, q, "ends", *ends])
            for d in DEFINITIONS:
                rows.append([name, q, d.capitalize(), *(_cell(ds, p, name, q, d) for p in paths)])
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
