"""The objective against PyTorch itself: losses equal PyTorch's own modules on the whole data set, landscapes
equal a float64 loop that calls the loss as a training loop would, and the gradient and Hessian-vector
products equal ``torch.autograd.functional`` on the stacked data, whatever the batching or order."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossmap
from lossmap.directions import random_directions
from lossmap.errors import LossmapError
from lossmap.losses import Metric
from lossmap.objective import Objective


def _regression(n=40, inputs=5, outputs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, inputs, generator=g), torch.randn(n, outputs, generator=g)


def _classification(n=40, inputs=5, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, inputs, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(inputs=5, outputs=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 7), nn.Tanh(), nn.Linear(7, outputs)).to(dtype)


@pytest.mark.parametrize("loss_fn, data, outputs", [
    (nn.CrossEntropyLoss(), _classification(), 3),
    (None, _classification(), 3),  # the default for class targets is that module's value
    (nn.MSELoss(), _regression(), 4),
    (None, _regression(), 4),  # the default for float targets is nn.MSELoss()'s mean over all elements
    (nn.L1Loss(), _regression(), 4),
    ("l1", _regression(), 4),
    (F.mse_loss, _regression(), 4),
    (nn.CrossEntropyLoss(label_smoothing=0.2), _classification(), 3),
])
def test_value_at_theta0_is_pytorchs_own(loss_fn, data, outputs):
    model = _mlp(outputs=outputs)
    x, y = data
    module = {"l1": nn.L1Loss()}.get(loss_fn, loss_fn) or (nn.MSELoss() if y.is_floating_point() else nn.CrossEntropyLoss())
    with torch.no_grad():
        expected = float(module(model(x), y))
    for batch_size in (40, 7):  # one batch, and uneven batches weighted by their size
        obj = Objective(model, (x, y), loss_fn, batch_size=batch_size)
        assert obj.value() == pytest.approx(expected, rel=1e-6)
        ds = lossmap.compute(model, (x, y), [0.0], loss_fn=loss_fn, batch_size=batch_size)
        assert float(ds.loss[0]) == pytest.approx(expected, rel=1e-6)


def test_multi_output_mse_is_not_the_sum_over_outputs():
    """The reported 0.1 bug: nn.Linear(3, 4) gave the per-sample sum of squares (×4) instead of nn.MSELoss()."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(16, 3), torch.randn(16, 4)
    ds = lossmap.compute(model, (x, y), [0.0])
    with torch.no_grad():
        assert float(ds.loss[0]) == pytest.approx(float(nn.MSELoss()(model(x), y)), rel=1e-6)
        assert float(ds.loss[0]) * 4 == pytest.approx(float(((model(x) - y) ** 2).sum(1).mean()), rel=1e-6)
    assert ds.attrs["loss"] == "mse" and "accuracy" not in ds


def _loop_landscape(model, directions, coeffs, x, y, loss_of):
    """Oracle: a float64 copy, parameters set by hand, the whole data in one call of the user's loss."""
    net = copy.deepcopy(model).double()
    origin = {n: p.detach().clone() for n, p in net.named_parameters()}
    out = []
    for c in coeffs:
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(origin[n] + sum(ci * d[n].double() for ci, d in zip(c, directions.tensors)))
            out.append(float(loss_of(net(x.double()), y.double() if y.is_floating_point() else y)))
    return np.array(out)


@pytest.mark.parametrize("engine", ["plain", "fast", "vmap"])
def test_user_loss_and_module_loss_over_a_grid_match_the_float64_loop(engine):
    x, y = _regression(n=30)
    model = _mlp(dtype=torch.float64)
    d = random_directions(model, 2, seed=4, bias="keep")
    coeffs = [(a, b) for a in (-1.0, 0.0, 0.7) for b in (-0.5, 0.5)]

    def huberish(output, target):  # a user loss: any function of (output, target) returning the batch mean
        return torch.log1p((output - target).abs()).mean()

    for loss_fn, oracle in ((huberish, huberish), (nn.MSELoss(), nn.MSELoss())):
        ds = lossmap.compute(model, (x, y), [-1.0, 0.0, 0.7], [-0.5, 0.5], directions=d, loss_fn=loss_fn,
                             batch_size=8, dtype="float64", engine=engine)
        ref = _loop_landscape(model, d, coeffs, x, y, oracle).reshape(3, 2)
        np.testing.assert_allclose(ds.loss.values, ref, rtol=1e-12)


def test_metrics_follow_pytorch_and_declare_their_direction(tmp_path):
    x, y = _classification(n=33)
    model = _mlp(outputs=3)

    def top1_error(output, target):  # per example
        return (output.argmax(1) != target).float()

    metrics = {"accuracy": lossmap.accuracy, "error": top1_error, "neg": Metric(lambda o, t: -o.mean(), higher_is_better=True)}
    ds = lossmap.compute(model, (x, y), [0.0], metrics=metrics, batch_size=10, out=tmp_path / "m.nc")
    with torch.no_grad():
        out = model(x)
    assert float(ds.accuracy[0]) == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert float(ds.error[0]) == pytest.approx(1 - float(ds.accuracy[0]))
    assert float(ds.neg[0]) == pytest.approx(-float(out.mean()), rel=1e-6)
    assert lossmap.store.meta(lossmap.load(tmp_path / "m.nc"))["higher_is_better"] == {
        "loss": False, "accuracy": True, "error": False, "neg": True}


