"""The Hessian of an Objective (lossmap.curvature.hessian / analysis / results) against independent oracles:
closed forms of linear and logistic regression, a planted quadratic, the dense Hessian of a small MLP from
torch.autograd.functional.hessian, and the Hessian computed with other batch sizes and data orders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lossmap.curvature import dense_matrix
from lossmap.curvature.analysis import spectrum_of
from lossmap.curvature.extremes import largest, smallest
from lossmap.curvature.hessian import check_deterministic, hessian_operator, parameter_names
from lossmap.curvature.operator import matrix_operator
from lossmap.curvature.results import load_eigenvectors, load_spectrum, parse_picks, save_spectrum
from lossmap.directions import Directions
from lossmap.errors import LossmapError
from lossmap.objective import Objective

from oracles import dense_hessian


def one_line(fn, match: str) -> str:
    with pytest.raises(LossmapError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def regression_data(n=40, dim=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = rng.normal(size=(n, k))
    return torch.as_tensor(x), torch.as_tensor(y), np.hstack([x, np.ones((n, 1))])


def kron_closed_form(gram: np.ndarray, k: int, dim: int) -> np.ndarray:
    """``gram ⊗ I_k`` in nn.Linear's parameter order: weight (k, dim) row-major, then bias (k)."""
    idx = lambda out, d: out * dim + d if d < dim else k * dim + out  # noqa: E731
    closed = np.zeros((k * (dim + 1), k * (dim + 1)))
    for out in range(k):
        for d in range(dim + 1):
            for e in range(dim + 1):
                closed[idx(out, d), idx(out, e)] = gram[d, e]
    return closed


@pytest.mark.parametrize("method", ["forward-over-reverse", "double-backward"])
def test_linear_regression_with_the_default_mse_is_the_closed_form(method):
    """Convention: lossmap's default loss for float targets is nn.MSELoss() — the mean over all N·K values — so
    H = 2·X̃ᵀX̃/(N·K) ⊗ I_K over (W, b), X̃ = [X, 1] (the sum over outputs would be K times larger)."""
    x, y, xa = regression_data()
    n, dim, k = x.shape[0], x.shape[1], y.shape[1]
    torch.manual_seed(0)
    obj = Objective(nn.Linear(dim, k).double(), (x, y), batch_size=16)
    assert obj.loss.name == "mse"
    closed = kron_closed_form(2 * xa.T @ xa / (n * k), k, dim)
    op = hessian_operator(obj, method=method, keep_memory=0)  # every product by this method, none through kept graphs
    np.testing.assert_allclose(dense_matrix(op), closed, rtol=1e-12, atol=1e-14)
    ref = np.linalg.eigvalsh(closed)
    s = spectrum_of(obj, top=4, bottom=2, tol=0, trace_matvecs=3 * op.shape[0], method=method, keep_memory=0)
    np.testing.assert_allclose(s.top.values, ref[::-1][:4], rtol=1e-8)
    np.testing.assert_allclose(s.bottom.values, ref[:2], rtol=1e-8)
    assert abs(s.trace.estimate - np.trace(closed)) < 1e-10 * np.trace(closed)  # Hutch++ with m ≥ 3n is exact
    assert s.hvp_method == method


