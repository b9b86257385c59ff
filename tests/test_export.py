"""Mesh export: read every format back with meshio and compare with the stored landscape."""

from __future__ import annotations

import warnings

import meshio
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from lossmap import store
from lossmap.cli import main
from lossmap.errors import LossmapError
from lossmap.export import export_mesh, grid_mesh

NX, NY = 7, 4  # non-square on purpose: swapped axes would show


def landscape(nan=False):
    x = np.linspace(-1, 1, NX)
    y = np.linspace(-0.5, 1.0, NY)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    loss = 0.2 + 3.0 * xx**2 + 0.5 * (yy - 0.25) ** 2 + 0.1 * xx * yy
    if nan:
        loss[2, 1] = np.nan
        loss[5, 3] = np.inf
    return xr.Dataset(
        {"loss": (("x", "y"), loss), "accuracy": (("x", "y"), 1 / (1 + loss))},
        coords={"x": x, "y": y},
        attrs={"lossmap_format": store.FORMAT, "lossmap_format_version": 1, "ndim": 2, "metrics": '["loss", "accuracy"]'},
    )


def read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # meshio's STL reader warns about an integer overflow it handles
        return meshio.read(path)


def heights_by_xy(mesh):
    """{(x, y): z} from a mesh, independent of the vertex order a reader chooses (STL re-orders)."""
    return {(round(float(p[0]), 5), round(float(p[1]), 5)): float(p[2]) for p in mesh.points}


def expected(z):
    x = np.linspace(-1, 1, NX)
    y = np.linspace(-0.5, 1.0, NY)
    return {(round(float(x[i]), 5), round(float(y[j]), 5)): float(z[i, j]) for i in range(NX) for j in range(NY)}


@pytest.mark.parametrize("fmt", ["vtk", "vtu", "obj", "stl", "ply"])
def test_every_format_reads_back_with_grid_geometry_and_loss(tmp_path, fmt):
    ds = landscape()
    path = export_mesh(ds, tmp_path / f"s.{fmt}")
    mesh = read(path)
    assert len(mesh.points) == NX * NY
    triangles = mesh.get_cells_type("triangle")
    assert len(triangles) == 2 * (NX - 1) * (NY - 1)
    assert sum(len(c.data) for c in mesh.cells) == len(triangles)
    got, want = heights_by_xy(mesh), expected(ds.loss.values)
    assert got.keys() == want.keys()
    tol = 1e-6 if fmt in ("stl", "ply") else 1e-12  # float32 formats
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=tol, abs=tol)
    # every triangle faces up (+z normal projected on the x-y plane is counter-clockwise) and has area
    p = mesh.points[triangles]
    cross = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    assert np.all(cross > 0)
    # the triangles tile the grid's rectangle exactly
    assert cross.sum() / 2 == pytest.approx(2.0 * 1.5, rel=1e-6)
    if fmt in ("vtk", "vtu", "ply"):
        np.testing.assert_allclose(mesh.point_data["loss"], ds.loss.values.ravel(), rtol=1e-6)
        np.testing.assert_allclose(mesh.point_data["accuracy"], ds.accuracy.values.ravel(), rtol=1e-6)
        assert np.all(mesh.point_data["valid"] == 1)


def test_vertex_order_is_the_landscape_c_order(tmp_path):
    ds = landscape()
    mesh = read(export_mesh(ds, tmp_path / "s.vtu"))
    xx, yy = np.meshgrid(ds.x.values, ds.y.values, indexing="ij")
    np.testing.assert_array_equal(mesh.points[:, 0], xx.ravel())
    np.testing.assert_array_equal(mesh.points[:, 1], yy.ravel())
    np.testing.assert_array_equal(mesh.points[:, 2], ds.loss.values.ravel())


def test_log_and_clipping_transform_z(tmp_path):
    ds = landscape()
    mesh = read(export_mesh(ds, tmp_path / "s.vtk", log=True, zmin=0.3, zmax=2.0))
    want = np.log10(np.clip(ds.loss.values, 0.3, 2.0)).ravel()
    np.testing.assert_allclose(mesh.points[:, 2], want, rtol=0, atol=1e-12)
    assert mesh.points[:, 2].max() == pytest.approx(np.log10(2.0))
    # point data keeps the stored, untransformed loss
    np.testing.assert_allclose(mesh.point_data["loss"], ds.loss.values.ravel())


