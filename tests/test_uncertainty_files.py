"""Files without per-point errors (lossmap 0.1's, or made before errors were stored) still load, plot, compare,
report, export and resume; files with them show only their metrics to code that walks the data variables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import lossmap
from lossmap import store
from lossmap.cli import main
from lossmap.uncertainty.pointwise import error_names

ERROR_ATTRS = ("population", "precision_tol", "precision_relative", "precision_z", "precision_min_samples", "precision_order")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(90, 6, generator=g), torch.randint(0, 3, (90,), generator=g)


def _old(ds):
    """``ds`` as a file made without per-point errors: their variables, attributes and setting dropped."""
    old = ds.drop_vars(error_names(ds))
    for key in ERROR_ATTRS:
        old.attrs.pop(key, None)
    settings = store.meta(old)["settings"]
    settings.pop("precision")
    old.attrs["settings"] = json.dumps(settings)
    return old


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def files(tmp_path):
    kw = dict(x="-1:1:5", y="-1:1:4", seed=0, batch_size=30)
    new = lossmap.compute(_model(), _data(), out=tmp_path / "new.nc", **kw)
    assert error_names(new) == ["loss_se", "loss_paired_se", "accuracy_se", "accuracy_paired_se"]
    store.save(_old(store.load(tmp_path / "new.nc")), tmp_path / "old.nc")
    return tmp_path, kw


def test_a_file_without_errors_loads_plots_compares_and_reports(files, capsys):
    root, _ = files
    old, new = store.load(root / "old.nc"), store.load(root / "new.nc")
    assert error_names(old) == [] and store.metric_names(old) == store.metric_names(new) == ["loss", "accuracy"]
    assert list(new.data_vars) == list(old.data_vars) == ["loss", "accuracy"]
    rc, out, err = cli(capsys, "plot", root / "old.nc", "--out", f"{root}/")
    assert rc == 0, err
    assert {p.name for p in root.glob("old_*.png")} == {f"old_{k}.png" for k in ("contour", "contourf", "heatmap", "surface", "line")}
    rc, out, err = cli(capsys, "plot", root / "old.nc", "--kind", "contour", "--mask-noise", "--out", root / "m.png")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "paired standard errors" in err
    rc, out, err = cli(capsys, "plot", root / "new.nc", "--kind", "contour", "--mask-noise", "--out", root / "m.png")
    assert rc == 0 and (root / "m.png").stat().st_size > 0
    rc, out, err = cli(capsys, "compare", root / "new.nc", root / "old.nc", "--out", root / "cmp.png")
    assert rc == 0, err
    assert "ball_mean_increase" in out
    for name in ("old", "new"):
        rc, out, err = cli(capsys, "report", root / f"{name}.nc", "--out", root / f"{name}.html")
        assert rc == 0, err
    bars = '"error_y":{"array":'  # a trace's error bars (the template styles "error_y" in every report)
    assert bars in (root / "new.html").read_text() and bars not in (root / "old.html").read_text()
    rc, out, err = cli(capsys, "info", root / "old.nc")
    assert rc == 0 and "per-point errors" not in out
    rc, out, err = cli(capsys, "export", root / "old.nc", "--out", root / "old.vtu")
    assert rc == 0, err


def test_a_file_without_errors_resumes_and_new_points_get_errors(files):
    root, kw = files
    ref = store.load(root / "new.nc")
    mask = np.ones((5, 4), bool)
    mask[1:3, :] = False
    store.save(store.partial_dataset(store.load(root / "old.nc"), mask), root / "old.nc")
    ds = lossmap.compute(_model(), _data(), out=root / "old.nc", chunk=4, **kw)
    assert np.array_equal(ds.loss.values, ref.loss.values) and np.array_equal(ds.accuracy.values, ref.accuracy.values)
    se = ds.loss_se.values
    assert np.isnan(se[mask]).all()  # points made before: their errors are unknown
    assert np.array_equal(se[~mask], ref.loss_se.values[~mask])  # points made now: their errors
