"""The landscape of a trajectory's plane with its checkpoints, against closed forms and plain torch.

Oracles: gradient descent on least squares started on two eigen-directions of XᵀX stays in the plane
through the minimizer they span, so every checkpoint's loss has the closed form λ₁aₜ² + λ₂bₜ² with
aₜ = a₀(1 − 2ηλ₁)ᵗ, bₜ = b₀(1 − 2ηλ₂)ᵗ, and the loss of the plane at its projection must equal it; the
grid is the same quadratic evaluated by numpy; a batch-norm network's checkpoint losses come from
``load_state_dict`` + a plain forward; a resumed run must equal an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lossmap import store
from lossmap.directions import Directions
from lossmap.errors import LossmapError
from lossmap.landscape import Interrupted
from lossmap.trajectory import Recorder, read_paths, trajectory_landscape, trajectory_run


# ---- gradient descent on least squares --------------------------------------------------------------


class LeastSquares:
    """y = Xw*; MSE loss (w − w*)ᵀA(w − w*) with A = XᵀX/n; w₀ = w* + a₀e₁ + b₀e₂ for eigenvectors e₁, e₂ of A."""

    def __init__(self, n: int = 64, d: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(n, d))
        self.w_star = rng.normal(size=d)
        self.y = self.X @ self.w_star
        lam, E = np.linalg.eigh(self.X.T @ self.X / n)
        self.lam, self.e = (lam[-1], lam[d // 2]), (E[:, -1], E[:, d // 2])
        self.ab0 = (3.0, -2.0)
        self.w0 = self.w_star + self.ab0[0] * self.e[0] + self.ab0[1] * self.e[1]

    def data(self):
        return torch.from_numpy(self.X), torch.from_numpy(self.y[:, None])

    def model(self, w: np.ndarray | None = None) -> nn.Module:
        net = nn.Linear(self.X.shape[1], 1, bias=False).double()
        with torch.no_grad():
            net.weight.copy_(torch.from_numpy((self.w0 if w is None else w)[None, :]))
        return net

    def descend(self, folder: Path, lr_scale: float, steps: int) -> float:
        """Record plain gradient descent (torch SGD on nn.MSELoss) at every step; returns the learning rate."""
        lr = lr_scale / self.lam[0]
        net, (x, y) = self.model(), self.data()
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        rec = Recorder(folder)
        for step in range(steps + 1):
            rec.save(net, step=step)
            opt.zero_grad()
            nn.MSELoss()(net(x), y).backward()
            opt.step()
        return lr

    def loss_at_step(self, lr: float, t: np.ndarray) -> np.ndarray:
        """The closed form: Σₖ λₖ (cₖ (1 − 2ηλₖ)ᵗ)²."""
        return sum(lam * (c * (1 - 2 * lr * lam) ** t) ** 2 for lam, c in zip(self.lam, self.ab0))

    def loss_at(self, w: np.ndarray) -> np.ndarray:
        """Mean squared error at weights w (rows), by numpy."""
        return ((np.atleast_2d(w) @ self.X.T - self.y) ** 2).mean(axis=1)


@pytest.fixture()
def ls(tmp_path) -> tuple[LeastSquares, float, float]:
    problem = LeastSquares()
    lr_a = problem.descend(tmp_path / "gd-fast", 0.25, 24)
    lr_b = problem.descend(tmp_path / "gd-slow", 0.1, 16)
    return problem, lr_a, lr_b


def test_gradient_descent_on_least_squares_is_planar_and_the_plane_holds_every_checkpoints_loss(tmp_path, ls):
    problem, lr_a, lr_b = ls
    out = tmp_path / "traj.nc"
    ds = trajectory_landscape(problem.model(np.zeros(8)), [tmp_path / "gd-fast", tmp_path / "gd-slow"], problem.data(),
                              points=9, labels=["fast", "slow"], out=out, batch_size=16)
    stored = store.load(out)  # the file, not the returned object, is what users read
    assert store.metric_names(stored) == ["loss"] and list(stored.data_vars) == ["loss"]
    assert [str(v) for v in stored["run_label"].values] == ["fast", "slow"]
    assert float(stored.attrs["trajectory_explained"]) == pytest.approx(1.0, abs=1e-12)
    assert np.abs(stored["pca_share"].values[2:]).max() < 1e-12
    paths = read_paths(stored)
    for p, lr, steps in zip(paths, (lr_a, lr_b), (24, 16)):
        np.testing.assert_array_equal(p.steps, np.arange(steps + 1))
        assert p.residuals.max() < 1e-9  # exactly planar, up to rounding
        truth = problem.loss_at_step(lr, p.steps.astype(float))
        np.testing.assert_allclose(p.checkpoint["loss"], truth, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(p.plane["loss"], p.checkpoint["loss"], rtol=1e-9, atol=1e-15)
    # the final checkpoint of the first run is the origin: coordinates (0, 0)
    np.testing.assert_allclose(paths[0].coords[-1], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stored["checkpoint_distance"].values,
                               np.hypot(stored["checkpoint_x"].values, stored["checkpoint_y"].values), rtol=1e-9)

    # the grid is the quadratic on the plane θ_o + x u₁ + y u₂ (u from the saved directions)
    d = Directions.load(store.directions_path(out))
    u = np.stack([d.tensors[k]["weight"].double().numpy().ravel() for k in range(2)])
    origin = load_file(str(tmp_path / "gd-fast" / "step-000000024.safetensors"))["weight"].double().numpy().ravel()
    X, Y = np.meshgrid(stored["x"].values, stored["y"].values, indexing="ij")
    w = origin + X.reshape(-1, 1) * u[0] + Y.reshape(-1, 1) * u[1]
    np.testing.assert_allclose(stored["loss"].values.ravel(), problem.loss_at(w), rtol=1e-9)
    # default axes cover every checkpoint with the 15 % margin
    xy = np.concatenate([p.coords for p in paths])
    assert stored["x"].values[0] < xy[:, 0].min() and stored["x"].values[-1] > xy[:, 0].max()
    assert stored["y"].values[0] < xy[:, 1].min() and stored["y"].values[-1] > xy[:, 1].max()
    assert stored["x"].size == 9 and stored["y"].size == 9
    np.testing.assert_array_equal(ds["loss"].values, stored["loss"].values)


def test_the_users_model_is_not_changed_and_plane_options_are_refused(tmp_path, ls):
    problem, _, _ = ls
    model = problem.model(np.arange(8.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trajectory_landscape(model, tmp_path / "gd-slow", problem.data(), points=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(LossmapError, match="decided by the trajectory's plane"):
        trajectory_landscape(model, tmp_path / "gd-slow", problem.data(), points=3, seed=3)


def test_checkpoint_metrics_use_the_checkpoints_own_batch_norm_statistics(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (96,), generator=g)
    rec = Recorder(tmp_path / "bn", schedule=[0, 1, 2, 4, 7, 11])
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    for step in range(12):
        rec.save(net, step=step)
        net.train()
        opt.zero_grad()
        F.cross_entropy(net(x[:48]), y[:48]).backward()
        opt.step()
    ds = trajectory_landscape(net, tmp_path / "bn", (x, y), points=3, origin="mean")
    (p,) = read_paths(ds)
    for step, own_loss, own_acc in zip(p.steps, p.checkpoint["loss"], p.checkpoint["accuracy"]):
        probe = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).double()
        probe.load_state_dict(load_file(str(tmp_path / "bn" / f"step-{step:09d}.safetensors")))
        with torch.no_grad():
            out = probe.eval()(x)
        assert own_loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-12)
        assert own_acc == pytest.approx((out.argmax(1) == y).double().mean().item(), abs=1e-12)
    # off the plane and with the origin's statistics, the plane's loss differs from the checkpoint's
    assert np.abs(p.plane["loss"] - p.checkpoint["loss"]).max() > 1e-3


# ---- resuming ---------------------------------------------------------------------------------------------


class Tripwire:
    """A metric (mean output) that raises KeyboardInterrupt at its call number ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.calls = at, 0

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return out.mean()


