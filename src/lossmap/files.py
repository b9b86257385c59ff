"""Where lossmap's files go: every output checked before any work, every write atomic.

Nothing here imports more than the standard library, so the command line can check its arguments before it
loads torch or xarray.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LossmapError

__all__ = ["check_output", "atomic_path", "sibling", "read_netcdf"]


def check_output(path: str | Path, example: str = "landscape.nc") -> Path:
    """``path`` as a Path, checked before any work: not a folder, in a folder that exists and can be written.

    Every command and library call that writes a file asks this, so the same mistake reads the same everywhere.
    """
    text = str(path)
    path = Path(path)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise LossmapError(f"output {text!r} is a folder: give a file name such as {str(path / example)!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise LossmapError(f"output folder {str(folder)!r} does not exist: create it (mkdir -p) or choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LossmapError(f"output folder {str(folder)!r} is not writable: choose another --out")
    return path


@contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Write to the yielded temporary path beside ``path``; on success it replaces ``path`` in one
    rename, so readers and crashes see the old file or the new one, never half of one. ``durable``
    also syncs the file and its folder to disk. Failures become LossmapError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, directory=True)
    except PermissionError as exc:
        raise LossmapError(f"cannot write {str(path)!r}: permission denied; choose another --out") from exc
    except OSError as exc:
        raise LossmapError(f"cannot write {str(path)!r}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path, directory: bool = False) -> None:
    """Push a file (or a folder's entry list) to disk, so that a rename survives a power cut too."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync folders; the rename is still atomic
    finally:
        os.close(fd)


def sibling(path: str | Path, suffix: str) -> Path:
    """``ab.nc`` → ``ab<suffix>`` in the same folder (``ab.directions.safetensors``, ``ab.spec.json``)."""
    p = Path(path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + suffix)


def read_netcdf(path: str | Path, what: str):
    """The netCDF/HDF5 file at ``path``, loaded into memory; one LossmapError line, naming ``what`` (e.g.
    "landscape file"), when it is missing or cannot be read."""
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise LossmapError(f"{what} {str(path)!r} does not exist: check the path")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()
    except Exception as exc:  # noqa: BLE001 - any reader failure is a damaged file
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise LossmapError(f"cannot read {what} {str(path)!r}: it is truncated, damaged or not netCDF/HDF5 "
                           f"({type(exc).__name__}: {detail})") from exc
