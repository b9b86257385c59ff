"""Per-point standard errors in a landscape against a plain float64 loop over per-example losses, on every
engine; paired errors against unpaired ones on a trained model; what a metric without per-example values
gets; the error variables are coordinates, so the metrics stay what they were."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossmap
from lossmap import store
from lossmap.data import digits
from lossmap.directions import random_directions
from lossmap.errors import LossmapError
from lossmap.uncertainty.pointwise import error_coords, noise_mask, population_size


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 10))


@pytest.fixture(scope="module")
def trained():
    """An MLP trained on the digits' training split (a real model on real data)."""
    model = _mlp()
    x, y = digits("train").tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_set():
    return digits("test").tensors  # 360 images


def per_example(model, directions, coeffs, x, y):
    """Oracle: a float64 copy, parameters set by hand, cross-entropy and correctness of every example, one by one
    batch of the whole set (no lossmap code)."""
    net = copy.deepcopy(model).double()
    origin = {n: p.detach().clone() for n, p in net.named_parameters()}
    losses, correct = [], []
    for c in coeffs:
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(origin[n] + sum(ci * d[n].double() for ci, d in zip(c, directions.tensors)))
            out = net(x.double())
        losses.append((torch.logsumexp(out, 1) - out.gather(1, y[:, None]).squeeze(1)).numpy())
        correct.append((out.argmax(1) == y).double().numpy())
    return np.array(losses), np.array(correct)


def se(values, axis=-1):
    return values.std(axis=axis, ddof=1) / math.sqrt(values.shape[axis])


@pytest.mark.parametrize("engine", ["plain", "fast", "vmap"])
def test_errors_equal_a_plain_loop_over_per_example_values(trained, test_set, engine):
    x, y = test_set
    xs, ys = [-1.0, 0.0, 0.5], [-0.5, 0.0, 1.0]
    d = random_directions(trained, 2, seed=4)
    S, N = 200, len(y)
    ds = lossmap.compute(trained, (x, y), xs, ys, directions=d, dtype="float64", samples=S, batch_size=48, engine=engine)
    coeffs = [(a, b) for a in xs for b in ys]
    L, A = per_example(trained, d, coeffs, x[:S], y[:S])
    L0, A0 = per_example(trained, d, [(0.0, 0.0)], x[:S], y[:S])
    fpc = math.sqrt(1 - S / N)
    for name, v, v0 in (("loss", L, L0), ("accuracy", A, A0)):
        got = lambda k: ds[k].values.reshape(-1)  # noqa: E731
        np.testing.assert_allclose(got(name), v.mean(1), rtol=1e-10)
        np.testing.assert_allclose(got(f"{name}_se"), se(v), rtol=1e-9)
        np.testing.assert_allclose(got(f"{name}_se_set"), se(v) * fpc, rtol=1e-9)
        np.testing.assert_allclose(got(f"{name}_paired_se"), se(v - v0), rtol=1e-8, atol=1e-15)
    assert ds.attrs["population"] == N
    centre = ds.sel(x=0.0, y=0.0)
    assert float(centre.loss_paired_se) == 0.0 and float(centre.accuracy_paired_se) == 0.0
    # the errors are coordinates: the metrics are what they were
    assert list(ds.data_vars) == ["loss", "accuracy"] and store.metric_names(ds) == ["loss", "accuracy"]


def test_a_full_pass_stores_no_set_error_and_the_set_error_of_a_full_pass_is_zero(trained, test_set):
    x, y = test_set
    ds = lossmap.compute(trained, (x, y), "-1:1:3", seed=0, batch_size=64)
    assert "loss_se" in ds.coords and "loss_se_set" not in ds.coords  # the whole set was read
    assert ds.attrs["population"] == len(y)
    # where n = N the error w.r.t. the set is exactly 0, whatever the spread
    rows = np.array([[1.0, 0.3, 0.2, 360.0], [1.0, 0.3, 0.2, 90.0]])
    out = error_coords(rows, ["loss"], (2,), ("x",), per_example=[True], population=360, evaluated=360, precision=True)
    assert out["loss_se_set"][1].tolist() == [0.0, 0.3 * math.sqrt(1 - 90 / 360)]


def test_paired_error_is_far_below_the_unpaired_one_near_a_trained_model(trained, test_set):
    x, y = test_set
    # within 10 % of the weights' norms (filter normalization) the losses of an example move together
    ds = lossmap.compute(trained, (x, y), "-0.1:0.1:5", "-0.1:0.1:5", seed=1, batch_size=120)
    off = (np.abs(ds.x) + np.abs(ds.y)) > 0
    ratio = (ds.loss_paired_se / ds.loss_se).where(off).values
    ratio = ratio[np.isfinite(ratio)]
    assert ratio.size == 24 and ratio.max() < 0.6 and np.median(ratio) < 0.3
    # and it is what masks the noise: the centre's neighbours are within two paired errors or not, by the data
    mask = noise_mask(ds)
    assert mask[2, 2] and mask.shape == (5, 5)
    change = np.abs(ds.loss.values - float(ds.loss.sel(x=0.0, y=0.0)))
    assert np.array_equal(mask, change <= 2 * ds.loss_paired_se.values)


def test_batch_means_get_no_errors_and_a_precision_needs_per_example_losses(trained, test_set):
    x, y = test_set
    metrics = {"accuracy": lossmap.accuracy, "mean_logit": lambda out, t: out.mean()}
    mean_loss = lambda out, t: F.cross_entropy(out, t) + 0.0  # noqa: E731 - a loss without a per-example form
    ds = lossmap.compute(trained, (x, y), "-1:1:3", seed=0, metrics=metrics, loss_fn=mean_loss, batch_size=100)
    assert "accuracy_se" in ds.coords and "mean_logit_se" not in ds.coords and "loss_se" not in ds.coords
    ref = lossmap.compute(trained, (x, y), "-1:1:3", seed=0, batch_size=100)
    np.testing.assert_allclose(ds.loss.values, ref.loss.values, rtol=1e-6)  # its mean is still exact
    with pytest.raises(LossmapError, match="needs per-example losses"):
        lossmap.compute(trained, (x, y), "-1:1:3", seed=0, loss_fn=mean_loss, precision=0.05)


def test_population_is_the_data_sets_size(tmp_path):
    x, y = torch.zeros(50, 2), torch.zeros(50)
    ds = torch.utils.data.TensorDataset(x, y)
    assert population_size((x, y), samples=None, evaluated=50, batch_size=8) == 50
    assert population_size((x, y), samples=20, evaluated=20, batch_size=8) == 50
    assert population_size(ds, samples=20, evaluated=20, batch_size=8) == 50
    assert population_size(torch.utils.data.DataLoader(ds, batch_size=7), samples=20, evaluated=20, batch_size=8) == 50
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 50, 8)]  # a list of batches: counted, not len()
    assert population_size(batches, samples=20, evaluated=20, batch_size=8) == 50
    assert population_size(iter(batches), samples=20, evaluated=20, batch_size=8) is None
    assert population_size((x, y), samples=80, evaluated=50, batch_size=8) == 50  # fewer than asked: all of it


def test_precision_options_refuse_bad_values(trained, test_set):
    x, y = test_set
    for kw, what in ((dict(precision=0.1, precision_abs=0.1), "not both"), (dict(precision=-1.0), "positive"),
                     (dict(precision_abs=0.1, precision_min_batches=0), "precision_min_batches")):
        with pytest.raises(LossmapError, match=what):
            lossmap.compute(trained, (x, y), "-1:1:3", seed=0, **kw)