GRID = dict(x="-4:1:5", y="-3:2:4")  # 20 points; 4 batches of 16 per point


def _run(problem, folder, trip, **kw):
    return trajectory_landscape(problem.model(), folder, problem.data(), **GRID, metrics={"mean_out": trip},
                                batch_size=16, chunk=3, **kw)


def _same(a, b) -> None:
    for name in ("loss", "mean_out"):
        assert np.array_equal(a[name].values, b[name].values) and np.isfinite(a[name].values).all()
    for name in ("checkpoint_metric", "plane_metric", "checkpoint_x", "checkpoint_y", "checkpoint_residual", "step"):
        assert np.array_equal(a[name].values, b[name].values), name


def test_an_interrupted_trajectory_resumes_to_the_uninterrupted_result(tmp_path, ls):
    problem, _, _ = ls
    folder = tmp_path / "gd-slow"
    ref = _run(problem, folder, Tripwire())
    out = tmp_path / "traj.nc"
    with pytest.raises(Interrupted, match=r"9 of 20 points saved"):
        _run(problem, folder, Tripwire(at=1 + 4 * 10 + 2), out=out)
    partial = store.load(out)
    assert store.progress(partial) == (9, 20)
    assert json.loads(partial.attrs["trajectory_runs"]) == [str(folder.resolve())]  # written from the first save on
    with pytest.raises(LossmapError, match="holds no trajectory"):
        read_paths(partial)
    result = trajectory_run(problem.model(), folder, problem.data(), **GRID, metrics={"mean_out": Tripwire()},
                            batch_size=16, chunk=3, out=out)
    assert result.resumed and result.computed == 11
    _same(result.landscape, ref)
    _same(store.load(out), ref)
    again = trajectory_run(problem.model(), folder, problem.data(), **GRID, metrics={"mean_out": Tripwire()},
                           batch_size=16, chunk=3, out=out)
    assert again.computed == 0 and again.resumed  # complete, checkpoints stored: returned as it is
    _same(again.landscape, ref)


