"""The engine against independent oracles: a plain float64 loop, a closed-form quadratic landscape,
the scale invariance filter normalization exists for, and the exact models of an interpolation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossmap
from lossmap.data import digits
from lossmap.directions import random_directions, target_directions
from lossmap.errors import LossmapError
from lossmap.models import MnistCNN


@pytest.fixture(scope="module")
def real_samples():
    ds = digits("test")
    return ds.tensors[0][:200], ds.tensors[1][:200]


@pytest.fixture(scope="module")
def seed_net():
    torch.manual_seed(1)
    return MnistCNN()


def naive_landscape(model, directions, xs, ys, x, y, bn_recompute=False, batch=50):
    """Reference: a float64 copy, parameters set one by one, a loop over batches, exact cross-entropy."""
    net = copy.deepcopy(model).double()
    origin = {n: p.detach().clone() for n, p in net.named_parameters()}
    dirs = [{n: t.double() for n, t in d.items()} for d in directions.tensors]
    grid = [(a,) for a in xs] if ys is None else [(a, b) for a in xs for b in ys]
    out = []
    for coeffs in grid:
        with torch.no_grad():
            for n, p in net.named_parameters():
                value = origin[n].clone()
                for c, d in zip(coeffs, dirs):
                    value = value + c * d[n]
                p.copy_(value)
        if bn_recompute:
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d):
                    m.reset_running_stats()
                    m.momentum = None
            net.train()
            with torch.no_grad():
                for i in range(0, len(x), batch):
                    net(x[i : i + batch].double())
        net.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x), batch):
                o = net(x[i : i + batch].double())
                t = y[i : i + batch]
                loss_sum += float((torch.logsumexp(o, 1) - o.gather(1, t[:, None]).squeeze(1)).sum())
                correct += int((o.argmax(1) == t).sum())
        out.append((loss_sum / len(x), correct / len(x)))
    arr = np.array(out)
    shape = (len(xs),) if ys is None else (len(xs), len(ys))
    return arr[:, 0].reshape(shape), arr[:, 1].reshape(shape)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 1e-5)])
def test_engine_matches_float64_loop_on_seed_net(seed_net, real_samples, dtype, rtol):
    x, y = real_samples
    xs, ys = [-1.0, -0.25, 0.5, 1.0], [-0.6, 0.0, 0.7]
    d2 = random_directions(seed_net, 2, seed=3)
    ds = lossmap.compute(seed_net, (x, y), xs, ys, directions=d2, dtype=dtype, batch_size=64)
    ref_loss, ref_acc = naive_landscape(seed_net, d2, xs, ys, x, y)
    assert ds.loss.dims == ("x", "y") and ds.loss.shape == (4, 3)
    np.testing.assert_allclose(ds.loss.values, ref_loss, rtol=rtol, atol=0)
    # float32 may flip an argmax on a near tie: at most one sample per point
    np.testing.assert_allclose(ds.accuracy.values, ref_acc, atol=0 if dtype == "float64" else 1.01 / len(y))
    assert len(np.unique(np.round(ref_loss, 6))) == ref_loss.size  # the grid is not degenerate

    d1 = random_directions(seed_net, 1, seed=4)
    line = lossmap.compute(seed_net, (x, y), "-1:1:5", directions=d1, dtype=dtype, batch_size=64)
    ref_line, _ = naive_landscape(seed_net, d1, np.linspace(-1, 1, 5), None, x, y)
    assert line.loss.dims == ("x",)
    np.testing.assert_allclose(line.loss.values, ref_line, rtol=rtol, atol=0)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return F.log_softmax(self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1)), 1)


@pytest.mark.parametrize("bn", ["frozen", "recompute"])
def test_batchnorm_policies_match_loop(real_samples, bn):
    torch.manual_seed(0)
    net = BNNet()
    net.train()
    with torch.no_grad():  # give the running statistics non-trivial values
        net(real_samples[0][:64])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = real_samples
    d = random_directions(net, 2, seed=5, bias="filter")
    ds = lossmap.compute(net, (x, y), [-0.5, 0.5], [-1.0, 0.0, 1.0], directions=d, bn=bn, dtype="float64", batch_size=40)
    ref, _ = naive_landscape(net, d, [-0.5, 0.5], [-1.0, 0.0, 1.0], x, y, bn_recompute=bn == "recompute", batch=40)
    np.testing.assert_allclose(ds.loss.values, ref, rtol=1e-9)
    assert ds.attrs["bn_policy"] == bn
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training


def test_quadratic_model_matches_closed_form():
    """Linear regression with MSE is a quadratic in (W, b): L(α, β) = ‖r0 + α a + β b‖² / N."""
    rng = np.random.default_rng(0)
    n, m = 300, 6
    X = rng.normal(size=(n, m))
    Y = rng.normal(size=(n, 1))
    model = nn.Linear(m, 1).double()
    d = random_directions(model, 2, seed=11, normalization="layer", bias="keep")
    xs, ys = np.linspace(-2, 2, 7), np.linspace(-1, 3, 5)
    ds = lossmap.compute(model, (torch.from_numpy(X), torch.from_numpy(Y)), xs, ys, directions=d, batch_size=64)
    assert ds.attrs["metrics"] == ["loss"]  # float targets: MSE, no accuracy

    Xa = np.hstack([X, np.ones((n, 1))])
    w0 = np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])
    u = [np.concatenate([t["weight"].double().numpy().ravel(), t["bias"].double().numpy()]) for t in d.tensors]
    r0, a, b = Xa @ w0 - Y[:, 0], Xa @ u[0], Xa @ u[1]
    A, B = np.meshgrid(xs, ys, indexing="ij")
    closed = (r0 @ r0 + 2 * A * (r0 @ a) + 2 * B * (r0 @ b) + A**2 * (a @ a) + 2 * A * B * (a @ b) + B**2 * (b @ b)) / n
    np.testing.assert_allclose(ds.loss.values, closed, rtol=1e-10)
    assert abs(u[1][-1]) > 0  # bias policy 'keep' moved the bias


def _rescaled_copy(net: MnistCNN, c: float) -> MnistCNN:
    """conv2 (weight, bias) × c and fc1.weight / c: ReLU and max-pool commute with c > 0, same function."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.conv2.weight.mul_(c)
        other.conv2.bias.mul_(c)
        other.fc1.weight.div_(c)
    return other


