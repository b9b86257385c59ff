"""Export a 2-D landscape as a triangle mesh (ParaView, Blender, 3-D printing) with meshio.

The mesh
    one vertex per grid point, ``(x, y, z)`` with ``z`` the metric after the transform below, vertex
    ``k = i·ny + j`` for grid point ``(x[i], y[j])`` (the landscape's C order); two triangles per grid cell,
    counter-clockwise seen from +z, so normals point up: ``2·(nx−1)·(ny−1)`` faces.

The z transform, in this order
    1. clip to ``[zmin, zmax]`` — both in the metric's own units, also with ``log=True``; each defaults to the
       smallest / largest finite (and, with ``log``, positive) value;
    2. ``log10`` when ``log=True``;
    3. multiplication by ``z_scale`` (default 1).

Points that have no finite value (unevaluated NaN, diverged ``+inf``) become a wall at the top (``zmax``);
``-inf`` and, with ``log``, values ``<= 0`` go to the bottom (``zmin``). So the vertex count always equals the
grid size and no reader meets NaN coordinates. Formats that carry point data (vtk, vtu, ply) also get every
metric's stored value (NaN kept) and ``valid`` (1 where the point had a usable value, 0 where it was replaced);
obj and stl store geometry only.
"""

from __future__ import annotations

from pathlib import Path

import meshio
import numpy as np
import xarray as xr

from . import store
from .errors import LossmapError

__all__ = ["export_mesh", "surface_z", "grid_mesh", "FORMATS"]

#: supported formats: name -> (meshio format, carries point data)
FORMATS = {"vtk": ("vtk", True), "vtu": ("vtu", True), "obj": ("obj", False), "stl": ("stl", False), "ply": ("ply", True)}