class _HFStyle(nn.Module):
    """A model whose output is an object with ``.logits`` (as Hugging Face models return)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        class Output:
            def __init__(self, logits):
                self.logits, self.loss = logits, None

        return Output(self.fc(x))


@pytest.mark.parametrize("engine", ["plain", "fast", "vmap"])
def test_output_transform_picks_the_tensor_from_an_object_a_dict_or_a_tuple(engine):
    x, y = _classification()
    torch.manual_seed(0)
    model = _HFStyle()
    with torch.no_grad():
        expected = float(F.cross_entropy(model.fc(x), y))
    ds = lossmap.compute(model, (x, y), [0.0, 1.0], output_transform="logits", engine=engine)
    assert float(ds.loss[0]) == pytest.approx(expected, rel=1e-6)
    as_dict = nn.Sequential(model.fc, _Wrap(lambda t: {"logits": t}))
    as_tuple = nn.Sequential(model.fc, _Wrap(lambda t: (t, t.sum())))
    for net, spec in ((as_dict, "logits"), (as_tuple, 0), (as_tuple, lambda out: out[0])):
        ds = lossmap.compute(net, (x, y), [0.0], output_transform=spec, engine=engine)
        assert float(ds.loss[0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(LossmapError, match=r"returns an object of type Output \(it has \.logits, \.loss\).*output_transform='logits'"):
        lossmap.compute(model, (x, y), [0.0])


class _Wrap(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, t):
        return self.fn(t)


# -------------------------------------------------------------------------------- gradient and HVP


def _flat_oracle(model, x, y, loss):
    """The mean loss as a function of one flat float64 vector (the stacked data, one call): torch.autograd's."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(flat):
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return loss(torch.func.functional_call(model, params, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, theta, names, sizes, shapes


def _flat(d, names):
    return torch.cat([d[n].reshape(-1) for n in names])


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_gradient_and_hvp_equal_autograd_functional_on_a_tiny_net(kind):
    x, y = _classification(n=26) if kind == "classification" else _regression(n=26)
    x = x.double()
    y = y.double() if y.is_floating_point() else y
    model = _mlp(outputs=3 if kind == "classification" else 4, dtype=torch.float64)
    loss = F.cross_entropy if kind == "classification" else F.mse_loss
    f, theta, names, sizes, shapes = _flat_oracle(model, x, y, loss)
    grad_ref = torch.autograd.functional.jacobian(f, theta)
    hess_ref = torch.autograd.functional.hessian(f, theta)
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    v_dict = {n: t.reshape(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)}
    for batch_size, order in ((26, None), (5, None), (4, torch.randperm(26, generator=torch.Generator().manual_seed(2)))):
        xs, ys = (x, y) if order is None else (x[order], y[order])
        obj = Objective(model, (xs, ys), batch_size=batch_size)
        value, grad = obj.value_and_grad()
        assert value == pytest.approx(float(f(theta)), rel=1e-12)
        torch.testing.assert_close(_flat(grad, names), grad_ref, rtol=1e-10, atol=1e-12)
        for method in ("forward-over-reverse", "double-backward"):
            hv = obj.hvp(v_dict, method=method)
            torch.testing.assert_close(_flat(hv, names), hess_ref @ v, rtol=1e-10, atol=1e-12)


def test_hvp_at_another_point_and_the_model_is_left_alone():
    x, y = _classification(n=20)
    model = _mlp(outputs=3, dtype=torch.float64)
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    obj = Objective(model, (x.double(), y), batch_size=6)
    theta = {n: t + 0.1 for n, t in obj.theta0.items()}
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(0.1)
    f, flat, names, sizes, shapes = _flat_oracle(moved, x.double(), y, F.cross_entropy)
    v = {n: torch.ones_like(t) for n, t in obj.theta0.items()}
    hv = obj.hvp(v, theta)
    torch.testing.assert_close(_flat(hv, names), torch.autograd.functional.hessian(f, flat) @ _flat(v, names),
                               rtol=1e-10, atol=1e-12)
    assert obj.value(theta) == pytest.approx(float(f(flat)), rel=1e-12)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items()) and model.training


def test_per_example_losses_are_the_losses_of_each_sample():
    x, y = _regression(n=17)
    model = _mlp()
    obj = Objective(model, (x, y), batch_size=5)
    per = obj.per_example()
    with torch.no_grad():
        ref = ((model(x) - y) ** 2).mean(1).double()
    torch.testing.assert_close(per, ref, rtol=1e-6, atol=1e-9)
    assert per.mean().item() == pytest.approx(obj.value(), rel=1e-9)


def test_objective_refuses_what_it_cannot_compute():
    x, y = _regression(n=8)
    with pytest.raises(LossmapError, match="loss 'hinge' is unknown: choose one of cross-entropy, nll, mse, l1"):
        Objective(_mlp(), (x, y), "hinge")
    obj = Objective(_mlp(), (x, y), lambda o, t: (o - t).abs().mean())
    with pytest.raises(LossmapError, match="no per-example form"):
        obj.per_example()
    with pytest.raises(LossmapError, match="theta lacks tensors"):
        obj.value({"0.weight": obj.theta0["0.weight"]})
