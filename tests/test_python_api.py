"""The package as a notebook user meets it: top-level names loaded on first use, the ``ds.lossmap`` accessor
returning figures, a short repr for directions, and no import of torch until something needs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import lossmap


def test_import_is_light_and_names_load_on_first_use():
    code = ("import sys, lossmap; light = 'torch' not in sys.modules and 'xarray' not in sys.modules; "
            "lossmap.compute; print(light, 'torch' in sys.modules, sorted(set(lossmap.__all__) - set(dir(lossmap))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "[]"], done.stdout + done.stderr
    for name in lossmap.__all__:
        assert getattr(lossmap, name) is not None


def test_the_accessor_draws_and_summarizes_a_landscape(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    data = (torch.randn(40, 4), torch.randint(0, 3, (40,)))
    plane = lossmap.compute(net, data, x="-1:1:5", y="-1:1:4")
    for kind in ("contour", "heatmap", "surface", "line"):
        assert isinstance(getattr(plane.lossmap, kind)(), Figure)
    assert plane.lossmap.summary() == lossmap.summarize(plane)
    assert set(plane.lossmap.interactive()) == {"surface", "contour", "lines"}
    assert plane.lossmap.report(tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    back = lossmap.load(lossmap.save(plane, None, tmp_path / "p.nc"))
    assert np.array_equal(back.lossmap.summary()["min"], plane.lossmap.summary()["min"])


def test_directions_have_a_short_repr():
    net = nn.Sequential(nn.Linear(100, 50), nn.Linear(50, 2))
    text = repr(lossmap.random_directions(net, 2, seed=3))
    assert text == "Directions(kind='random', count=2, tensors=4 (5,152 values each), seed=3, normalization='filter', bias='zero')"