def surface_z(
    values: np.ndarray, log: bool = False, zmin: float | None = None, zmax: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The heights of a mesh: the z transform of the module docstring.

    Args:
        values (np.ndarray): the metric over the grid.
        log (bool): log10 of the values (floored at the smallest positive one).
        zmin (float | None): clip below.
        zmax (float | None): clip above.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``(z, valid)``, both shaped like ``values`` (``valid``: finite points).

    Examples:
        >>> import numpy as np
        >>> from lossmap.export import surface_z
        >>> z, valid = surface_z(np.array([[1.0, 10.0], [100.0, np.nan]]), log=True)
        >>> z[valid].tolist(), valid.tolist()
        ([0.0, 1.0, 2.0], [[True, True], [True, False]])
    """
    v = np.asarray(values, dtype=np.float64)
    if zmin is not None and zmax is not None and not zmin < zmax:
        raise LossmapError(f"zmin={zmin:g} must be less than zmax={zmax:g}: swap or change them")
    if log and zmin is not None and zmin <= 0:
        raise LossmapError(f"zmin={zmin:g} cannot be used with a log z axis: give a positive zmin or drop --log")
    if log and zmax is not None and zmax <= 0:
        raise LossmapError(f"zmax={zmax:g} cannot be used with a log z axis: give a positive zmax or drop --log")
    valid = np.isfinite(v) & ((v > 0) if log else True)
    if not valid.any():
        what = "finite positive" if log else "finite"
        raise LossmapError(f"the landscape has no {what} values to draw{': drop --log' if log else ''}")
    lo = float(zmin) if zmin is not None else float(v[valid].min())
    hi = float(zmax) if zmax is not None else float(v[valid].max())
    if lo > hi:  # only one bound given and the data lie entirely beyond it
        raise LossmapError(f"z clipping range [{lo:g}, {hi:g}] is empty for this landscape: change --zmin/--zmax")
    top = np.isnan(v) | (v == np.inf)
    z = np.where(valid, np.clip(np.where(valid, v, lo), lo, hi), np.where(top, hi, lo))
    if log:
        z = np.log10(z)
    return z, valid


def grid_mesh(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The triangle mesh of a height field ``z[i, j]`` over ``x[i]``, ``y[j]``: one vertex per point, two
    triangles per cell.

    Args:
        x (np.ndarray): the x coordinates, ``(nx,)``.
        y (np.ndarray): the y coordinates, ``(ny,)``.
        z (np.ndarray): the heights, ``(nx, ny)``.

    Returns:
        tuple[np.ndarray, np.ndarray]: vertices ``(nx·ny, 3)`` and triangles ``(2·(nx−1)·(ny−1), 3)``.

    Examples:
        >>> import numpy as np
        >>> from lossmap.export import grid_mesh
        >>> vertices, triangles = grid_mesh(np.arange(3.0), np.arange(2.0), np.zeros((3, 2)))
        >>> vertices.shape, triangles.shape
        ((6, 3), (4, 3))
    """
    nx, ny = len(x), len(y)
    xx, yy = np.meshgrid(np.asarray(x, float), np.asarray(y, float), indexing="ij")
    points = np.stack([xx.ravel(), yy.ravel(), np.asarray(z, float).ravel()], axis=1)
    idx = np.arange(nx * ny).reshape(nx, ny)
    v00, v10, v01, v11 = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel()
    lower = np.stack([v00, v10, v11], axis=1)
    upper = np.stack([v00, v11, v01], axis=1)
    triangles = np.stack([lower, upper], axis=1).reshape(-1, 3).astype(np.int32)
    return points, triangles


def export_mesh(
    ds: xr.Dataset,
    path: str | Path,
    format: str | None = None,
    metric: str = "loss",
    log: bool = False,
    zmin: float | None = None,
    zmax: float | None = None,
    z_scale: float = 1.0,
) -> Path:
    """Write the 2-D landscape ``ds`` as a mesh of ``ds[metric]`` (see the module docstring).

    Args:
        ds (xr.Dataset): a 2-D landscape.
        path (str | Path): the file to write.
        format (str | None): one of :data:`FORMATS`; None takes it from the file's suffix.
        metric (str): the metric that gives the heights (VTK, VTU and PLY carry every metric as point data).
        log (bool): log10 heights.
        zmin (float | None): clip the heights below.
        zmax (float | None): clip them above.
        z_scale (float): multiplies the transformed heights (last step), e.g. to give a printable aspect when
            losses are large next to the coefficient range.

    Returns:
        Path: the path written.

    Examples:
        >>> import pathlib, tempfile, torch, lossmap
        >>> from lossmap.export import export_mesh
        >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> plane = lossmap.compute(torch.nn.Linear(4, 3), data, x="-1:1:5", y="-1:1:5")
        >>> export_mesh(plane, pathlib.Path(tempfile.mkdtemp()) / "plane.stl", zmax=3).suffix
        '.stl'
    """
    path = Path(path)
    if format is None:
        format = path.suffix.lstrip(".").lower()
        if format not in FORMATS:
            raise LossmapError(
                f"cannot tell the mesh format from {path.name!r}: name the file *.vtk, *.vtu, *.obj, *.stl or *.ply, "
                "or give --format"
            )
    format = format.lower()
    if format not in FORMATS:
        raise LossmapError(f"mesh format {format!r} is not supported: choose one of {', '.join(FORMATS)}")
    if "y" not in ds.dims:
        raise LossmapError("a mesh needs a 2-D landscape but this one is 1-D: use 'lossmap plot' for curves")
    if "seed" in ds.dims:
        raise LossmapError("a mesh is one surface but this file is a direction ensemble (a 'seed' dimension): export one "
                           "seed's slice (ds.isel(seed=k) in Python) or compute it alone with lossmap surface --seed k")
    store.require_metric(ds, metric)
    if ds.sizes["x"] < 2 or ds.sizes["y"] < 2:
        raise LossmapError(
            f"a mesh needs at least 2 points per axis, the grid is {ds.sizes['x']}×{ds.sizes['y']}: compute a larger grid"
        )
    store.check_output(path, "landscape.vtu")

    if not (np.isfinite(z_scale) and z_scale != 0):
        raise LossmapError(f"z scale {z_scale!r} must be a finite, non-zero number")
    values = ds[metric].transpose("x", "y").values
    z, valid = surface_z(values, log=log, zmin=zmin, zmax=zmax)
    z = z * z_scale
    points, triangles = grid_mesh(ds["x"].values, ds["y"].values, z)
    meshio_format, has_point_data = FORMATS[format]
    point_data = {}
    if has_point_data:
        for name, var in ds.data_vars.items():
            if set(var.dims) == {"x", "y"}:
                point_data[str(name)] = np.asarray(var.transpose("x", "y").values, dtype=np.float64).ravel()
        point_data["valid"] = valid.ravel().astype(np.uint8)
    mesh = meshio.Mesh(points, [("triangle", triangles)], point_data=point_data)

    with store.atomic_path(path) as tmp:
        meshio.write(tmp, mesh, file_format=meshio_format, **({"binary": True} if format == "stl" else {}))
    return path