def test_logistic_regression_is_the_closed_form():
    """H = X̃ᵀ diag(p(1 − p)) X̃ / N for the mean binary cross-entropy with logits."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    xa = np.hstack([x, np.ones((60, 1))])
    labels = rng.integers(0, 2, size=(60, 1)).astype(np.float64)
    torch.manual_seed(4)
    model = nn.Linear(3, 1).double()
    obj = Objective(model, (torch.as_tensor(x), torch.as_tensor(labels)), nn.BCEWithLogitsLoss(), batch_size=25)
    w = np.append(model.weight.detach().numpy().reshape(-1), model.bias.detach().numpy())
    p = 1 / (1 + np.exp(-(xa @ w)))
    closed = xa.T @ (xa * (p * (1 - p))[:, None]) / 60
    np.testing.assert_allclose(dense_matrix(hessian_operator(obj)), closed, rtol=1e-12, atol=1e-15)
    s = spectrum_of(obj, top=2, bottom=1, tol=0)
    ref = np.linalg.eigvalsh(closed)
    np.testing.assert_allclose(s.top.values, ref[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(s.bottom.values, ref[:1], rtol=1e-8)


# a planted quadratic through the objective: L(θ) = ½ θᵀAθ, the Hessian is A
DISTINCT = np.array([-3.0, -0.5, 0.25, 1.0, 2.5, 6.0])
MULT = np.array([1, 2, 5, 4, 3, 1])


class Quadratic(nn.Module):
    """Every example's output is ½ θᵀAθ (the data only sets the batch size)."""

    def __init__(self, a: np.ndarray, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a))
        self.theta = nn.Parameter(torch.as_tensor(np.random.default_rng(seed).normal(size=a.shape[0])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 * self.theta @ self.a @ self.theta).expand(x.shape[0])


def _mean_output(out, target):
    return out.mean()


def planted() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    lam = np.repeat(DISTINCT, MULT)
    q, _ = np.linalg.qr(rng.normal(size=(lam.size, lam.size)))
    return (q * lam) @ q.T, lam


def test_planted_quadratic_spectrum_trace_and_density_are_exact():
    a, lam = planted()
    n = lam.size
    obj = Objective(Quadratic(a), (torch.zeros(10, 1), torch.zeros(10)), _mean_output, metrics={}, batch_size=4)
    s = spectrum_of(obj, top=2, bottom=2, tol=0, trace_matvecs=3 * n, density_steps=len(DISTINCT), density_runs=3,
                    per_layer=True, method="double-backward")
    np.testing.assert_allclose(s.top.values, [6.0, 2.5], rtol=1e-10)
    np.testing.assert_allclose(s.bottom.values, [-3.0, -0.5], rtol=1e-10)
    assert abs(s.trace.estimate - lam.sum()) < 1e-9
    for r in range(3):  # each run's nodes are the distinct eigenvalues once the steps reach their number
        np.testing.assert_allclose(np.sort(s.density.nodes[s.density.run == r]), DISTINCT, atol=1e-9)
    assert abs(s.density.weights.sum() - 1) < 1e-12
    assert s.density.hvps == 3 * len(DISTINCT)
    layer = s.layers["theta"]  # one tensor: its block is the whole Hessian
    np.testing.assert_allclose(layer.top, [6.0, 2.5], rtol=1e-10)
    assert s.hvps == s.probe_hvps + s.top.hvps + s.bottom.hvps + s.trace.hvps + s.density.hvps + layer.hvps


def _mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (50,), generator=g)


