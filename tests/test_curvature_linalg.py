"""The curvature core (operator, eigenvalues, trace, spectral density, curvature maps) against independent oracles:
planted spectra, dense Hessians from torch.autograd.functional.hessian, closed-form Hessians of linear and
logistic regression and of Σ(θᵢ⁴ − θᵢ²)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from lossmap.curvature import (
    HessianOperator,
    curvature_map,
    dense_matrix,
    hutchinson,
    hutchpp,
    lanczos,
    layer_blocks,
    matrix_operator,
    plot_density,
    slq,
    smooth_density,
    top_eigen,
)
from lossmap.errors import LossmapError
from lossmap.grid import Grid

# a planted spectrum: 8 distinct eigenvalues (negative ones included), simple at both ends, n = 30
DISTINCT = np.array([-4.0, -1.5, -0.25, 0.5, 1.0, 3.0, 7.5, 12.0])
MULT = np.array([1, 1, 6, 8, 6, 6, 1, 1])
N = int(MULT.sum())


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, eigenvalues, orthonormal eigenvectors as columns)`` with A = Q diag(λ) Qᵀ, Q random orthogonal."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(N, N)))
    q = q * np.sign(np.diag(r))
    lam = np.repeat(DISTINCT, MULT)
    return (q * lam) @ q.T, lam, q


def assert_one_line_error(fn, match: str) -> None:
    with pytest.raises(LossmapError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def func_hvp(loss_of_params, params: dict[str, torch.Tensor]):
    """Forward-over-reverse HVP at ``params``: the jvp of the gradient (torch.func)."""
    g = grad(loss_of_params)

    def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return jvp(g, (params,), (v,))[1]

    return hvp


def double_backward_hvp(loss_of_params, params: dict[str, torch.Tensor]):
    """Reverse-over-reverse HVP at ``params``: the gradient of ⟨∇L, v⟩ (torch.autograd.grad twice)."""

    def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = {k: t.detach().requires_grad_(True) for k, t in params.items()}
        g = torch.autograd.grad(loss_of_params(p), list(p.values()), create_graph=True)
        dot = sum((gi * v[k]).sum() for gi, k in zip(g, p))
        return dict(zip(p, torch.autograd.grad(dot, list(p.values()))))

    return hvp


def module_hvp(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, mode: str = "forward-over-reverse"):
    params = {k: p.detach().clone() for k, p in model.named_parameters()}

    def loss(p):
        return loss_fn(functional_call(model, p, (x,)), y)

    return (func_hvp if mode == "forward-over-reverse" else double_backward_hvp)(loss, params), params


# --------------------------------------------------------------------------------------------------------
# eigenvalues and eigenvectors of a planted spectrum
# --------------------------------------------------------------------------------------------------------


def test_top_and_bottom_eigenpairs_of_a_planted_spectrum():
    a, lam, q = planted()
    op = matrix_operator(a)
    top = top_eigen(op, k=3, which="LA", tol=0)
    np.testing.assert_allclose(top.values, [12.0, 7.5, 3.0], rtol=1e-8)
    bottom = top_eigen(op, k=3, which="SA", tol=0)
    np.testing.assert_allclose(bottom.values, [-4.0, -1.5, -0.25], rtol=1e-8)
    # the simple eigenvalues' eigenvectors, up to sign
    for eig, cols in ((top, [N - 1, N - 2]), (bottom, [0, 1])):
        for i, col in enumerate(cols):
            assert abs(abs(eig.flat[:, i] @ q[:, col]) - 1) < 1e-10
            assert abs(np.linalg.norm(eig.flat[:, i]) - 1) < 1e-12
            np.testing.assert_array_equal(eig.vectors[i]["x"].numpy(), eig.flat[:, i])
    assert top.hvps > 0 and bottom.hvps > 0 and not top.dense


def test_eigen_counts_every_product_and_warm_start_finds_the_same_pair():
    a, lam, q = planted(1)
    calls = []
    t = torch.as_tensor(a)
    op = HessianOperator(lambda v: calls.append(1) or {"x": t @ v["x"]}, {"x": torch.zeros(N, dtype=torch.float64)})
    cold = top_eigen(op, k=1, which="LA", tol=0)
    assert cold.hvps == len(calls) == op.count
    warm = top_eigen(op, k=1, which="LA", tol=0, v0=cold.vectors)  # a list of dicts is summed
    assert warm.hvps == len(calls) - cold.hvps
    assert abs(warm.values[0] - 12.0) < 1e-10 * 12
    assert abs(abs(warm.flat[:, 0] @ q[:, -1]) - 1) < 1e-10


def test_k_of_n_minus_one_uses_the_dense_fallback():
    d = np.array([3.0, -1.0, 2.0])
    op = matrix_operator(np.diag(d))
    eig = top_eigen(op, k=2, which="SA", tol=0)
    assert eig.dense and eig.hvps == 3
    np.testing.assert_allclose(eig.values, [-1.0, 2.0], rtol=1e-14)
    np.testing.assert_allclose(np.abs(eig.flat), [[0, 0], [1, 0], [0, 1]], atol=1e-14)


def test_block_is_the_sub_block_of_the_matrix():
    a, _, _ = planted(2)
    template = {"w": torch.zeros(5, 4, dtype=torch.float64), "b": torch.zeros(10, dtype=torch.float64)}
    op = matrix_operator(a, template, block=["b"])
    assert op.shape == (10, 10) and op.names == ("b",)
    sub = a[20:, 20:]
    np.testing.assert_allclose(dense_matrix(op), sub, atol=1e-14)
    ref = np.linalg.eigvalsh(sub)
    np.testing.assert_allclose(top_eigen(op, k=2, which="LA", tol=0).values, ref[::-1][:2], rtol=1e-10)
    np.testing.assert_allclose(top_eigen(op, k=2, which="SA", tol=0).values, ref[:2], rtol=1e-10)


def test_float32_template_round_trip_and_layout():
    template = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "c.weight": torch.zeros(1, 2)}
    op = HessianOperator(lambda v: {k: 2 * t for k, t in v.items()}, template)
    x = np.arange(10, dtype=np.float64)
    out = op.matvec(x)
    assert out.dtype == np.float64 and out.tolist() == (2 * x).tolist()
    t = op.unflatten(x)
    assert t["a.weight"].dtype == torch.float32 and t["a.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert t["c.weight"].tolist() == [[8, 9]]
    assert layer_blocks(list(template)) == {"a": ("a.weight", "a.bias"), "c": ("c.weight",)}


def test_bad_input_is_one_line():
    op = matrix_operator(np.eye(4))
    assert_one_line_error(lambda: top_eigen(op, k=4), "k=4")
    assert_one_line_error(lambda: top_eigen(op, k=9), "k=9")
    assert_one_line_error(lambda: top_eigen(op, k=0), "k=0")
    assert_one_line_error(lambda: top_eigen(op, k=-2), "k=-2")
    assert_one_line_error(lambda: top_eigen(op, k=1, which="LM"), "which")
    template = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    assert_one_line_error(lambda: HessianOperator(lambda v: v, template, block=[]), "empty")
    assert_one_line_error(lambda: HessianOperator(lambda v: v, template, block=["nope"]), "nope")
    assert_one_line_error(lambda: HessianOperator(lambda v: v, {}), "no tensors")
    assert_one_line_error(lambda: hutchpp(op, 2), "matvecs=2")
    assert_one_line_error(lambda: hutchinson(op, 0), "probes=0")
    assert_one_line_error(lambda: slq(op, 0), "steps=0")


# --------------------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hutchinson_is_exact_on_a_diagonal_with_one_probe(seed):
    d = np.random.default_rng(seed + 10).normal(size=50) * 3
    est = hutchinson(matrix_operator(np.diag(d)), probes=1, seed=seed)
    assert abs(est.estimate - d.sum()) <= 1e-12 * np.abs(d).sum()
    assert est.hvps == 1 and math.isnan(est.se)


def test_hutchinson_mean_and_standard_error_match_theory():
    # Var(zᵀAz) = 2 (‖A‖_F² − Σ A_ii²) for Rademacher z: the SE should be that over √probes (±10 % with 4000
    # probes: the SE of a sample standard deviation is ~1/√(2·4000) ≈ 1.1 % for near-Gaussian values), and the
    # estimate within 4 theoretical SEs of tr(A) (fails with probability < 1e-4 for a correct estimator).
    a, lam, _ = planted(3)
    probes = 4000
    est = hutchinson(matrix_operator(a), probes=probes, seed=7)
    se = math.sqrt(2 * (np.sum(a * a) - np.sum(np.diag(a) ** 2)) / probes)
    assert abs(est.se / se - 1) < 0.1
    assert abs(est.estimate - lam.sum()) < 4 * se


def test_hutchpp_is_exact_for_rank_at_most_a_third_of_the_products():
    rng = np.random.default_rng(4)
    n, r = 60, 5
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    a = (u * np.array([9.0, -3.0, 2.0, 0.7, -0.2])) @ u.T  # indefinite, rank 5
    for m in (15, 16, 17, 40):
        est = hutchpp(matrix_operator(a), matvecs=m, seed=m)
        assert est.hvps == m
        assert abs(est.estimate - 8.5) < 1e-10
        assert est.se < 1e-10


def test_hutchpp_is_unbiased_and_its_se_is_honest():
    # 300 independent Hutch++ runs on a full-rank matrix: the mean within 4 standard errors of the mean of tr(A);
    # the reported SE, averaged, within 25 % of the spread of the estimates (the SE is conditional on the sketch,
    # so it is only approximately the unconditional spread).
    a, lam, _ = planted(5)
    op = matrix_operator(a)
    runs = [hutchpp(op, matvecs=12, seed=s) for s in range(300)]
    values = np.array([r.estimate for r in runs])
    spread = values.std(ddof=1)
    assert abs(values.mean() - lam.sum()) < 4 * spread / math.sqrt(len(values))
    assert abs(np.mean([r.se for r in runs]) / spread - 1) < 0.25
    assert spread < hutchinson(op, probes=12, seed=0).se * 3  # sanity: the estimator is not wildly noisy


# --------------------------------------------------------------------------------------------------------
# spectral density (stochastic Lanczos quadrature)
# --------------------------------------------------------------------------------------------------------


def test_slq_nodes_are_exact_once_steps_reach_the_distinct_eigenvalues():
    a, lam, _ = planted(6)
    op = matrix_operator(a)
    for steps in (8, 20):  # 20 > 8: each run breaks down after 8 steps
        q = slq(op, steps=steps, runs=4, seed=1)
        assert q.hvps == 4 * 8
        for r in range(4):
            nodes = q.nodes[q.run == r]
            np.testing.assert_allclose(nodes, DISTINCT, atol=1e-10 * 12)
            assert abs(q.weights[q.run == r].sum() - 0.25) < 1e-13
        assert abs(q.weights.sum() - 1) < 1e-13


def test_slq_fewer_steps_give_fewer_nodes_inside_the_spectrum():
    a, _, _ = planted(6)
    q = slq(matrix_operator(a), steps=4, runs=2, seed=0)
    assert q.nodes.size == 8 and q.hvps == 8
    assert q.nodes.min() >= -4 - 1e-10 and q.nodes.max() <= 12 + 1e-10  # Ritz values interlace
    assert abs(q.weights.sum() - 1) < 1e-13


def test_slq_weights_are_multiplicities_over_n_with_the_standard_basis_as_starts():
    # averaged over the starts e_1..e_n, the weight on λ is Σ_j ‖P_λ e_j‖² / n = mult(λ) / n exactly
    a, _, _ = planted(7)
    q = slq(matrix_operator(a), steps=8, starts=np.eye(N))
    per = np.array([q.weights[np.abs(q.nodes - lam) < 1e-8].sum() for lam in DISTINCT])
    np.testing.assert_allclose(per, MULT / N, atol=1e-12)


def test_slq_weights_match_multiplicities_in_expectation_with_random_starts():
    # 400 random runs: each distinct eigenvalue's mean weight within 5 standard errors of mult/n (the SE from the
    # runs' own spread; a correct estimator fails one of the 8 checks with probability < 1e-5)
    a, _, _ = planted(8)
    runs = 400
    q = slq(matrix_operator(a), steps=8, runs=runs, seed=3)
    for lam, mult in zip(DISTINCT, MULT):
        per_run = np.array([q.weights[(q.run == r) & (np.abs(q.nodes - lam) < 1e-8)].sum() * runs for r in range(runs)])
        se = per_run.std(ddof=1) / math.sqrt(runs)
        assert abs(per_run.mean() - mult / N) < 5 * se


def test_slq_has_no_ghost_copies_of_converged_outliers():
    # 80 steps on a bulk in [0, 1] plus outliers 50 and 100: without reorthogonalization Lanczos loses
    # orthogonality and repeats the converged outliers (10 and 9 copies here); with it each appears once, with
    # the weight (uᵀv)² of its eigenvector u and the start v
    rng = np.random.default_rng(0)
    lam = np.concatenate([rng.uniform(0, 1, 298), [50.0, 100.0]])
    q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    start = rng.choice([-1.0, 1.0], size=300) / math.sqrt(300)
    out = slq(matrix_operator((q * lam) @ q.T), steps=80, starts=start[None])
    for outlier, col in ((100.0, -1), (50.0, -2)):
        near = np.abs(out.nodes - outlier) < 1e-6
        assert near.sum() == 1
        assert abs(out.weights[near][0] - (q[:, col] @ start) ** 2) < 1e-10


def test_lanczos_stops_at_an_invariant_subspace():
    op = matrix_operator(np.diag([2.0] * 4 + [-1.0] * 3 + [5.0] * 3))
    alpha, beta = lanczos(op, steps=10, start=np.ones(10))
    assert alpha.size == 3 and beta.size == 2 and op.count == 3


def test_smooth_density_is_the_gaussian_mixture():
    nodes, weights, width = np.array([-1.0, 2.0]), np.array([0.3, 0.7]), 0.25
    t, p = smooth_density(nodes, weights, width=width, grid=np.linspace(-5, 6, 4001))
    ref = sum(w * np.exp(-((t - c) ** 2) / (2 * width**2)) / (width * math.sqrt(2 * math.pi)) for c, w in zip(nodes, weights))
    np.testing.assert_allclose(p, ref, rtol=1e-9, atol=1e-12)


def test_plot_density_draws_a_normalized_curve_without_pyplot():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    fig, ax = plot_density(np.array([0.0, 3.0]), np.array([0.5, 0.5]), width=0.2, log=False)
    assert isinstance(fig, Figure) and plt.get_fignums() == before
    x, y = ax.get_lines()[0].get_data()
    assert abs(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) - 1) < 1e-12
    assert abs(x[np.argmax(y)]) < 0.02 or abs(x[np.argmax(y)] - 3) < 0.02
    fig2, ax2 = plot_density(np.array([0.0, 3.0]), np.array([0.5, 0.5]), ax=ax, log=True)
    assert fig2 is fig and ax2.get_yscale() == "log"


def test_a_files_density_figure_marks_the_lanczos_extremes_it_holds():
    import xarray as xr

    from lossmap.plot.spectrum import density_figure

    density = {"density_nodes": ("node", np.array([-1.0, 0.0, 4.0])), "density_weights": ("node", np.array([0.2, 0.7, 0.1]))}
    ends = {"eigenvalues_top": ("top", np.array([6.0, 4.5])), "eigenvalues_bottom": ("bottom", np.array([-2.0, -1.5]))}
    ax = density_figure(xr.Dataset({**density, **ends})).axes[0]
    marks = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert marks == [6.0, -2.0] and ax.get_xlim()[0] <= -2.0 and ax.get_xlim()[1] >= 6.0  # both in view
    assert len(ax.get_legend().get_texts()) == 2
    bare = density_figure(xr.Dataset(density)).axes[0]
    assert len(bare.get_lines()) == 1 and bare.get_legend() is None
    with pytest.raises(LossmapError, match="--density"):
        density_figure(xr.Dataset(ends), "h.nc")


# --------------------------------------------------------------------------------------------------------
# a small MLP against the dense autograd Hessian
# --------------------------------------------------------------------------------------------------------


def _mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    return model, x, y


def _dense_hessian(model: nn.Module, loss_fn, x, y) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The oracle: torch.autograd.functional.hessian of the loss as a function of one flat parameter vector,
    with its own slicing (name, start, stop) in named_parameters order."""
    names, shapes, slices, at = [], [], [], 0
    for k, p in model.named_parameters():
        names.append(k)
        shapes.append(p.shape)
        slices.append((k, at, at + p.numel()))
        at += p.numel()
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params = {k: flat[a:b].reshape(s) for (k, a, b), s in zip(slices, shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(f, flat0, vectorize=True).numpy(), slices


def test_mlp_eigenvalues_match_the_autograd_hessian():
    model, x, y = _mlp_problem()
    loss_fn = nn.CrossEntropyLoss()
    h, slices = _dense_hessian(model, loss_fn, x, y)
    hvp, params = module_hvp(model, loss_fn, x, y)
    op = HessianOperator(hvp, params)
    n = op.shape[0]
    assert n == h.shape[0] == sum(p.numel() for p in model.parameters()) and n <= 2000
    ref = np.linalg.eigvalsh(h)
    assert ref[0] < -1e-3 * ref[-1]  # the point is a saddle: negative curvature is present
    np.testing.assert_allclose(top_eigen(op, k=3, which="LA", tol=0).values, ref[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(top_eigen(op, k=3, which="SA", tol=0).values, ref[:3], rtol=1e-8)
    # the operator's columns are the Hessian's (checks the flattening order)
    e = np.zeros(n)
    for j in (0, 97, n - 1):
        e[j] = 1.0
        np.testing.assert_allclose(op.matvec(e), h[:, j], rtol=1e-10, atol=1e-13)
        e[j] = 0.0
    # a per-layer block: the sub-block of the dense Hessian on that layer's tensors
    block = layer_blocks(list(params))["2"]
    a, b = min(s[1] for s in slices if s[0] in block), max(s[2] for s in slices if s[0] in block)
    sub = np.linalg.eigvalsh(h[a:b, a:b])
    got = top_eigen(HessianOperator(hvp, params, block=block), k=2, which="LA", tol=0).values
    np.testing.assert_allclose(got, sub[::-1][:2], rtol=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mlp_eigenvalues_on_cuda_match_the_cpu_autograd_hessian():
    model, x, y = _mlp_problem()
    loss_fn = nn.CrossEntropyLoss()
    ref = np.linalg.eigvalsh(_dense_hessian(model, loss_fn, x, y)[0])
    hvp, params = module_hvp(model.cuda(), loss_fn, x.cuda(), y.cuda())
    eig = top_eigen(HessianOperator(hvp, params), k=2, which="LA", tol=0)
    assert eig.vectors[0]["0.weight"].device.type == "cuda"
    np.testing.assert_allclose(eig.values, ref[::-1][:2], rtol=1e-8)


# --------------------------------------------------------------------------------------------------------
# closed forms: linear and logistic regression
# --------------------------------------------------------------------------------------------------------


def _regression_data(n_samples=40, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, dim))
    return x, np.hstack([x, np.ones((n_samples, 1))])  # the ones column carries the bias


def _sum_over_outputs_mse(out, target):
    return ((out - target) ** 2).sum(dim=1).mean()


# nn.MSELoss (reduction "mean") fails under torch.func's jvp-of-grad in torch 2.13 ("ZeroTensors are immutable",
# pytorch/pytorch#123996), so that case takes the double-backward HVP
@pytest.mark.parametrize("loss_fn, per_output, mode", [(_sum_over_outputs_mse, True, "forward-over-reverse"),
                                                       (nn.MSELoss(), False, "double-backward")])
def test_linear_regression_hessian_is_the_closed_form(loss_fn, per_output, mode):
    """Convention: for L = (1/N) Σₙ Σₖ (Wxₙ + b − yₙ)ₖ² the Hessian over (W, b) is 2·X̃ᵀX̃/N ⊗ I_K (X̃ = [X, 1]);
    nn.MSELoss (the mean over all N·K values) divides that by K."""
    x, xa = _regression_data()
    k_out, (n_samples, dim) = 3, x.shape
    torch.manual_seed(3)
    model = nn.Linear(dim, k_out).double()
    target = torch.as_tensor(np.random.default_rng(1).normal(size=(n_samples, k_out)))
    hvp, params = module_hvp(model, loss_fn, torch.as_tensor(x), target, mode)
    op = HessianOperator(hvp, params)
    scale = 1.0 if per_output else 1.0 / k_out
    gram = 2 * xa.T @ xa / n_samples * scale
    # closed form in the parameter order (weight row-major (k, d), then bias k)
    idx = lambda k, d: k * dim + d if d < dim else k_out * dim + k  # noqa: E731
    closed = np.zeros(op.shape)
    for k in range(k_out):
        for d in range(dim + 1):
            for e in range(dim + 1):
                closed[idx(k, d), idx(k, e)] = gram[d, e]
    np.testing.assert_allclose(dense_matrix(op), closed, rtol=1e-12, atol=1e-13)
    ref = np.linalg.eigvalsh(gram)  # each eigenvalue K times
    np.testing.assert_allclose(top_eigen(op, k=4, which="LA", tol=0).values, [ref[-1]] * 3 + [ref[-2]], rtol=1e-8)
    np.testing.assert_allclose(top_eigen(op, k=2, which="SA", tol=0).values, [ref[0]] * 2, rtol=1e-8)
    exact = k_out * np.trace(gram)
    assert abs(hutchpp(op, matvecs=3 * op.shape[0], seed=0).estimate - exact) < 1e-10 * exact


def test_logistic_regression_hessian_is_the_closed_form():
    """H = X̃ᵀ diag(p(1 − p)) X̃ / N for the mean binary cross-entropy with logits, X̃ = [X, 1]."""
    x, xa = _regression_data(n_samples=60, dim=4, seed=2)
    torch.manual_seed(4)
    model = nn.Linear(4, 1).double()
    labels = np.random.default_rng(5).integers(0, 2, size=(60, 1)).astype(np.float64)
    hvp, params = module_hvp(model, nn.BCEWithLogitsLoss(), torch.as_tensor(x), torch.as_tensor(labels))
    op = HessianOperator(hvp, params)
    w = np.append(params["weight"].numpy().reshape(-1), params["bias"].numpy())
    p = 1 / (1 + np.exp(-(xa @ w)))
    closed = xa.T @ (xa * (p * (1 - p))[:, None]) / 60
    ref = np.linalg.eigvalsh(closed)
    np.testing.assert_allclose(top_eigen(op, k=2, which="LA", tol=0).values, ref[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(top_eigen(op, k=2, which="SA", tol=0).values, ref[:2], rtol=1e-8)
    assert abs(hutchpp(op, matvecs=15, seed=1).estimate - np.trace(closed)) < 1e-10 * np.trace(closed)
    q = slq(op, steps=5, runs=1, seed=0)
    np.testing.assert_allclose(q.nodes, ref, rtol=1e-8)


# --------------------------------------------------------------------------------------------------------
# curvature maps
# --------------------------------------------------------------------------------------------------------


def _quartic_problem(n=8, seed=0):
    rng = np.random.default_rng(seed)
    theta0 = rng.normal(scale=0.5, size=n)
    d, _ = np.linalg.qr(rng.normal(size=(n, 2)))  # two orthonormal directions
    return theta0, d[:, 0], d[:, 1]


def _quartic_operator_at(theta0, d1, d2):
    def loss(p):
        t = p["theta"]
        return (t**4 - t**2).sum()

    def operator_at(c):
        theta = theta0 + c[0] * d1 + (c[1] * d2 if c.size > 1 else 0.0)
        params = {"theta": torch.as_tensor(theta)}
        return HessianOperator(func_hvp(loss, params), params)

    return operator_at


@pytest.mark.parametrize("warm", [True, False])
def test_curvature_map_of_the_quartic_matches_its_closed_form(warm):
    theta0, d1, d2 = _quartic_problem()
    grid = Grid.from_specs("-1:1:5", "-0.5:0.5:4")
    done = []
    cmap = curvature_map(_quartic_operator_at(theta0, d1, d2), grid, tol=0, warm=warm,
                         on_point=lambda i, total: done.append((i, total)))
    assert cmap.lmax.shape == cmap.lmin.shape == cmap.ratio.shape == cmap.hvps.shape == (5, 4)
    assert done[-1] == (20, 20) and len(done) == 20
    for i, a in enumerate(grid.x):
        for j, b in enumerate(grid.y):
            diag = 12 * (theta0 + a * d1 + b * d2) ** 2 - 2  # the Hessian of Σ(θ⁴ − θ²) is diag(12θ² − 2)
            assert abs(cmap.lmax[i, j] - diag.max()) <= 1e-8 * abs(diag).max()
            assert abs(cmap.lmin[i, j] - diag.min()) <= 1e-8 * abs(diag).max()
            assert abs(cmap.ratio[i, j] - abs(diag.min() / diag.max())) <= 1e-7 * abs(diag.min() / diag.max())
    assert np.all(cmap.hvps > 0)


def test_curvature_map_on_a_line():
    theta0, d1, d2 = _quartic_problem(n=5, seed=1)
    grid = Grid.from_specs("-1:1:7")
    cmap = curvature_map(_quartic_operator_at(theta0, d1, d2), grid, tol=0)
    ref = np.array([12 * (theta0 + a * d1) ** 2 - 2 for a in grid.x])
    np.testing.assert_allclose(cmap.lmax, ref.max(axis=1), rtol=1e-8)
    np.testing.assert_allclose(cmap.lmin, ref.min(axis=1), rtol=1e-8, atol=1e-10)
