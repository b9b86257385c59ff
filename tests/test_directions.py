"""Direction normalizations and bias policies, checked slice by slice with plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lossmap.directions import Directions, normalize, random_directions, target_directions
from lossmap.errors import LossmapError
from lossmap.models import MnistCNN


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return MnistCNN()


def _fro(t):
    return math.sqrt(float((t.double() ** 2).sum()))


def test_filter_normalization_per_slice(net):
    d = random_directions(net, 2, seed=1)
    params = dict(net.named_parameters())
    for direction in d.tensors:
        for name, t in direction.items():
            w = params[name].detach()
            if w.dim() <= 1:
                assert torch.count_nonzero(t) == 0, name  # 'zero' policy: biases do not move
            else:
                for i in range(w.shape[0]):
                    assert _fro(t[i]) == pytest.approx(_fro(w[i]), rel=1e-5), (name, i)
    assert d.kind == "random" and d.markers == {"θ*": [0.0, 0.0]}
    assert abs(d.cosine()) < 0.01  # two Gaussian vectors in 1.2M dimensions


def test_same_seed_same_directions_other_seed_different(net):
    a, b, c = (random_directions(net, 1, seed=s).tensors[0] for s in (5, 5, 6))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_layer_model_none_and_bias_policies():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4)
    origin = {n: p.detach() for n, p in lin.named_parameters()}
    g = torch.Generator().manual_seed(0)
    raw = {n: torch.randn(p.shape, generator=g) for n, p in origin.items()}

    layer = normalize(raw, origin, "layer", "filter")
    assert _fro(layer["weight"]) == pytest.approx(_fro(origin["weight"]), rel=1e-6)
    assert _fro(layer["bias"]) == pytest.approx(_fro(origin["bias"]), rel=1e-6)

    model = normalize(raw, origin, "model", "keep")
    total_d = math.sqrt(sum(_fro(t) ** 2 for t in model.values()))
    total_w = math.sqrt(sum(_fro(t) ** 2 for t in origin.values()))
    assert total_d == pytest.approx(total_w, rel=1e-6)
    ratio = model["weight"] / raw["weight"]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one scale for the whole vector

    none = normalize(raw, origin, "none", "keep")
    assert all(torch.equal(none[n], raw[n]) for n in raw)
    zero = normalize(raw, origin, "none", "zero")
    assert torch.count_nonzero(zero["bias"]) == 0 and torch.equal(zero["weight"], raw["weight"])
    keep = normalize(raw, origin, "filter", "keep")
    assert torch.equal(keep["bias"], raw["bias"])
    for i in range(4):
        assert _fro(keep["weight"][i]) == pytest.approx(_fro(origin["weight"][i]), rel=1e-6)

    with pytest.raises(LossmapError, match="normalization 'rows'"):
        normalize(raw, origin, "rows")
    with pytest.raises(LossmapError, match="bias policy 'skip'"):
        normalize(raw, origin, "filter", "skip")


def test_orthogonalize_gives_zero_cosine(net):
    d = random_directions(net, 2, seed=3, orthogonalize=True, bias="filter")
    assert abs(d.cosine()) < 1e-7
    plain = random_directions(net, 2, seed=3, bias="filter")
    assert plain.norms()[1] == pytest.approx(d.norms()[1], rel=1e-6)
    assert d.orthogonalized and d.metadata()["orthogonalized"] is True


def test_target_line_is_b_minus_a():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    d = target_directions(a, b)
    assert torch.equal(d.tensors[0]["weight"], b.weight.detach() - a.weight.detach())
    assert d.markers == {"A": [0.0], "B": [1.0]}
    with pytest.raises(LossmapError, match="identical"):
        target_directions(a, a)
    with pytest.raises(LossmapError, match="architecture"):
        target_directions(a, nn.Linear(4, 2))
    with pytest.raises(LossmapError, match="one line"):
        c = nn.Linear(3, 2)
        with torch.no_grad():
            for pc, pa, pb in zip(c.parameters(), a.parameters(), b.parameters()):
                pc.copy_(pa + 2 * (pb - pa))
        target_directions(a, b, c)


def test_save_load_round_trip(tmp_path, net):
    d = random_directions(net, 2, seed=9, normalization="layer", bias="filter", orthogonalize=True)
    path = d.save(tmp_path / "run.directions.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
    assert keys == {f"d{i}.{n}" for i in range(2) for n, _ in net.named_parameters()}
    back = Directions.load(path)
    assert back.names == d.names and back.seed == 9 and back.normalization == "layer"
    assert back.bias_policy == "filter" and back.orthogonalized and back.labels == d.labels
    for i in range(2):
        assert all(torch.equal(back.tensors[i][n], d.tensors[i][n]) for n in d.names)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LossmapError, match="damaged or not safetensors"):
        Directions.load(tmp_path / "bad.safetensors")


def test_check_names_shape_mismatch(net):
    d = random_directions(nn.Linear(3, 2), 1)
    live = dict(nn.Linear(4, 2).named_parameters())
    with pytest.raises(LossmapError, match=r"shape mismatch weight: direction \(2, 3\) vs model \(2, 4\)"):
        d.check(live)
    with pytest.raises(LossmapError, match="no direction for conv1.weight"):
        d.check(dict(net.named_parameters()))


def _big_net():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(700, 1600), nn.ReLU(), nn.Linear(1600, 3))  # 1.1M-value weight: several pieces


def test_orthogonalize_matches_whole_tensor_arithmetic():
    from lossmap.directions import _dot, _norm

    net = _big_net()
    d0, d1 = (dict(d) for d in random_directions(net, 2, seed=4, bias="keep").tensors)
    coef = _dot(d1, d0) / _dot(d0, d0)
    n1 = _norm(d1)
    ref = {n: d1[n] - d0[n] * coef for n in d1}
    new = _norm(ref)
    ref = {n: t * (n1 / new) for n, t in ref.items()}
    got = random_directions(net, 2, seed=4, bias="keep", orthogonalize=True).tensors
    assert all(torch.equal(got[0][n], d0[n]) for n in d0)
    assert all(torch.equal(got[1][n], ref[n]) for n in ref)  # bit for bit


def test_target_plane_matches_whole_tensor_arithmetic():
    from lossmap.directions import _dot, _norm

    a = {n: p.detach() for n, p in _big_net().named_parameters()}
    g = torch.Generator().manual_seed(5)
    b = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in a.items()}
    c = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in a.items()}
    d0 = {n: b[n] - a[n] for n in a}
    r = {n: c[n] - a[n] for n in a}
    n0 = _norm(d0)
    t = _dot(r, d0) / (n0 * n0)
    r = {n: r[n] - d0[n] * t for n in r}
    nr = _norm(r)
    d = target_directions(a, b, c)
    assert all(torch.equal(d.tensors[0][n], d0[n]) for n in a)
    assert all(torch.equal(d.tensors[1][n], r[n] * (n0 / nr)) for n in a)  # bit for bit
    assert d.markers["C"] == [t, nr / n0]


def test_tensor_hash_bytes_in_row_major_order():
    import hashlib

    from lossmap.space import tensor_hash

    big = torch.arange(3 * 700 * 1000, dtype=torch.float32).reshape(3000, 700) / 7
    tensors = {
        "w": big, "wt": big.t(), "half": big[:, ::2].bfloat16(), "b": torch.arange(5.0), "s": torch.tensor(1.5),
        "i": torch.arange(4), "long_rows": torch.arange(2 * 1_100_000, dtype=torch.float64).reshape(1_100_000, 2).t(),
        "e": torch.empty(0, 3),
    }
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert tensor_hash(tensors) == h.hexdigest()
    # pinned: hashes stored in result files and directions must not change between versions
    assert tensor_hash(tensors) == "1d04ef1c0aef3e2cbe73b3d991093eea291e166bc1cc2eca65354151165d1968"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_finds_a_value_in_any_piece(bad):
    from lossmap.space import check_finite

    for where in (0, 1_500_000, 3_000_000 - 1):
        t = torch.zeros(3_000_000)
        t[where] = bad
        with pytest.raises(LossmapError, match="model A has non-finite values in 'x'"):
            check_finite({"ok": torch.ones(3), "x": t}, "model A")
        with pytest.raises(LossmapError, match="non-finite values in 'x'"):
            check_finite({"x": t.reshape(1000, 3000).t()})  # not contiguous
    check_finite({"x": torch.zeros(3_000_000), "i": torch.arange(3)})
