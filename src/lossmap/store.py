"""Landscape files: netCDF4/HDF5 (h5netcdf engine) with metadata, validated on load.

Layout of a landscape (an :class:`xarray.Dataset`):

* dims ``x`` (and ``y``); coordinates ``x``/``y`` in coefficient units (float64);
* one float64 data variable per metric (``loss``, ``accuracy``, …) with dims ``("x",)`` or ``("x", "y")``;
  a point that was not evaluated is NaN;
* per-point standard errors (``loss_se``, ``loss_se_set``, ``loss_paired_se``, …, ``samples_used``) as
  coordinates with the metrics' dims, so that ``ds.data_vars`` holds only metrics (see
  :mod:`lossmap.uncertainty.pointwise`; files without them are as valid); a direction ensemble has a leading
  ``seed`` dim (:mod:`lossmap.uncertainty.seeds`);
* attributes (flat: str, int or float). Structured values are JSON strings whose names are listed in
  :data:`JSON_ATTRS`; :func:`meta` decodes them. Required: ``lossmap_format``, ``lossmap_format_version``,
  ``ndim``, ``metrics``.

A run that is still going (or was stopped) is saved as a *partial* landscape: a ``done`` coordinate
(uint8, same dims as the metrics; 1 = evaluated) marks the finished points, every other point is NaN, and
the attributes ``points_done``/``points_total`` count them. ``done`` is a coordinate, not a data
variable, so code that walks ``ds.data_vars`` sees only metrics; a complete landscape has no ``done``.
The ``settings`` attribute (JSON) holds what identifies the run for resuming (see
:func:`lossmap.landscape.compute`).

Every write goes to a temporary file in the same folder, is flushed to disk and then renamed over the
target (:func:`os.replace` is atomic): a process killed at any moment leaves either the previous file or
the new one, never a half-written HDF5 file.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xarray as xr

from .errors import LossmapError
from .files import atomic_path, check_output, read_netcdf

FORMAT = "lossmap.landscape"
FORMAT_VERSION = 1
#: lossmap's other netCDF files: what each holds and where it is read (for the message when one is given as a landscape)
OTHER_FORMATS = {
    "lossmap.hessian": "a Hessian spectrum (lossmap hessian): lossmap info prints it and lossmap plot draws its density; "
                       "in Python, lossmap.curvature.results.load_spectrum reads it",
    "lossmap.connect": "barriers between two models (lossmap connect draws its figures itself; lossmap info prints "
                       "it): read it with lossmap.connect.files.load_result(path, 'lossmap.connect')",
    "lossmap.curve": "a trained curve (lossmap curve draws its figures itself; lossmap info prints it): read it with "
                     "lossmap.connect.files.load_result(path, 'lossmap.curve')",
}
#: attributes stored as JSON strings
JSON_ATTRS = ("metrics", "moved_tensors", "versions", "markers", "settings", "higher_is_better")

#: the per-point mask of a partial landscape (a coordinate; 1 = evaluated)
DONE = "done"

__all__ = [
    "save", "load", "meta", "validate", "FORMAT", "FORMAT_VERSION", "JSON_ATTRS", "DONE", "encode_attrs",
    "directions_path", "atomic_path", "done_mask", "progress", "is_complete", "partial_dataset", "remove_stale_temporaries",
    "writer_lock", "check_output", "require_metric", "metric_names",
]


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
    """The landscape's attributes with the JSON-encoded values (:data:`JSON_ATTRS`) decoded.

    Args:
        ds (xr.Dataset): a landscape.

    Returns:
        dict[str, Any]: every attribute; ``metrics``, ``markers``, ``settings``, … as Python objects.

    Examples:
        >>> import torch, lossmap
        >>> from lossmap import store
        >>> ds = lossmap.compute(torch.nn.Linear(2, 3), (torch.randn(8, 2), torch.randint(0, 3, (8,))), x="-1:1:3")
        >>> store.meta(ds)["metrics"], store.meta(ds)["markers"]
        (['loss', 'accuracy'], {'θ*': [0.0]})
    """
    out = dict(ds.attrs)
    for key in JSON_ATTRS:
        if isinstance(out.get(key), str) and out[key]:
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out


def directions_path(landscape_path: str | Path) -> Path:
    """Where the directions of a landscape file are saved: beside it.

    Args:
        landscape_path (str | Path): the landscape file, e.g. ``run.nc``.

    Returns:
        Path: e.g. ``run.directions.safetensors`` in the same folder.

    Examples:
        >>> from lossmap.store import directions_path
        >>> directions_path("runs/plane.nc").as_posix()
        'runs/plane.directions.safetensors'
    """
    p = Path(landscape_path)
    return p.with_name(p.stem + ".directions.safetensors")


def metric_names(ds: xr.Dataset) -> list[str]:
    """The landscape's metrics: its data variables, in the order the file lists them.

    Args:
        ds (xr.Dataset): a landscape.

    Returns:
        list[str]: e.g. ``["loss", "accuracy"]``.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.store import metric_names
        >>> ds = xr.Dataset({"accuracy": ("x", np.ones(3)), "loss": ("x", np.zeros(3))}, attrs={"metrics": '["loss", "accuracy"]'})
        >>> metric_names(ds)
        ['loss', 'accuracy']
    """
    listed = meta(ds).get("metrics")
    names = [str(m) for m in listed if m in ds.data_vars] if isinstance(listed, list) else []
    return names + [str(v) for v in ds.data_vars if str(v) not in names]


def require_metric(ds: xr.Dataset, metric: str, source: str = "the landscape") -> str:
    """Check that a landscape holds a metric.

    Args:
        ds (xr.Dataset): a landscape.
        metric (str): the metric wanted.
        source (str): how the error message names the landscape.

    Returns:
        str: ``metric``.

    Raises:
        LossmapError: one line naming the metrics ``ds`` has.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.store import require_metric
        >>> ds = xr.Dataset({"loss": ("x", np.zeros(3))})
        >>> require_metric(ds, "loss")
        'loss'
        >>> require_metric(ds, "acc")
        Traceback (most recent call last):
        lossmap.errors.LossmapError: metric 'acc' is not in the landscape (it has loss): choose one of those
    """
    if metric not in ds.data_vars:
        raise LossmapError(f"metric {metric!r} is not in {source} (it has {', '.join(metric_names(ds))}): choose one of those")
    return metric


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a landscape as netCDF4/HDF5, atomically (temporary file + rename): a crash never leaves a
    half-written file. :func:`lossmap.save` also writes the directions beside it.

    Args:
        ds (xr.Dataset): the landscape.
        path (str | Path): the file to write; its folder must exist.

    Returns:
        Path: the path written.

    Examples:
        >>> import pathlib, tempfile, torch, lossmap
        >>> from lossmap import store
        >>> ds = lossmap.compute(torch.nn.Linear(2, 1), (torch.randn(8, 2), torch.randn(8, 1)), x="-1:1:5")
        >>> path = store.save(ds, pathlib.Path(tempfile.mkdtemp()) / "line.nc")
        >>> bool((store.load(path).loss == ds.loss).all())
        True
    """
    path = check_output(path)
    out = ds.copy()
    out.attrs = encode_attrs(ds.attrs)
    with atomic_path(path, durable=True) as tmp:
        out.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
    return path


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporary files that a killed writer of ``path`` left behind (those of live processes stay)."""
    path = Path(path)
    removed: list[Path] = []
    if os.name != "posix":  # no cheap "is this process alive?" test elsewhere
        return removed
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2 : -4])
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # that process still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


@contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock (``flock`` on ``.<name>.lock`` beside ``path``) while one run writes ``path``.

    A second run on the same file fails at once instead of overwriting the first one's points. The
    kernel drops the lock when the process ends, however it ends. Where the file system cannot lock,
    the run goes on unlocked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LossmapError(f"cannot create the lock file {str(lock)!r}: {exc}; choose another --out") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LossmapError(
                f"another lossmap run is writing {str(path)!r} right now: wait for it to end, or choose another --out"
            ) from None
        except OSError:
            break  # no locking on this file system
        try:  # the holder we waited on may have removed the file we opened: lock the current one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:  # remove it while still holding it; a run that opened it meanwhile retries on a new file
            lock.unlink()
        except OSError:
            pass
        os.close(fd)


def done_mask(ds: xr.Dataset) -> np.ndarray:
    """Which points of a landscape were evaluated.

    Args:
        ds (xr.Dataset): a landscape, complete or partial.

    Returns:
        np.ndarray: booleans in the metrics' shape; all True for a complete landscape.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.store import done_mask, partial_dataset
        >>> ds = xr.Dataset({"loss": ("x", np.arange(4.0))}, coords={"x": np.arange(4.0)}, attrs={"metrics": '["loss"]'})
        >>> done_mask(partial_dataset(ds, np.array([1, 1, 0, 0]))).tolist()
        [True, True, False, False]
    """
    metrics = meta(ds).get("metrics") or list(ds.data_vars)
    shape = ds[metrics[0]].shape
    if DONE not in ds.variables:
        return np.ones(shape, dtype=bool)
    return np.asarray(ds[DONE].values, dtype=bool).reshape(shape)


def progress(ds: xr.Dataset) -> tuple[int, int]:
    """How far a landscape is.

    Args:
        ds (xr.Dataset): a landscape, complete or partial (a run still going, or stopped).

    Returns:
        tuple[int, int]: ``(points done, points in the grid)``.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.store import partial_dataset, progress
        >>> ds = xr.Dataset({"loss": ("x", np.arange(4.0))}, coords={"x": np.arange(4.0)}, attrs={"metrics": '["loss"]'})
        >>> progress(partial_dataset(ds, np.array([1, 0, 1, 0]))), progress(ds)
        ((2, 4), (4, 4))
    """
    mask = done_mask(ds)
    return int(mask.sum()), int(mask.size)


def is_complete(ds: xr.Dataset) -> bool:
    """Whether every point of a landscape was evaluated.

    Args:
        ds (xr.Dataset): a landscape.

    Returns:
        bool: True when no point is missing.

    Examples:
        >>> import numpy as np, xarray as xr
        >>> from lossmap.store import is_complete
        >>> is_complete(xr.Dataset({"loss": ("x", np.zeros(3))}, attrs={"metrics": '["loss"]'}))
        True
    """
    done, total = progress(ds)
    return done == total


def partial_dataset(ds: xr.Dataset, mask: np.ndarray) -> xr.Dataset:
    """``ds`` with the ``done`` coordinate and counts set from ``mask``; unfinished points become NaN.

    A full mask gives a complete landscape (no ``done`` coordinate).
    """
    mask = np.asarray(mask, dtype=bool)
    metrics = meta(ds).get("metrics") or list(ds.data_vars)
    dims = ds[metrics[0]].dims
    if mask.shape != ds[metrics[0]].shape:
        raise ValueError(f"mask shape {mask.shape} differs from the landscape's {ds[metrics[0]].shape}")
    out = ds.drop_vars(DONE, errors="ignore")
    for name in metrics:
        out[name] = out[name].where(mask)
    if not mask.all():
        out = out.assign_coords({DONE: (dims, mask.astype(np.uint8))})
        out[DONE].attrs.update(long_name="point evaluated", flag_values="0 1", flag_meanings="pending done")
    out.attrs["points_done"] = int(mask.sum())
    out.attrs["points_total"] = int(mask.size)
    return out


def validate(ds: xr.Dataset, source: str = "dataset") -> None:
    """Check that ``ds`` is a lossmap landscape.

    Args:
        ds (xr.Dataset): the dataset to check.
        source (str): how the error message names it.

    Raises:
        LossmapError: saying what is wrong (not a landscape, a newer format, damaged).

    Examples:
        >>> import xarray as xr
        >>> from lossmap.store import validate
        >>> validate(xr.Dataset(), "my.nc")
        Traceback (most recent call last):
        lossmap.errors.LossmapError: my.nc is not a lossmap landscape (no 'lossmap.landscape' format attribute): was it written by lossmap?
    """
    fmt = ds.attrs.get("lossmap_format")
    if fmt in OTHER_FORMATS:
        raise LossmapError(f"{source} is not a landscape but {OTHER_FORMATS[fmt]}")
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
    if DONE in ds.variables and tuple(ds[DONE].dims) != tuple(ds[metrics[0]].dims):
        raise LossmapError(f"{source}: its '{DONE}' mask has dims {tuple(ds[DONE].dims)}, not the metrics' dims: the file is damaged")


def load(path: str | Path, accept: tuple[str, ...] = ()) -> xr.Dataset:
    """Open a landscape file fully into memory and validate it.

    A partial landscape (a run still going, or stopped) loads too: its unfinished points are NaN and
    :func:`done_mask` / :func:`progress` tell which points are done.

    Args:
        path (str | Path): a ``.nc`` file written by lossmap.
        accept (tuple[str, ...]): other formats (keys of :data:`OTHER_FORMATS`) the caller reads itself: such a
            file is returned as it is, its ``lossmap_format`` attribute saying what it is.

    Returns:
        xr.Dataset: the landscape.

    Raises:
        LossmapError: the file is missing, damaged or not a landscape.

    Examples:
        >>> import pathlib, tempfile, torch, lossmap
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "line.nc"
        >>> ds = lossmap.compute(torch.nn.Linear(2, 1), (torch.randn(8, 2), torch.randn(8, 1)), x="-1:1:5", out=path)
        >>> same = lossmap.load(path)
        >>> same.sizes["x"], same.attrs["directions_kind"]
        (5, 'random')
    """
    ds = read_netcdf(path, "landscape file")
    if ds.attrs.get("lossmap_format") not in accept:
        validate(ds, f"file {str(path)!r}")
    return ds