def test_an_interruption_while_the_checkpoints_are_evaluated_is_finished_by_a_rerun(tmp_path, ls):
    problem, _, _ = ls
    folder = tmp_path / "gd-slow"
    ref = _run(problem, folder, Tripwire())
    out = tmp_path / "traj.nc"
    with pytest.raises(KeyboardInterrupt):  # probe + 20 points × 4 batches, then 5 batches into the checkpoints
        _run(problem, folder, Tripwire(at=1 + 80 + 5), out=out)
    assert store.is_complete(store.load(out)) and "checkpoint_metric" not in store.load(out).variables
    result = trajectory_run(problem.model(), folder, problem.data(), **GRID, metrics={"mean_out": Tripwire()},
                            batch_size=16, chunk=3, out=out)
    assert result.computed == 0
    _same(store.load(out), ref)


def _nudged(factor: float):
    """trajectory_plane whose directions come out scaled by ``factor`` (as another summation order would round them)."""
    from lossmap.trajectory.pca import trajectory_plane as real

    def plane(*args, **kwargs):
        out = real(*args, **kwargs)
        out.directions.tensors = [{n: t * factor for n, t in d.items()} for d in out.directions.tensors]
        return out

    return plane


def test_a_resume_with_other_runs_or_other_directions_is_refused_with_one_line(tmp_path, ls, monkeypatch):
    from lossmap.trajectory import landscape

    problem, _, _ = ls
    folder = tmp_path / "gd-slow"
    ref = _run(problem, folder, Tripwire())
    out = tmp_path / "traj.nc"
    with pytest.raises(Interrupted):
        _run(problem, folder, Tripwire(at=1 + 4 * 10 + 2), out=out)
    with pytest.raises(LossmapError) as exc:
        _run(problem, tmp_path / "gd-fast", Tripwire(), out=out)
    msg = str(exc.value)
    assert "\n" not in msg and "gd-slow" in msg and "gd-fast" in msg and "--overwrite" in msg

    # directions that really differ (another plane) are refused by the settings, naming the field
    monkeypatch.setattr(landscape, "trajectory_plane", _nudged(1.001))
    with pytest.raises(LossmapError, match="directions_sha256") as exc:
        _run(problem, folder, Tripwire(), out=out)
    assert "\n" not in str(exc.value)
    # recomputed directions that differ from the saved ones by rounding only: the saved ones are kept
    monkeypatch.setattr(landscape, "trajectory_plane", _nudged(1 + 4e-16))
    _same(_run(problem, folder, Tripwire(), out=out), ref)