def test_filter_normalization_removes_scale_symmetry(seed_net, real_samples):
    x, y = real_samples[0][:64], real_samples[1][:64]
    other = _rescaled_copy(seed_net, 10.0)
    with torch.no_grad():  # the same function (eval mode: no dropout)
        np.testing.assert_allclose(other.eval()(x).numpy(), copy.deepcopy(seed_net).eval()(x).numpy(), rtol=1e-4, atol=1e-5)
    grid = dict(x="-1:1:3", y="-1:1:3", seed=2, dtype="float64")
    a = lossmap.compute(seed_net, (x, y), **grid)
    b = lossmap.compute(other, (x, y), **grid)
    np.testing.assert_allclose(b.loss.values, a.loss.values, rtol=1e-5)
    a_raw = lossmap.compute(seed_net, (x, y), normalization="none", **grid)
    b_raw = lossmap.compute(other, (x, y), normalization="none", **grid)
    assert np.max(np.abs(b_raw.loss.values - a_raw.loss.values) / a_raw.loss.values) > 0.01


def _loss_of(model, x, y):
    with torch.no_grad():
        o = model.double().eval()(x.double())
    return float((torch.logsumexp(o, 1) - o.gather(1, y[:, None]).squeeze(1)).mean())


def test_plane_through_three_models_hits_each_model(real_samples):
    x, y = real_samples[0][:80], real_samples[1][:80]
    torch.manual_seed(7)
    a, b, c = MnistCNN().double(), MnistCNN().double(), MnistCNN().double()
    d = target_directions(a, b, c)
    (tc, sc) = d.markers["C"]
    assert d.markers["A"] == [0.0, 0.0] and d.markers["B"] == [1.0, 0.0]
    assert abs(d.cosine()) < 1e-10
    n0, n1 = d.norms()
    assert n1 == pytest.approx(n0, rel=1e-12)
    assert sc > 0
    ds = lossmap.compute(a, (x, y), sorted([0.0, 1.0, tc]), [0.0, sc], directions=d, dtype="float64")
    assert ds.loss.sel(x=0.0, y=0.0).item() == pytest.approx(_loss_of(copy.deepcopy(a), x, y), rel=1e-9)
    assert ds.loss.sel(x=1.0, y=0.0).item() == pytest.approx(_loss_of(copy.deepcopy(b), x, y), rel=1e-9)
    assert ds.loss.sel(x=tc, y=sc).item() == pytest.approx(_loss_of(copy.deepcopy(c), x, y), rel=1e-9)
    line = lossmap.compute(a, (x, y), "-0.5:1.5:5", directions=target_directions(a, b), dtype="float64")
    assert line.loss.sel(x=1.0).item() == pytest.approx(_loss_of(copy.deepcopy(b), x, y), rel=1e-9)
    assert lossmap.store.meta(line)["markers"] == {"A": [0.0], "B": [1.0]}


def test_target_directions_require_origin_model(real_samples):
    a, b = MnistCNN(), MnistCNN()
    with pytest.raises(LossmapError, match="origin model A"):
        lossmap.compute(b, real_samples, "0:1:2", directions=target_directions(a, b))


