"""compute(): evaluate a model over a 1-D or 2-D grid of θ0 + Σ cᵢdᵢ and return a labelled landscape."""

from __future__ import annotations

import datetime as _dt
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from . import __version__, store
from .directions import Directions, random_directions
from .errors import LossmapError
from .evaluate import describe_data, make_evaluator, prepare_batches
from .grid import Grid
from .space import borrow, check_finite, select_tensors, tensor_hash

__all__ = ["compute", "save", "versions"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def versions() -> dict[str, str]:
    import h5netcdf
    import xarray

    return {
        "lossmap": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "xarray": xarray.__version__,
        "h5netcdf": h5netcdf.__version__,
        "python": platform.python_version(),
    }


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise LossmapError(f"dtype {dtype!r} is unknown: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def compute(
    model: nn.Module,
    data: Any,
    x: str | Sequence[float] = "-1:1:51",
    y: str | Sequence[float] | None = None,
    *,
    directions: Directions | None = None,
    seed: int = 0,
    normalization: str = "filter",
    bias: str = "zero",
    orthogonalize: bool = False,
    include_buffers: bool = False,
    tensor_filter: str | None = None,
    loss_fn: Callable | None = None,
    metrics: Mapping[str, Callable] | None = None,
    forward: Callable | None = None,
    bn: str = "frozen",
    bn_data: Any = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    batch_size: int = 256,
    samples: int | None = None,
    data_description: str | None = None,
    progress: bool = False,
    out: str | Path | None = None,
    overwrite: bool = False,
    chunk: int = 8,
    engine: str = "auto",
) -> xr.Dataset:
    """The landscape of ``model`` on ``data`` over the grid ``x`` (× ``y``).

    θ0 is the model's current parameters. Without ``directions``, one (1-D) or two (2-D) random
    directions are drawn from ``seed`` with the given normalization and bias policy. The model comes
    back exactly as it was. With ``out``, the landscape is saved there (and its directions beside it).
    """
    grid = Grid.from_specs(x, y)
    dtype = _dtype(dtype)
    if out is not None and Path(out).exists() and not overwrite:
        raise LossmapError(f"output file {str(out)!r} exists: pass --overwrite (overwrite=True) to replace it")
    live_user = select_tensors(model, include_buffers, tensor_filter)
    check_finite({n: t.detach() for n, t in live_user.items()})
    if directions is None:
        directions = random_directions(
            model, grid.ndim, seed=seed, normalization=normalization, bias=bias,
            orthogonalize=orthogonalize, include_buffers=include_buffers, tensor_filter=tensor_filter,
        )
    else:
        include_buffers, tensor_filter = directions.include_buffers, directions.tensor_filter
        live_user = select_tensors(model, include_buffers, tensor_filter)
    if directions.count < grid.ndim:
        raise LossmapError(f"a {grid.ndim}-D grid needs {grid.ndim} directions but {directions.count} were given")
    directions.check(live_user)
    theta0_hash = tensor_hash(live_user)
    if directions.kind == "target" and directions.origin_sha256 and directions.origin_sha256 != theta0_hash:
        raise LossmapError("the model's parameters are not the origin model A of these target directions: load A's checkpoint into the model")
    n_params = sum(p.numel() for p in model.parameters())
    n_moved = sum(t.numel() for n, t in live_user.items() if any(bool(d[n].any()) for d in directions.tensors))

    with borrow(model, device, dtype) as lease:
        work = lease.model
        live = select_tensors(work, include_buffers, tensor_filter)
        origin = lease.origin(live)
        ref = origin[0]
        dirs = [[d[n].to(device=ref.device, dtype=live[n].dtype) for n in live] for d in directions.tensors[: grid.ndim]]
        batches = prepare_batches(data, batch_size, samples, ref.device, dtype)
        bn_batches = None if bn_data is None else prepare_batches(bn_data, batch_size, None, ref.device, dtype)
        evaluator = make_evaluator(
            work, list(live.values()), origin, dirs, batches, loss_fn, metrics, bn, bn_batches, forward, engine
        )
        names = evaluator.metric_names
        values = np.full((grid.size, len(names)), np.nan)
        coeffs = grid.coefficients()
        order = grid.serpentine()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=grid.size, unit="pt", desc="landscape", leave=False)
        start = time.perf_counter()
        try:
            for lo in range(0, len(order), chunk):
                idx = order[lo : lo + chunk]
                values[idx] = evaluator.evaluate_many(coeffs[idx])
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - start

    dims = ("x",) if grid.ndim == 1 else ("x", "y")
    coords = {"x": grid.x} if grid.ndim == 1 else {"x": grid.x, "y": grid.y}
    data_vars = {name: (dims, values[:, k].reshape(grid.shape)) for k, name in enumerate(names)}
    attrs: dict[str, Any] = {
        "lossmap_format": store.FORMAT,
        "lossmap_format_version": store.FORMAT_VERSION,
        "ndim": grid.ndim,
        "metrics": names,
        **directions.metadata(),
        "moved_tensors": [n for n in live_user],
        "bn_policy": bn,
        "data": data_description or describe_data(data, batches),
        "samples": int(evaluator.total),
        "parameter_count": int(n_params),
        "moved_parameter_count": int(n_moved),
        "theta0_sha256": theta0_hash,
        "versions": versions(),
        "directions_file": "",
        "x_label": directions.labels[0] if directions.labels else "α",
        "y_label": (directions.labels[1] if len(directions.labels) > 1 else "β") if grid.ndim == 2 else "",
        "dtype": str(ref.dtype).replace("torch.", ""),
        "device": str(ref.device),
        "seconds": round(elapsed, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if grid.ndim == 1 and directions.markers:
        attrs["markers"] = {k: v[:1] for k, v in directions.markers.items() if len(v) == 1 or v[1] == 0.0}
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds["x"].attrs["long_name"] = attrs["x_label"]
    if grid.ndim == 2:
        ds["y"].attrs["long_name"] = attrs["y_label"]
    if out is not None:
        save(ds, directions, out)
    return ds


def save(ds: xr.Dataset, directions: Directions | None, path: str | Path) -> Path:
    """Save the landscape as netCDF/HDF5 and, when given, its directions beside it as safetensors."""
    path = Path(path)
    if directions is not None:
        dpath = store.directions_path(path)
        directions.save(dpath)
        ds.attrs["directions_file"] = dpath.name
    return store.save(ds, path)