@pytest.mark.slow
def test_mlp_spectrum_matches_the_dense_hessian():
    model, x, y = _mlp()
    h = dense_hessian(model, x, y)
    assert h.shape[0] <= 2000
    ref = np.linalg.eigvalsh(h)
    assert ref[0] < -1e-3 * ref[-1]  # a saddle: negative curvature is present
    obj = Objective(model, (x, y), batch_size=17)
    s = spectrum_of(obj, top=3, bottom=3, tol=1e-10)
    np.testing.assert_allclose(s.top.values, ref[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(s.bottom.values, ref[:3], rtol=1e-8)
    for i in range(3):  # unit eigenvectors: Hv = λv with the oracle's matrix
        v = np.concatenate([s.top.vectors[i][k].numpy().reshape(-1) for k, _ in model.named_parameters()])
        assert abs(np.linalg.norm(v) - 1) < 1e-12
        np.testing.assert_allclose(h @ v, s.top.values[i] * v, atol=1e-7 * ref[-1])


def test_forward_over_reverse_and_double_backward_agree():
    model, x, y = _mlp(3)
    obj = Objective(model, (x, y), batch_size=16)
    rng = np.random.default_rng(0)
    fwd = hessian_operator(obj, method="forward-over-reverse", keep_memory=0)
    dbl = hessian_operator(obj, method="double-backward", keep_memory=0)
    for _ in range(3):
        v = rng.standard_normal(fwd.shape[0])
        a, b = fwd.matvec(v), dbl.matvec(v)
        assert np.linalg.norm(a - b) <= 1e-10 * np.linalg.norm(a)


def _batch_mean_ce(out, target):  # no per-example form: lossmap weights its batch means by their sizes
    return nn.functional.cross_entropy(out, target)


@pytest.mark.parametrize("loss", [None, _batch_mean_ce])
def test_the_hessian_does_not_depend_on_batch_size_or_order(loss):
    """Unequal last batches (50 = 3·16 + 2) weighted by size, not by 1/number of batches; any order gives the
    same Hessian (checked on random vectors: a weighting error changes Hv for almost every v)."""
    model, x, y = _mlp(4)
    vs = np.random.default_rng(9).standard_normal((3, sum(p.numel() for p in model.parameters())))

    def products(data, batch_size):
        op = hessian_operator(Objective(model, data, loss, batch_size=batch_size), method="double-backward")
        return np.stack([op.matvec(v) for v in vs])

    ref = products((x, y), 50)
    perm = torch.from_numpy(np.random.default_rng(5).permutation(50))
    for batch_size, data in ((16, (x, y)), (7, (x, y)), (16, (x[perm], y[perm]))):
        np.testing.assert_allclose(products(data, batch_size), ref, rtol=1e-11, atol=1e-13 * np.abs(ref).max())
    one_over_batches = sum(products((x[lo : lo + 16], y[lo : lo + 16]), 16) for lo in range(0, 50, 16)) / 4
    assert np.abs(one_over_batches - ref).max() > 1e-3 * np.abs(ref).max()  # what 1/n_batches would give


def test_at_another_theta_and_on_a_block():
    model, x, y = _mlp(5)
    obj = Objective(model, (x, y))
    theta = {k: t + 0.1 for k, t in obj.theta0.items()}
    shifted = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    shifted.load_state_dict({k: v.clone() for k, v in theta.items()})
    h = dense_hessian(shifted, x, y)
    np.testing.assert_allclose(dense_matrix(hessian_operator(obj, theta, method="double-backward")), h, rtol=1e-10, atol=1e-12)
    block = hessian_operator(obj, theta, block=["4.weight", "4.bias"], method="double-backward")
    lo = sum(p.numel() for k, p in model.named_parameters() if k.startswith(("0.", "2.")))
    np.testing.assert_allclose(dense_matrix(block), h[lo:, lo:], rtol=1e-10, atol=1e-12)
    assert all(torch.equal(p, obj.theta0[k]) for k, p in model.named_parameters())  # the model is untouched


def test_extremes_find_near_zero_bottoms_of_a_spectrum_with_a_null_space():
    # eigenvalues 0 (×40) and a few positive ones: λmin is 0, which a plain relative tolerance cannot confirm
    rng = np.random.default_rng(1)
    lam = np.concatenate([np.zeros(40), [0.5, 1.0, 4.0]])
    q, _ = np.linalg.qr(rng.normal(size=(43, 43)))
    op = matrix_operator((q * lam) @ q.T)
    low = smallest(op, 2, tol=1e-6)
    assert np.abs(low.values).max() < 1e-5 * 4.0
    np.testing.assert_allclose(largest(op, 2, tol=1e-8).values, [4.0, 1.0], rtol=1e-7)


@pytest.mark.slow
def test_spectrum_files_round_trip(tmp_path):
    model, x, y = _mlp(6)
    obj = Objective(model, (x, y))
    s = spectrum_of(obj, top=3, bottom=2, tol=1e-8, trace_matvecs=12, density_steps=6, density_runs=2, per_layer=True)
    paths = save_spectrum(s, tmp_path / "h.nc", picks=parse_picks("top,bottom"), attrs={"data": "test"})
    ds = load_spectrum(paths["spectrum"])
    np.testing.assert_array_equal(ds["eigenvalues_top"].values, s.top.values)
    np.testing.assert_array_equal(ds["eigenvalues_bottom"].values, s.bottom.values)
    np.testing.assert_array_equal(ds["density_weights"].values, s.density.weights)
    assert ds.attrs["trace"] == s.trace.estimate and ds.attrs["trace_se"] == s.trace.se
    assert ds.attrs["hvps_total"] == s.hvps and ds.attrs["parameter_count"] == s.size == 93
    assert list(ds["layer"].values) == ["0", "2", "4"] and ds.attrs["data"] == "test"
    vectors = load_eigenvectors(paths["eigenvectors"])
    assert len(vectors["top"]) == 3 and len(vectors["bottom"]) == 2
    assert torch.equal(vectors["bottom"][1]["2.weight"], s.bottom.vectors[1]["2.weight"])
    d = Directions.load(paths["directions"])
    assert d.kind == "hessian" and d.normalization == "none" and d.count == 2
    assert torch.equal(d.tensors[1]["4.bias"], s.bottom.vectors[0]["4.bias"])
    assert "most negative" in d.labels[1]
    one_line(lambda: load_spectrum(tmp_path / "h.eigenvectors.safetensors"), "damaged|not")


def test_bad_input_is_one_line():
    model, x, y = _mlp(7)
    obj = Objective(model, (x, y))
    n = sum(p.numel() for p in model.parameters())
    one_line(lambda: spectrum_of(obj, top=n), f"top={n} eigenvalues of a Hessian of {n} parameters")
    one_line(lambda: spectrum_of(obj, top=1, bottom=n + 5), f"bottom={n + 5}")
    one_line(lambda: spectrum_of(obj, top=0), "nothing to compute")
    one_line(lambda: spectrum_of(obj, top=-1), "top=-1")
    one_line(lambda: spectrum_of(obj, top=1, trace_matvecs=2), "trace_matvecs=2")
    bn = nn.BatchNorm1d(4, affine=False).double()  # buffers only: nothing for a Hessian
    data = (x, torch.randn(50, 4, dtype=torch.float64))
    one_line(lambda: parameter_names(Objective(bn, data, include_buffers=True)), "no parameter is selected")
    shuffled = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    one_line(lambda: Objective(model, shuffled), "shuffled")


class Noisy(nn.Module):
    """A forward that draws random numbers (e.g. dropout left on): the loss is not a function of θ."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3).double()

    def forward(self, x):
        return self.lin(x + 0.1 * torch.randn_like(x))


def test_the_probe_refuses_randomness_and_picks_a_method():
    model, x, y = _mlp(8)
    msg = one_line(lambda: spectrum_of(Objective(Noisy(), (x, y)), top=1), "two Hessian-vector products")
    assert "fixed order" in msg
    obj = Objective(model, (x, y))
    op = hessian_operator(obj)
    assert check_deterministic(op) == 2 and op.count == 0
    assert op.hvp.method in ("forward-over-reverse", "double-backward")
    with torch.no_grad():
        bad = {k: t.clone() for k, t in obj.theta0.items()}
        bad["0.weight"][0, 0] = math.nan
    one_line(lambda: check_deterministic(hessian_operator(obj, bad)), "non-finite")


def test_the_probe_product_is_the_first_lanczos_product():
    # the probe multiplies the top run's start vector: with the probe, the run needs one HVP less and finds
    # the same eigenvalues (the Krylov sequence is the same); against the float64 autograd Hessian
    model, x, y = _mlp(8)
    ref = np.linalg.eigvalsh(dense_hessian(model, x, y))[::-1][:3]
    probed = spectrum_of(Objective(model, (x, y)), top=3, tol=1e-10, method="double-backward")
    bare = spectrum_of(Objective(model, (x, y)), top=3, tol=1e-10, method="double-backward", probe=False)
    assert probed.probe_hvps == 2 and probed.top.hvps == bare.top.hvps - 1
    np.testing.assert_allclose(probed.top.values, bare.top.values, rtol=1e-12)
    np.testing.assert_allclose(probed.top.values, ref, rtol=1e-8)
    # without a top run, the bottom's shift run (λmax from the same start) gets it
    low = spectrum_of(Objective(model, (x, y)), top=0, bottom=2, tol=1e-10, method="double-backward")
    low_bare = spectrum_of(Objective(model, (x, y)), top=0, bottom=2, tol=1e-10, method="double-backward", probe=False)
    assert low.bottom.hvps == low_bare.bottom.hvps - 1
    np.testing.assert_allclose(low.bottom.values, np.sort(np.linalg.eigvalsh(dense_hessian(model, x, y)))[:2], rtol=1e-8)
    op = hessian_operator(Objective(model, (x, y)))
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    check_deterministic(op, v=v)
    u = np.nextafter(v / np.linalg.norm(v), np.inf)  # normalized elsewhere, it may differ in the last bit
    np.testing.assert_allclose(op.matvec(u), dense_hessian(model, x, y) @ u, rtol=1e-8, atol=1e-12)
    assert op.count == 0
    check_deterministic(op, v=v)
    op.matvec(v)  # another vector first: the probe's product is forgotten, the next product of v is computed
    op.matvec(v / np.linalg.norm(v))
    assert op.count == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_spectrum_on_cuda_matches_the_cpu_dense_hessian():
    model, x, y = _mlp(10)
    ref = np.linalg.eigvalsh(dense_hessian(model, x, y))
    obj = Objective(model, (x, y), device="cuda", batch_size=16)
    s = spectrum_of(obj, top=2, bottom=1, tol=1e-10, trace_matvecs=3 * ref.size)
    assert s.top.vectors[0]["0.weight"].device.type == "cuda"
    np.testing.assert_allclose(s.top.values, ref[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(s.bottom.values, ref[:1], rtol=1e-8)
    assert abs(s.trace.estimate - ref.sum()) < 1e-8 * np.abs(ref).sum()
