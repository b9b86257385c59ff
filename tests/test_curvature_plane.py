"""Curvature over a landscape (lossmap.curvature.plane) and slices along Hessian eigenvectors, against closed forms:
the Hessian diag(12θ² − 2) of Σ(θᵢ⁴ − θᵢ²) at every grid point, a quadratic sliced along its eigenvectors, and on
a briefly trained seed CNN the finite-difference second derivative of the slice along the top eigenvector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossmap
from lossmap import store
from lossmap.curvature.plane import (CURVATURE_DONE, CurvatureState, curvature_landscape, curvature_state,
                                     eigen_directions, with_curvature)
from lossmap.curvature.results import parse_picks
from lossmap.directions import Directions
from lossmap.grid import Grid
from lossmap.objective import Objective
from lossmap.plot.curvature import plot_curvature
from lossmap.plot.static import plot_all


class Quartic(nn.Module):
    """Every example's output is Σ(θᵢ⁴ − θᵢ²): its Hessian is diag(12θ² − 2)."""

    def __init__(self, theta0: np.ndarray) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.theta**4 - self.theta**2).sum().expand(x.shape[0])


def _mean_output(out, target):
    return out.mean()


DATA = (torch.zeros(6, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.float64))


def quartic_problem(n=6, seed=0):
    rng = np.random.default_rng(seed)
    theta0 = rng.normal(scale=0.5, size=n)
    d, _ = np.linalg.qr(rng.normal(size=(n, 2)))
    dirs = [{"theta": torch.as_tensor(d[:, 0])}, {"theta": torch.as_tensor(d[:, 1])}]
    return theta0, d, dirs, Objective(Quartic(theta0), DATA, _mean_output, metrics={}, batch_size=4)


def closed_form(theta0, d, grid):
    lmax, lmin = np.empty(grid.size), np.empty(grid.size)
    for p, c in enumerate(grid.coefficients()):
        diag = 12 * (theta0 + d[:, : grid.ndim] @ c) ** 2 - 2
        lmax[p], lmin[p] = diag.max(), diag.min()
    return lmax, lmin


def test_curvature_map_of_the_quartic_is_the_closed_form_at_every_point():
    theta0, d, dirs, obj = quartic_problem()
    grid = Grid.from_specs("-1:1:5", "-0.5:0.5:4")
    seen = []
    state = curvature_landscape(obj, dirs, grid, tol=1e-10, method="double-backward", on_point=lambda i, n: seen.append(i))
    lmax, lmin = closed_form(theta0, d, grid)
    scale = np.abs(np.concatenate([lmax, lmin])).max()
    np.testing.assert_allclose(state.lmax, lmax, atol=1e-8 * scale)
    np.testing.assert_allclose(state.lmin, lmin, atol=1e-8 * scale)
    np.testing.assert_allclose(state.ratio, np.abs(lmin / lmax), rtol=1e-6)
    assert seen == list(range(1, 21)) and state.done.all() and (state.hvps > 0).all()
    line = curvature_landscape(obj, dirs, Grid.from_specs("-1:1:7"), tol=1e-10, method="double-backward")
    ref_max, ref_min = closed_form(theta0, d, Grid.from_specs("-1:1:7"))
    np.testing.assert_allclose(line.lmax, ref_max, atol=1e-8 * scale)
    np.testing.assert_allclose(line.lmin, ref_min, atol=1e-8 * scale)


def test_a_partial_map_resumes_where_it_stopped():
    theta0, d, dirs, obj = quartic_problem(seed=1)
    grid = Grid.from_specs("-1:1:4", "-1:1:3")
    full = curvature_landscape(obj, dirs, grid, tol=1e-10, method="double-backward")
    done = np.random.default_rng(2).random(grid.size) < 0.5
    partial = CurvatureState.empty(grid.size, 1e-10)
    partial.lmax[done], partial.lmin[done], partial.done[done] = full.lmax[done], full.lmin[done], True
    saved = []
    resumed = curvature_landscape(obj, dirs, grid, tol=1e-10, method="double-backward", previous=partial,
                                  checkpoint=lambda s: saved.append(int(s.done.sum())), every_seconds=0)
    np.testing.assert_allclose(resumed.lmax, full.lmax, rtol=1e-9)
    np.testing.assert_allclose(resumed.lmin, full.lmin, rtol=1e-9, atol=1e-9)
    assert (resumed.hvps[done] == 0).all() and (resumed.hvps[~done] > 0).all()  # done points were not redone
    assert saved[-1] == grid.size and saved[0] == int(done.sum()) + 1