def test_nan_and_inf_become_a_wall_at_the_top_and_are_flagged(tmp_path):
    ds = landscape(nan=True)
    mesh = read(export_mesh(ds, tmp_path / "s.vtu", zmax=3.0))
    z = mesh.points[:, 2].reshape(NX, NY)
    assert z[2, 1] == 3.0 and z[5, 3] == 3.0
    assert np.all(np.isfinite(mesh.points))
    valid = mesh.point_data["valid"].reshape(NX, NY)
    assert valid[2, 1] == 0 and valid[5, 3] == 0 and valid.sum() == NX * NY - 2
    finite = np.isfinite(ds.loss.values)
    np.testing.assert_allclose(z[finite], np.minimum(ds.loss.values[finite], 3.0))
    # without zmax the wall is at the largest finite value
    z2 = read(export_mesh(ds, tmp_path / "t.vtu")).points[:, 2].reshape(NX, NY)
    assert z2[2, 1] == pytest.approx(np.nanmax(np.where(finite, ds.loss.values, np.nan)))


def test_user_errors(tmp_path):
    ds = landscape()
    with pytest.raises(LossmapError, match="'s.xyz'"):
        export_mesh(ds, tmp_path / "s.xyz")
    with pytest.raises(LossmapError, match="'gltf'"):
        export_mesh(ds, tmp_path / "s.obj", format="gltf")
    with pytest.raises(LossmapError, match="1-D"):
        export_mesh(ds.isel(y=0, drop=True), tmp_path / "s.obj")
    with pytest.raises(LossmapError, match="zmin=-1"):
        export_mesh(ds, tmp_path / "s.obj", log=True, zmin=-1)
    with pytest.raises(LossmapError, match="zmin=2 must be less than zmax=1"):
        export_mesh(ds, tmp_path / "s.obj", zmin=2, zmax=1)
    with pytest.raises(LossmapError, match="'nope'"):
        export_mesh(ds, tmp_path / "s.obj", metric="nope")
    with pytest.raises(LossmapError, match="does not exist"):
        export_mesh(ds, tmp_path / "missing" / "s.obj")


def test_cli_export_writes_mesh_and_refuses_bad_input(tmp_path, capsys):
    nc = store.save(landscape(), tmp_path / "l.nc")
    out = tmp_path / "l.ply"
    assert main(["export", str(nc), "--format", "ply", "--log", "--out", str(out)]) == 0
    mesh = read(out)
    np.testing.assert_allclose(mesh.points[:, 2], np.log10(landscape().loss.values.ravel()), rtol=1e-6)
    assert str(out) in capsys.readouterr().out

    def fails(argv, needle):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("lossmap: error:") and needle in err, err

    fails(["export", str(tmp_path / "none.nc"), "--out", str(tmp_path / "x.vtk")], "does not exist")
    fails(["export", str(nc), "--out", str(tmp_path / "x.vtk"), "--metric", "nope"], "'nope'")
    fails(["export", str(nc), "--out", str(tmp_path / "x.abc")], "--format")
    assert main(["export", str(nc), "--format", "obj", "--zmax", "1", "--out", str(out.with_suffix(".obj"))]) == 0
    assert read(out.with_suffix(".obj")).points[:, 2].max() == 1.0
    assert main(["export", str(nc), "--format", "ply", "--out", str(out), "--zscale", "0.5"]) == 0  # replaced
    np.testing.assert_allclose(read(out).points[:, 2], 0.5 * landscape().loss.values.ravel(), rtol=1e-6)
    fails(["export", str(nc), "--out", str(tmp_path / "z.vtk"), "--zscale", "0"], "z scale")


@settings(max_examples=30, deadline=None)
@given(nx=st.integers(2, 12), ny=st.integers(2, 12))
def test_grid_mesh_tiles_any_grid_once(nx, ny):
    x, y = np.cumsum(np.arange(1, nx + 1)) * 0.1, np.linspace(-2, 3, ny)  # uneven x spacing
    z = np.arange(nx * ny, dtype=float).reshape(nx, ny)
    points, tri = grid_mesh(x, y, z)
    assert points.shape == (nx * ny, 3) and tri.shape == (2 * (nx - 1) * (ny - 1), 3)
    np.testing.assert_array_equal(points[:, 2], z.ravel())
    p = points[tri]
    cross = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    assert np.all(cross > 0)  # all face up
    assert cross.sum() / 2 == pytest.approx((x[-1] - x[0]) * (y[-1] - y[0]))  # no gaps, no overlaps
    # every interior edge is shared by exactly two triangles, boundary edges by one
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert set(counts.tolist()) <= {1, 2} and (counts == 1).sum() == 2 * (nx - 1) + 2 * (ny - 1)
