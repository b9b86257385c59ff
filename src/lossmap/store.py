"""Landscape files: netCDF4/HDF5 (h5netcdf engine) with metadata, validated on load.

Layout of a landscape (an :class:`xarray.Dataset`):

* dims ``x`` (and ``y``); coordinates ``x``/``y`` in coefficient units (float64);
* one float64 data variable per metric (``loss``, ``accuracy``, …) with dims ``("x",)`` or ``("x", "y")``;
  a point that was not evaluated is NaN;
* attributes (flat: str, int or float). Structured values are JSON strings whose names are listed in
  :data:`JSON_ATTRS`; :func:`meta` decodes them. Required: ``lossmap_format``, ``lossmap_format_version``,
  ``ndim``, ``metrics``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import LossmapError

FORMAT = "lossmap.landscape"
FORMAT_VERSION = 1
#: attributes stored as JSON strings
JSON_ATTRS = ("metrics", "moved_tensors", "versions", "markers", "settings")

__all__ = ["save", "load", "meta", "FORMAT", "FORMAT_VERSION", "JSON_ATTRS", "encode_attrs", "directions_path"]


def encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Make attributes netCDF-safe: JSON for structured values, int for bools, '' for None."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in JSON_ATTRS:
            out[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        elif isinstance(value, bool):
            out[key] = int(value)
        elif value is None:
            out[key] = ""
        elif isinstance(value, (int, float, str, np.integer, np.floating)):
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True, default=str)
    return out


def meta(ds: xr.Dataset) -> dict[str, Any]:
    """The landscape's attributes with JSON-encoded values decoded."""
    out = dict(ds.attrs)
    for key in JSON_ATTRS:
        if isinstance(out.get(key), str) and out[key]:
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out


def directions_path(landscape_path: str | Path) -> Path:
    """``run.nc`` → ``run.directions.safetensors`` (beside it)."""
    p = Path(landscape_path)
    return p.with_name(p.stem + ".directions.safetensors")


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves a half-written landscape."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise LossmapError(f"output folder {str(path.parent)!r} does not exist: create it or choose another --out")
    out = ds.copy()
    out.attrs = encode_attrs(ds.attrs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
        os.replace(tmp, path)
    except PermissionError as exc:
        raise LossmapError(f"cannot write {str(path)!r}: permission denied; choose another --out") from exc
    except OSError as exc:
        raise LossmapError(f"cannot write {str(path)!r}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def validate(ds: xr.Dataset, source: str = "dataset") -> None:
    """Check that ``ds`` is a lossmap landscape; raise LossmapError saying what is wrong."""
    fmt = ds.attrs.get("lossmap_format")
    if fmt != FORMAT:
        raise LossmapError(f"{source} is not a lossmap landscape (no '{FORMAT}' format attribute): was it written by lossmap?")
    version = int(ds.attrs.get("lossmap_format_version", -1))
    if version > FORMAT_VERSION:
        raise LossmapError(f"{source} has format version {version}, newer than this lossmap reads ({FORMAT_VERSION}): upgrade lossmap")
    if "x" not in ds.dims:
        raise LossmapError(f"{source} has no 'x' dimension: the file is damaged")
    ndim = int(ds.attrs.get("ndim", 0))
    if ndim not in (1, 2) or (ndim == 2) != ("y" in ds.dims):
        raise LossmapError(f"{source}: attribute ndim={ndim} does not match its dimensions {tuple(ds.dims)}")
    metrics = meta(ds).get("metrics") or []
    missing = [m for m in metrics if m not in ds.data_vars]
    if not metrics or missing:
        raise LossmapError(f"{source} lacks metric variables {missing or '(none listed)'}: the file is damaged")


def load(path: str | Path) -> xr.Dataset:
    """Open a landscape file fully into memory and validate it."""
    path = Path(path)
    if not path.is_file():
        raise LossmapError(f"landscape file {str(path)!r} does not exist: check the path")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as exc:
        raise LossmapError(
            f"cannot read landscape file {str(path)!r}: it is truncated, damaged or not netCDF/HDF5 "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    validate(ds, f"file {str(path)!r}")
    return ds