def test_curvature_is_stored_in_the_landscape_and_drawn(tmp_path):
    theta0, d, dirs, obj = quartic_problem(seed=3)
    model = Quartic(theta0)
    directions = Directions(tensors=dirs, kind="custom")
    ds = lossmap.compute(model, DATA, x="-1:1:5", y="-1:1:3", directions=directions, loss_fn=_mean_output, metrics={})
    grid = Grid.from_specs("-1:1:5", "-1:1:3")
    state = curvature_landscape(obj, dirs, grid, tol=1e-10, method="double-backward")
    half = CurvatureState(state.lmax.copy(), state.lmin.copy(), state.done.copy(), state.hvps.copy(), state.tol)
    half.done[8:] = False
    store.save(with_curvature(ds, half), tmp_path / "half.nc")
    back = store.load(tmp_path / "half.nc")
    assert CURVATURE_DONE in back.coords and np.isnan(back["lambda_max"].values.reshape(-1)[8:]).all()
    again = curvature_state(back)
    assert again.done.sum() == 8 and again.tol == 1e-10 and again.hvps.sum() == state.hvps[:8].sum()
    store.save(with_curvature(ds, state), tmp_path / "full.nc")
    full = store.load(tmp_path / "full.nc")
    assert CURVATURE_DONE not in full.coords
    np.testing.assert_array_equal(full["lambda_min"].values.reshape(-1), state.lmin)
    assert store.metric_names(full)[:1] == ["loss"] and "lambda_ratio" in store.metric_names(full)
    assert len(plot_curvature(full).axes) >= 3
    written = plot_all(full, tmp_path / "full", ["png"])  # the landscape's own figures are unchanged by the map
    assert {p.name for p in written} >= {"full_contour.png", "full_line.png"}


def test_slices_along_eigenvectors_of_a_quadratic_are_its_closed_form():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    lam = np.array([-2.0, -0.5, 0.1, 0.3, 0.7, 1.5, 2.0, 5.0])
    a = (q * lam) @ q.T
    theta0 = rng.normal(size=8)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("a", torch.as_tensor(a))
            self.theta = nn.Parameter(torch.as_tensor(theta0))

        def forward(self, x):
            return (0.5 * self.theta @ self.a @ self.theta).expand(x.shape[0])

    model = Quadratic()
    obj = Objective(model, DATA, _mean_output, metrics={})
    directions, spectrum = eigen_directions(obj, parse_picks("top,bottom"), tol=1e-12, method="double-backward")
    assert directions.kind == "hessian" and directions.normalization == "none"
    np.testing.assert_allclose([spectrum.top.values[0], spectrum.bottom.values[0]], [5.0, -2.0], rtol=1e-10)
    v1, v2 = (directions.tensors[i]["theta"].numpy() for i in (0, 1))
    assert abs(abs(v1 @ q[:, -1]) - 1) < 1e-10 and abs(abs(v2 @ q[:, 0]) - 1) < 1e-10
    ds = lossmap.compute(model, DATA, x="-1:1:5", y="-2:2:5", directions=directions, loss_fn=_mean_output, metrics={})
    for i, alpha in enumerate(ds.x.values):
        for j, beta in enumerate(ds.y.values):
            t = theta0 + alpha * v1 + beta * v2
            assert abs(ds.loss.values[i, j] - 0.5 * t @ a @ t) < 1e-12 * (1 + abs(0.5 * t @ a @ t))


@pytest.mark.slow
def test_finite_difference_curvature_along_the_top_eigenvector_of_a_trained_cnn_is_lambda_max():
    """The seed CNN trained for one epoch on the embedded digits; the Hessian of the mean cross-entropy on 64
    test images. Along the unit top eigenvector v, f(h) = L(θ + h·v) has f''(0) = vᵀHv = λmax; the central
    difference (f(h) − 2f(0) + f(−h))/h² with h = 1e-2, evaluated in float64 (the eigenvector from float32 HVPs), carries an O(h²) truncation error
    (~1e-4 relative here) and a few ReLU/max-pool switches between ±h: agreement to 2 % is asked (a wrong
    eigenvector — e.g. the second one, or a random unit vector — misses by far more)."""
    from lossmap.data import digits
    from lossmap.models import MnistCNN
    from lossmap.train import train

    with lossmap.train.seeded(0):
        model = MnistCNN()
    train(model, digits("train"), epochs=1, batch_size=64, seed=0)
    x, y = digits("test").tensors
    data = (x[:64], y[:64])
    obj = Objective(model, data, metrics={})
    directions, spectrum = eigen_directions(obj, parse_picks("top,top"), tol=1e-4)
    lmax = float(spectrum.top.values[0])
    h = 1e-2
    line = lossmap.compute(model, data, x=[-h, 0.0, h], directions=directions, dtype="float64", metrics={})
    f = line.loss.values
    fd = (f[0] - 2 * f[1] + f[2]) / h**2
    print(f"λmax {lmax:.6g}, λ2 {spectrum.top.values[1]:.6g}, finite difference {fd:.6g}")
    assert lmax > 0 and abs(fd - lmax) < 0.02 * lmax
    second = float(spectrum.top.values[1])
    assert abs(second - lmax) > 0.05 * lmax  # the test can tell the top eigenvector from the next one
    assert all(torch.equal(p.detach(), obj.theta0[k]) for k, p in model.named_parameters())
