"""Landscape files: round trip through netCDF/HDF5, readable by h5py, clear errors for bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import lossmap
from lossmap import store
from lossmap.errors import LossmapError


@pytest.fixture(scope="module")
def landscape(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    path = tmp_path_factory.mktemp("store") / "plane.nc"
    ds = lossmap.compute(model, (x, y), "-1:1:5", "-0.5:0.5:3", seed=4, out=path, data_description="toy (50)")
    return ds, path, model, (x, y)


def test_round_trip_values_coords_attrs(landscape):
    ds, path, model, _ = landscape
    back = lossmap.load(path)
    np.testing.assert_array_equal(back.loss.values, ds.loss.values)
    np.testing.assert_array_equal(back.accuracy.values, ds.accuracy.values)
    np.testing.assert_array_equal(back.x.values, np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(back.y.values, np.linspace(-0.5, 0.5, 3))
    m = store.meta(back)
    for key in ("seed", "normalization", "bias_policy", "bn_policy", "data", "samples", "theta0_sha256", "parameter_count"):
        assert m[key] == ds.attrs[key], key
    assert m["metrics"] == ["loss", "accuracy"]
    assert m["versions"]["torch"] == torch.__version__
    assert m["moved_tensors"] == ["0.weight", "2.weight"]  # --bias zero keeps the biases fixed
    assert m["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert m["moved_parameter_count"] == 6 * 8 + 8 * 3  # biases do not move by default
    assert m["directions_file"] == "plane.directions.safetensors"
    assert (path.parent / m["directions_file"]).is_file()


def test_h5py_reads_the_file(landscape):
    ds, path, _, _ = landscape
    with h5py.File(path, "r") as fh:
        np.testing.assert_array_equal(fh["loss"][...], ds.loss.values)
        assert fh.attrs["lossmap_format"] in ("lossmap.landscape", b"lossmap.landscape")


def test_saved_directions_reproduce_the_landscape(landscape):
    ds, path, model, (x, y) = landscape
    d = lossmap.Directions.load(store.directions_path(path))
    again = lossmap.compute(model, (x, y), "-1:1:5", "-0.5:0.5:3", directions=d)
    np.testing.assert_array_equal(again.loss.values, ds.loss.values)


def test_truncated_and_foreign_files(tmp_path, landscape):
    _, path, _, _ = landscape
    cut = tmp_path / "cut.nc"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LossmapError, match="truncated, damaged or not netCDF"):
        lossmap.load(cut)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(LossmapError, match="not a lossmap landscape"):
        lossmap.load(foreign)
    with pytest.raises(LossmapError, match="does not exist"):
        lossmap.load(tmp_path / "missing.nc")


@pytest.mark.parametrize("module, reader", [("lossmap.curvature.results", "lossmap.curvature.results.load_spectrum"),
                                            ("lossmap.connect.connection", "lossmap.connect.files.load_result"),
                                            ("lossmap.connect.curve_eval", "lossmap.connect.files.load_result")])
def test_another_lossmap_file_given_as_a_landscape_names_its_reader(tmp_path, module, reader, capsys):
    import importlib
    import re

    fmt = importlib.import_module(module).FORMAT  # the format that module writes, not a copy of its name
    path = tmp_path / "other.nc"
    xr.Dataset({"t": ("x", np.arange(3.0))}, attrs={"lossmap_format": fmt}).to_netcdf(path, engine="h5netcdf")
    with pytest.raises(LossmapError, match=re.escape(reader)):
        lossmap.load(path)
    module, name = reader.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))  # the hint names a real function
    from lossmap.cli import main

    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 2  # plot and info read a Hessian file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reader in err[0]