class _Boom(Exception):
    pass


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def _assert_same(model, snap):
    state, modes, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
        assert v.dtype == state[k].dtype
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.mark.parametrize("dtype", [None, "float64"])
@pytest.mark.parametrize("raise_what", [None, ValueError, KeyboardInterrupt])
def test_model_comes_back_unchanged(real_samples, raise_what, dtype):
    torch.manual_seed(3)
    net = BNNet()
    net.train()
    net.fc.eval()
    net.conv.bias.requires_grad_(False)
    snap = _snapshot(net)
    calls = {"n": 0}

    def metric(out, target):
        calls["n"] += 1
        if raise_what is not None and calls["n"] == 3:
            raise raise_what("from inside a metric")
        return out.new_tensor(1.0)

    kwargs = dict(metrics={"one": metric}, bn="recompute", dtype=dtype, batch_size=32)
    if raise_what is None:
        ds = lossmap.compute(net, real_samples, "-1:1:3", "-1:1:2", **kwargs)
        assert np.all(ds.one.values == 1.0)
    elif raise_what is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            lossmap.compute(net, real_samples, "-1:1:3", "-1:1:2", **kwargs)
    else:  # the user's error, told in one line, with the original chained
        with pytest.raises(LossmapError, match="the metric 'one' .* failed: ValueError: from inside a metric") as info:
            lossmap.compute(net, real_samples, "-1:1:3", "-1:1:2", **kwargs)
        assert isinstance(info.value.__cause__, ValueError)
    _assert_same(net, snap)


def test_non_finite_loss_is_stored_not_raised():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    ds = lossmap.compute(model, (x, y), [0.0, 1e30], normalization="none", dtype="float32")
    assert np.isfinite(ds.loss.values[0])
    assert not np.isfinite(ds.loss.values[1])


def test_bad_inputs_raise_lossmap_error(real_samples):
    net = MnistCNN()
    with pytest.raises(LossmapError, match="malformed"):
        lossmap.compute(net, real_samples, "-1:1")
    with pytest.raises(LossmapError, match="no samples"):
        lossmap.compute(net, (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), "-1:1:3")
    with pytest.raises(LossmapError, match="do not match the model"):
        lossmap.compute(nn.Linear(3, 2), (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), "-1:1:3",
                        directions=random_directions(nn.Linear(4, 2), 1))
    with pytest.raises(LossmapError, match="needs 2 directions"):
        lossmap.compute(net, real_samples, "-1:1:3", "-1:1:3", directions=random_directions(net, 1))
    bad = MnistCNN()
    with torch.no_grad():
        bad.fc2.weight[0, 0] = float("nan")
    with pytest.raises(LossmapError, match="non-finite.*fc2.weight"):
        lossmap.compute(bad, real_samples, "-1:1:3")
    with pytest.raises(LossmapError, match="batch-norm policy 'sometimes'"):
        lossmap.compute(net, real_samples, "-1:1:3", bn="sometimes")
    with pytest.raises(LossmapError, match="tensor filter"):
        lossmap.compute(net, real_samples, "-1:1:3", tensor_filter="nothing.*")


def test_dict_batches_user_loss_and_sample_limit(real_samples):
    x, y = real_samples
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    batches = [{"image": x[i : i + 50], "label": y[i : i + 50]} for i in range(0, len(x), 50)]

    def loss_fn(out, target):
        return F.cross_entropy(out, target)

    d = random_directions(net, 1, seed=0)
    a = lossmap.compute(net, batches, "-1:1:3", directions=d, loss_fn=loss_fn, samples=120, dtype="float64")
    b = lossmap.compute(net, (x[:120], y[:120]), "-1:1:3", directions=d, dtype="float64")
    assert a.attrs["samples"] == 120
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-12)
    np.testing.assert_allclose(a.accuracy.values, b.accuracy.values, rtol=0)


def test_tensor_filter_and_buffers():
    net = BNNet()
    d = random_directions(net, 1, include_buffers=True, tensor_filter="bn.*")
    assert set(d.names) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}
    d = random_directions(net, 1, tensor_filter="fc.*,conv.weight")
    assert d.names == ["conv.weight", "fc.weight", "fc.bias"]


def test_non_finite_buffer_is_refused_when_directions_move_buffers(real_samples):
    net = BNNet()
    d = random_directions(net, 1, include_buffers=True)
    with torch.no_grad():
        net.bn.running_var[0] = float("inf")
    with pytest.raises(LossmapError, match="non-finite.*bn.running_var"):
        lossmap.compute(net, real_samples, "-1:1:3", directions=d)
