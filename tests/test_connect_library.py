"""lossmap.connect.connect() and the path search, against hand-made oracles: losses computed directly with
torch, batch-norm statistics of the first data set re-estimated by hand, a planted permutation with
batch-norm buffers, and a path function whose peak is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossmap.connect import barrier_table, connect, line_grid, save_connection, search_path
from lossmap.connect.files import load_result
from lossmap.errors import LossmapError


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


UNITS = [("fc1.weight", 0), ("fc1.bias", 0), ("bn.weight", 0), ("bn.bias", 0), ("bn.running_mean", 0),
         ("bn.running_var", 0), ("fc2.weight", 1)]


def _random_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in BNNet().state_dict().items():
        if v.is_floating_point():
            r = torch.randn(v.shape, generator=g)
            out[k] = r.abs() + 0.5 if k.endswith("running_var") else r
        else:
            out[k] = v
    out["fc2.weight"] = out["fc2.weight"] * 4
    return out


def _data(seed: int, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 4, generator=g) + shift
    return x, (x[:, 0] + x[:, 1] > 2 * shift).long() + (x[:, 2] > shift).long()


def _loss(model, state, x, y) -> float:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(F.cross_entropy(torch.func.functional_call(model, state, (x,)), y))
    finally:
        model.train(was)


def test_search_path_never_evaluates_an_alpha_twice_and_finds_a_narrow_peak():
    seen = []

    def evaluate(alphas):
        seen.extend(alphas.tolist())
        bump = np.exp(-(((alphas - 0.4321) / 0.01) ** 2))
        return np.stack([1 + bump, 0.5 - alphas * (1 - alphas)], axis=1)

    alphas, values = search_path(evaluate, line_grid(25), 10, 2)
    assert len(seen) == len(set(seen)) == alphas.size
    assert np.all(np.diff(alphas) > 0)
    assert values[:, 0].max() == pytest.approx(2.0, abs=1e-5)  # the grid alone sees at most 1.2
    assert alphas[np.argmax(values[:, 0])] == pytest.approx(0.4321, abs=1e-4)
    grid_only, _ = search_path(evaluate, line_grid(5), 0, 2)
    assert grid_only.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("alphas", [1, 0, [0.2, 1.0], [0.0, 1.5], [0.5], "many"])
def test_bad_grids_are_refused(alphas):
    with pytest.raises(LossmapError) as err:
        line_grid(alphas)
    assert "\n" not in str(err.value)


def test_planted_permutation_with_batch_norm_buffers(tmp_path):
    model = BNNet()
    sa = _random_state(1)
    perm = torch.as_tensor(np.random.default_rng(2).permutation(8))
    sb = dict(sa)
    for name, axis in UNITS:
        sb[name] = sa[name].index_select(axis, perm)
    x = _data(3)[0]
    with torch.no_grad():  # labels that A gets right: a mixture of permuted units is visibly worse
        data = (x, torch.func.functional_call(model.eval(), sa, (x,)).argmax(1))
    res = connect(model, sa, sb, {"train": data}, alphas=5, refine=2, align="weights")
    ds = res.dataset
    assert np.all(ds["barrier"].sel(path="aligned").values == 0.0)
    assert float(ds["barrier"].sel(path="unaligned", data="train", quantity="loss", definition="frankle")) > 0.1
    assert all(torch.equal(res.aligned.state[k], sa[k]) for k in sa)
    # the file's values at α = ½ of the unaligned path: the running statistics move with the weights
    mid = {k: 0.5 * (sa[k] + sb[k]) if sa[k].is_floating_point() else sa[k] for k in sa}
    assert float(ds["loss"].sel(path="unaligned", data="train", alpha=0.5)) == pytest.approx(_loss(model, mid, *data), rel=1e-5)
    written = save_connection(res, tmp_path / "ab.nc")
    assert [p.name for p in written] == ["ab.nc", "ab.aligned.safetensors", "ab.spec.json"]
    back = load_result(tmp_path / "ab.nc", "lossmap.connect")
    np.testing.assert_array_equal(back["barrier"].values, ds["barrier"].values)
    table = barrier_table(back)
    assert "Frankle" in table and "Entezari" in table and "aligned" in table
    with pytest.raises(LossmapError):
        load_result(tmp_path / "ab.nc", "lossmap.curve")


def test_model_itself_as_a_is_measured_and_left_unchanged():
    model = BNNet()
    model.load_state_dict(_random_state(4))
    model.train()
    model.fc1.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data(5)
    res = connect(model, model, _random_state(6), data, alphas=3, refine=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and not model.fc1.bias.requires_grad and model.fc2.weight.requires_grad
    value_a = float(res.dataset["value_a"].sel(path="unaligned", data="data", quantity="loss"))
    assert value_a == pytest.approx(_loss(model, before, *data), rel=1e-6)


def test_recomputed_statistics_come_from_the_first_data_set():
    model = BNNet()
    sa, sb = _random_state(7), _random_state(8)
    train, test = _data(9, shift=2.0), _data(10)
    res = connect(model, sa, sb, {"train": train, "test": test}, alphas=3, refine=0, bn="recompute", dtype=torch.float64)
    assert res.dataset.attrs["bn_data"] == "train"

    def by_hand(state, x, y):  # statistics of the (one-batch) training set, then evaluation mode
        s = {k: v.double() for k, v in state.items()}
        h_train = train[0].double() @ s["fc1.weight"].T + s["fc1.bias"]
        mean, var = h_train.mean(0), h_train.var(0, unbiased=True)
        h = x.double() @ s["fc1.weight"].T + s["fc1.bias"]
        z = torch.relu((h - mean) / torch.sqrt(var + 1e-5) * s["bn.weight"] + s["bn.bias"])
        return float(F.cross_entropy(z @ s["fc2.weight"].T + s["fc2.bias"], y))

    mid = {k: 0.5 * (sa[k].double() + sb[k].double()) for k in sa if sa[k].is_floating_point()}
    for name, (x, y) in (("train", train), ("test", test)):
        got = float(res.dataset["loss"].sel(path="unaligned", data=name, alpha=0.5))
        assert got == pytest.approx(by_hand(mid, x, y), rel=1e-9)


def test_bad_arguments_are_refused():
    model = BNNet()
    s = _random_state(11)
    for kwargs in (dict(align="activations"), dict(alphas=1), dict(refine=-1)):
        with pytest.raises(LossmapError):
            connect(model, s, _random_state(12), _data(0), **kwargs)
    with pytest.raises(LossmapError):
        connect(model, s, {k: v for k, v in s.items() if k != "fc2.bias"}, _data(0))
    with pytest.raises(LossmapError):
        connect(model, s, _random_state(12), {}, alphas=3)
