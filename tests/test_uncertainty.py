"""Standard errors, stopping to a stated precision and direction ensembles against independent oracles:
the ``statistics`` module (exact rational arithmetic), enumeration of all samples of a small set, closed
forms of quadratic forms of random directions, and simulated loss streams.

Statistical tests use fixed seeds, so they pass or fail deterministically; the false-failure rate stated
with each is the chance that a correct implementation would fail it for a random seed.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
import torch
import xarray as xr

from lossmap.errors import LossmapError
from lossmap.uncertainty import ensemble, moments, sequential
from lossmap.uncertainty.moments import Moments
from lossmap.uncertainty.sequential import StoppingRule

#: two-sided normal quantile for a false-failure rate of 1e-4 per assertion
Z4 = 3.8906


def feed(m: Moments, values: np.ndarray, sizes, reference: np.ndarray | None = None) -> Moments:
    """Feed ``values[..., :]`` into ``m`` in consecutive batches of the given sizes."""
    start = 0
    for size in sizes:
        ref = None if reference is None else torch.from_numpy(reference[..., start:start + size])
        m.update(torch.from_numpy(values[..., start:start + size]), reference=ref)
        start += size
    assert start == values.shape[-1]
    return m


# ---------------------------------------------------------------------------------------------- moments


def test_mean_and_se_equal_the_statistics_module_for_every_element():
    rng = np.random.default_rng(1)
    values = rng.gamma(0.7, 2.0, size=(2, 3, 37))
    m = feed(Moments.zeros((2, 3)), values, [5, 1, 13, 18])
    for i, j in itertools.product(range(2), range(3)):
        xs = [float(v) for v in values[i, j]]
        assert float(moments.mean(m)[i, j]) == pytest.approx(statistics.fmean(xs), rel=1e-13)
        assert float(moments.std(m)[i, j]) == pytest.approx(statistics.stdev(xs), rel=1e-12)
        assert float(moments.standard_error(m)[i, j]) == pytest.approx(statistics.stdev(xs) / math.sqrt(37), rel=1e-12)
    assert m.n.tolist() == [[37.0] * 3] * 2


def test_float32_values_are_accumulated_in_float64():
    values = torch.tensor([0.1, 0.2, 0.7, 1e-3], dtype=torch.float32)
    m = Moments.zeros().update(values)
    xs = [float(v) for v in values]  # the float32 values, exactly, as Python floats
    assert m.mean.dtype == torch.float64
    assert float(moments.mean(m)) == pytest.approx(statistics.fmean(xs), rel=1e-15)
    assert float(moments.std(m)) == pytest.approx(statistics.stdev(xs), rel=1e-14)


def test_variance_survives_a_large_offset():
    # a sum-of-squares formula loses every digit here (1e16 squares, variance ~1); Welford/Chan keep them
    rng = np.random.default_rng(2)
    values = 1e8 + rng.normal(size=1000)
    m = feed(Moments.zeros(), values, [1, 99, 400, 500])
    assert float(moments.std(m)) ** 2 == pytest.approx(statistics.variance(values.tolist()), rel=1e-7)


def test_two_rank_merge_equals_one_pass():
    rng = np.random.default_rng(3)
    values = rng.gamma(0.5, 1.0, size=(4, 1000))
    reference = rng.gamma(0.5, 1.0, size=1000)
    one = Moments.zeros((4,), paired=True).update(torch.from_numpy(values), reference=torch.from_numpy(reference))
    # uneven shares, each rank reading its share in its own batch sizes
    a = feed(Moments.zeros((4,), paired=True), values[:, :313], [64] * 4 + [57], reference[:313])
    b = feed(Moments.zeros((4,), paired=True), values[:, 313:], [100] * 6 + [87], reference[313:])
    gathered = torch.stack([a.to_tensor(), b.to_tensor()])  # what all_gather returns
    for merged in (moments.merge(a, b), moments.merge_gathered(gathered), moments.merge_gathered([b.to_tensor(), a.to_tensor()])):
        assert torch.equal(merged.n, one.n)
        for field in ("mean", "diff_mean"):
            assert torch.allclose(getattr(merged, field), getattr(one, field), rtol=1e-12, atol=0)
        for field in ("m2", "diff_m2"):
            assert torch.allclose(getattr(merged, field), getattr(one, field), rtol=1e-12, atol=0)
    xs = values[2].tolist()
    assert float(moments.standard_error(moments.merge(a, b))[2]) == pytest.approx(statistics.stdev(xs) / math.sqrt(1000), rel=1e-12)
    assert moments.merge(a, Moments.zeros((4,), paired=True)).to_tensor().equal(a.to_tensor())  # an idle rank


def test_fpc_on_a_hand_example():
    m = Moments.zeros().update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # s² = 5/3, SE² = s²/4 = 5/12; of a set of N = 10: × (1 − 4/10) = 1/4
    assert float(moments.standard_error(m)) == pytest.approx(math.sqrt(5 / 12), rel=1e-15)
    assert float(moments.standard_error_set(m, 10)) == pytest.approx(0.5, rel=1e-15)
    assert float(moments.fpc(4, 10)) == pytest.approx(math.sqrt(0.6), rel=1e-15)


def test_full_pass_has_zero_error_wrt_the_set():
    values = torch.tensor([[0.3, 2.0, 0.1, 5.0, 0.7], [1.0, 1.0, 1.5, 0.2, 0.0]])
    ref = torch.tensor([0.2, 1.0, 0.4, 4.0, 0.5])
    m = Moments.zeros((2,), paired=True).update(values[:, :2], reference=ref[:2]).update(values[:, 2:], reference=ref[2:])
    assert moments.standard_error_set(m, 5).tolist() == [0.0, 0.0]
    assert moments.paired_standard_error_set(m, 5).tolist() == [0.0, 0.0]
    assert (moments.standard_error(m) > 0.1).all()  # the distribution view keeps its error


def test_error_wrt_the_set_is_unbiased_over_all_samples_of_a_small_set():
    # every sample of n = 3 from a set of N = 7, without replacement, equally likely: the mean of SE_set² over
    # all 35 samples must equal the exact variance of the sample mean (Cochran's theorem; a √((N−n)/(N−1))
    # correction with the sample s would miss it by the factor N/(N−1))
    population = [0.1, 0.4, 2.5, 0.05, 1.3, 7.0, 0.9]
    subsets = list(itertools.combinations(population, 3))
    set_mean = statistics.fmean(population)
    exact_var = statistics.fmean([(statistics.fmean(s) - set_mean) ** 2 for s in subsets])
    m = Moments.zeros((len(subsets),)).update(torch.tensor(subsets, dtype=torch.float64))
    assert float((moments.standard_error_set(m, 7) ** 2).mean()) == pytest.approx(exact_var, rel=1e-12)


def test_paired_se_is_the_se_of_per_sample_differences_and_beats_unpaired_when_correlated():
    rng = np.random.default_rng(4)
    centre = rng.gamma(0.5, 1.0, size=500)
    point = 1.1 * centre + 0.05 + rng.normal(scale=0.02, size=500)  # hard examples stay hard
    m = feed(Moments.zeros(paired=True), point, [128, 128, 128, 116], centre)
    diffs = (point - centre).tolist()
    paired = float(moments.paired_standard_error(m))
    assert paired == pytest.approx(statistics.stdev(diffs) / math.sqrt(500), rel=1e-12)
    assert float(moments.paired_mean(m)) == pytest.approx(statistics.fmean(diffs), rel=1e-12)
    unpaired = math.hypot(statistics.stdev(point.tolist()), statistics.stdev(centre.tolist())) / math.sqrt(500)
    assert paired < 0.2 * unpaired


def test_paired_se_matches_its_closed_form_and_broadcasts_the_reference():
    # L(θ) = L(θ0) + c + ε, ε ~ N(0, τ²): the paired SE is τ/√n whatever the spread of L(θ0)
    rng = np.random.default_rng(5)
    n, c, tau = 20_000, 0.3, 0.25
    centre = rng.gamma(0.5, 2.0, size=n)
    noise = rng.normal(scale=tau, size=(3, n)) * np.array([[1.0], [2.0], [0.0]])
    m = feed(Moments.zeros((3,), paired=True), centre + c + noise, [5000] * 4, centre)  # reference: Tensor[batch]
    se = moments.paired_standard_error(m)
    # the sample sd of n normal values errs by about 1/√(2n) = 0.5 % relative: 3 % is six of those
    assert float(se[0]) == pytest.approx(tau / math.sqrt(n), rel=0.03)
    assert float(se[1]) == pytest.approx(2 * tau / math.sqrt(n), rel=0.03)
    assert float(se[2]) == pytest.approx(0.0, abs=1e-12)  # L(θ) − L(θ0) is the constant c
    assert float(moments.paired_mean(m)[0]) == pytest.approx(c, abs=Z4 * tau / math.sqrt(n))
    assert float(moments.standard_error(m)[2]) > 4 * float(se[0])  # the loss itself is far less certain (≈ 5.7×)


def test_mask_leaves_stopped_elements_alone():
    m = Moments.zeros((2,)).update(torch.tensor([[1.0, 3.0], [2.0, 4.0]]))
    before = m.to_tensor()[:, 1].clone()
    m.update(torch.tensor([[5.0, 7.0], [100.0, 200.0]]), mask=torch.tensor([True, False]))
    assert torch.equal(m.to_tensor()[:, 1], before)
    assert float(moments.mean(m)[0]) == pytest.approx(4.0)
    assert float(moments.std(m)[0]) == pytest.approx(statistics.stdev([1.0, 3.0, 5.0, 7.0]))


def test_results_and_packing_round_trip():
    m = Moments.zeros((2,), paired=True).update(torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]]), reference=torch.zeros(3))
    back = Moments.from_tensor(m.to_tensor())
    assert back.paired and torch.equal(back.to_tensor(), m.to_tensor())
    out = moments.results(m, population=6)
    assert set(out) == {"n", "mean", "sd", "se", "se_set", "diff_mean", "paired_se", "paired_se_set"}
    assert float(out["se_set"][0]) == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]) / math.sqrt(3) * math.sqrt(0.5))


def test_moments_bad_input_raises_lossmap_error():
    m = Moments.zeros((2,))
    with pytest.raises(LossmapError, match=r"\(3, 4\)"):
        m.update(torch.zeros(3, 4))
    with pytest.raises(LossmapError, match="reference"):
        m.update(torch.zeros(2, 4), reference=torch.zeros(4))
    with pytest.raises(LossmapError, match="reference"):
        Moments.zeros((2,), paired=True).update(torch.zeros(2, 4), reference=torch.zeros(5))
    with pytest.raises(LossmapError, match="population"):
        moments.standard_error_set(Moments.zeros().update(torch.ones(5)), 4)
    with pytest.raises(LossmapError, match="population=0"):
        moments.fpc(1, 0)
    with pytest.raises(LossmapError, match="rows"):
        Moments.from_tensor(torch.zeros(4, 2))
    with pytest.raises(LossmapError, match="merge"):
        moments.merge(Moments.zeros((2,)), Moments.zeros((3,)))


# ------------------------------------------------------------------------------------------- sequential


def loop_required(sd: float, tol: float, z: float, population: int | None, limit: int = 10**6) -> int:
    """Smallest n with z·sd/√n·√(1 − n/N) ≤ tol, by trying every n."""
    for n in range(1, (population or limit) + 1):
        corr = 1.0 if population is None else 1 - n / population
        if z * sd * math.sqrt(corr / n) <= tol * (1 + 1e-12):
            return n
    raise AssertionError("no n meets the tolerance")


@pytest.mark.parametrize("sd,tol,z,population", [
    (1.0, 0.1, 1.96, None), (0.7, 0.02, 1.96, 10_000), (2.5, 0.3, 2.576, 50), (0.3, 1.0, 1.96, 100), (1.0, 0.05, 1.0, 400),
])
def test_required_samples_matches_a_loop(sd, tol, z, population):
    assert sequential.required_samples(sd, tol, z, population) == loop_required(sd, tol, z, population)


def test_rule_with_a_dominant_pilot_stops_at_the_planned_batch():
    # the data's own sd (~0.06) is far below the pilot (2.0): the stop is fixed in advance by the pilot
    rng = np.random.default_rng(6)
    N, batch, tol, z = 5000, 25, 0.1, 1.96
    values = rng.uniform(0.9, 1.1, size=(3, N))
    rule = StoppingRule(tol, z=z, min_batches=1, pilot_sd=2.0, population=N)
    for b in torch.from_numpy(values).split(batch, dim=1):
        assert not rule.done
        rule.update(b)
        if rule.done:
            break
    planned = math.ceil(loop_required(2.0, tol, z, N) / batch) * batch
    assert rule.samples.tolist() == [planned] * 3
    for i in range(3):
        assert float(moments.mean(rule.moments)[i]) == pytest.approx(statistics.fmean(values[i, :planned].tolist()), rel=1e-13)


def test_rule_waits_for_min_batches_and_always_stops_at_a_full_pass():
    values = torch.from_numpy(np.random.default_rng(7).gamma(0.5, 1.0, size=(2, 300)))
    lax = StoppingRule(tol=100.0, min_batches=3, population=300)
    for b in values.split(20, dim=1):
        lax.update(b)
        if lax.done:
            break
    assert lax.samples.tolist() == [60, 60]
    strict = StoppingRule(tol=1e-9, min_batches=1, population=300)
    for b in values.split(20, dim=1):
        strict.update(b)
    assert strict.done and strict.samples.tolist() == [300, 300]
    assert moments.standard_error_set(strict.moments, 300).tolist() == [0.0, 0.0]


def simulate(points: int, N: int, shape: float, tol: float, batch: int, min_batches: int, pilot: bool,
             relative: bool = False, seed: int = 0) -> tuple[float, float]:
    """Coverage (fraction of points whose stopped mean is within the tolerance of the set's mean) and mean
    samples used, for ``points`` independent sets of gamma-distributed per-example losses read in one shared
    random order."""
    rng = np.random.default_rng(seed)
    populations = rng.gamma(shape, 1.0, size=(points, N)) * rng.uniform(0.5, 1.5, size=(points, 1))
    centre = rng.gamma(shape, 1.0, size=N)  # the pilot: the centre point's full pass
    order = rng.permutation(N)
    rule = StoppingRule(tol, relative=relative, z=1.96, min_batches=min_batches,
                        pilot_sd=float(centre.std(ddof=1)) if pilot else None, population=N)
    for b in torch.from_numpy(populations[:, order]).split(batch, dim=1):
        rule.update(b)
        if rule.done:
            break
    set_means = populations.mean(axis=1)
    bound = tol * np.abs(set_means) if relative else tol
    within = np.abs(moments.mean(rule.moments).numpy() - set_means) <= bound
    return float(within.mean()), float(rule.samples.double().mean())


# nominal 95 % minus a one-sided binomial margin at 1e-4: a rule whose true coverage is 95 % falls below it
# with probability 1e-4 (the guarded rule measures ≈ 97 %, so its false-failure rate is far smaller)
POINTS = 2000
FLOOR = 0.95 - 3.72 * math.sqrt(0.95 * 0.05 / POINTS)


@pytest.mark.parametrize("relative,tol", [(False, 0.05), (True, 0.1)])
def test_guarded_rule_reaches_nominal_coverage_on_skewed_losses(relative, tol):
    coverage, used = simulate(POINTS, N=2000, shape=0.5, tol=tol, batch=32, min_batches=4, pilot=True, relative=relative)
    assert coverage >= FLOOR
    assert used < 0.5 * 2000  # and it saves most of the full pass


def test_unguarded_rule_undercovers_on_very_skewed_losses():
    # the optional-stopping trap the docstring describes: tiny batches, no pilot, a decision after one batch
    coverage, _ = simulate(POINTS, N=2000, shape=0.2, tol=0.05, batch=4, min_batches=1, pilot=False)
    assert coverage < 0.85  # measured ≈ 0.6; 0.85 is > 10 binomial sds below nominal


def test_rule_bad_input_raises_lossmap_error():
    for kwargs, word in [
        (dict(tol=0.0), "tolerance"), (dict(tol=-0.1), "tolerance"), (dict(tol=math.nan), "tolerance"),
        (dict(tol=0.1, min_batches=0), "min_batches"), (dict(tol=0.1, min_batches=1.5), "min_batches"),
        (dict(tol=0.1, z=0.0), "z="), (dict(tol=0.1, population=0), "population"),
        (dict(tol=0.1, pilot_sd=-1.0), "pilot_sd"),
    ]:
        with pytest.raises(LossmapError, match=word):
            StoppingRule(**kwargs)
    with pytest.raises(LossmapError, match="tolerance"):
        sequential.required_samples(1.0, 0.0)


# --------------------------------------------------------------------------------------------- ensemble


def test_curvature_is_exact_for_quadratics_on_uneven_and_offset_grids():
    x = np.array([-1.0, -0.3, 0.0, 0.2, 0.45, 1.0])
    assert ensemble.centre_curvature(x, 3 * x**2 - 2 * x + 1) == pytest.approx(6.0, rel=1e-12)
    shifted = np.array([-0.9, -0.35, 0.1, 0.6, 1.3])  # no 0: the centre is the point at 0.1
    assert ensemble.centre_curvature(shifted, -0.5 * shifted**2 + 4 * shifted) == pytest.approx(-1.0, rel=1e-12)
    assert math.isnan(ensemble.centre_curvature([0.0, 0.5, 1.0], [1.0, 2.0, 4.0]))  # centre at the edge
    xs, ys = np.linspace(-1, 1, 7), np.array([-0.5, -0.1, 0.0, 0.3])
    xx, yy = np.meshgrid(xs, ys, indexing="ij")
    ds = xr.Dataset({"loss": (("x", "y"), 1.5 * xx**2 + 0.25 * yy**2 + 0.7 * xx * yy + xx)}, coords={"x": xs, "y": ys})
    c = ensemble.curvature(ds)
    assert c["curvature_x"] == pytest.approx(3.0, rel=1e-12) and c["curvature_y"] == pytest.approx(0.5, rel=1e-12)


def quadratic_curvatures(kind: str, eig: np.ndarray, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Curvature at the centre of 1-D slices of L(θ) = ½(θ−θ*)ᵀH(θ−θ*) + 0.7 through a θ0 ≠ θ*, one per
    direction seed, from the ensemble code."""
    p = eig.size
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    h = q @ np.diag(eig) @ q.T
    theta0, theta_star = rng.normal(size=p), rng.normal(size=p)
    d = rng.normal(size=(seeds, p))
    if kind == "sphere":
        d /= np.linalg.norm(d, axis=1, keepdims=True)
    x = np.linspace(-1, 1, 21)
    delta = theta0 - theta_star + x[None, :, None] * d[:, None, :]  # [K, G, P]
    curves = 0.5 * np.einsum("kgp,pq,kgq->kg", delta, h, delta) + 0.7
    return ensemble.seed_summaries(ensemble.stack_seeds(x, curves))["curvature_x"]


@pytest.mark.parametrize("kind", ["gaussian", "sphere"])
def test_curvature_along_random_directions_has_its_closed_form_distribution(kind):
    # dᵀHd: Gaussian d ~ N(0, I): mean tr H, variance 2Σλ²; uniform on the sphere: mean tr H/P, variance
    # 2/(P+2)·(Σλ²/P − (Σλ/P)²). Two z-tests per case at 1e-4 two-sided each (false-failure rate ≤ 2e-4 per
    # case for a random seed, asymptotically); the variance test's SE uses the sample fourth moment.
    rng = np.random.default_rng(8)
    eig = np.linspace(-1.0, 3.0, 12)
    p, k = eig.size, 3000
    c = quadratic_curvatures(kind, eig, k, rng)
    if kind == "gaussian":
        mean, var = eig.sum(), 2 * (eig**2).sum()
    else:
        mean, var = eig.sum() / p, 2 / (p + 2) * ((eig**2).sum() / p - (eig.sum() / p) ** 2)
    assert abs(c.mean() - mean) <= Z4 * math.sqrt(var / k)
    s2 = c.var(ddof=1)
    m4 = ((c - c.mean()) ** 4).mean()
    assert abs(s2 - var) <= Z4 * math.sqrt((m4 - s2**2) / k)
    # a curvature off by a factor 2 (a missing ½) lies far outside both tests
    assert abs(2 * c.mean() - mean) > Z4 * math.sqrt(var / k) or abs(4 * s2 - var) > Z4 * math.sqrt((m4 - s2**2) / k)


def test_band_is_the_median_and_10_90_quantiles_over_seeds():
    rng = np.random.default_rng(9)
    curves = rng.normal(size=(11, 5))
    med, lo, hi = ensemble.band(curves)
    for g in range(5):
        col = sorted(curves[:, g].tolist())  # with 11 seeds the linear quantiles hit order statistics 1, 5, 9
        assert (med[g], lo[g], hi[g]) == (col[5], col[1], col[9])
    curves[3, 2] = np.nan
    med, _, _ = ensemble.band(curves)
    assert med[2] == pytest.approx(statistics.median([v for v in curves[:, 2].tolist() if not math.isnan(v)]))


def test_seed_summaries_against_closed_forms_per_seed():
    x = np.linspace(-1, 1, 401)
    a = np.array([0.5, 1.0, 2.0, 4.0])
    ds = ensemble.stack_seeds(x, a[:, None] * x**2 + 0.2, seeds=[10, 11, 12, 13])
    s = ensemble.seed_summaries(ds, rise=0.1, radius=0.5)
    assert s["seed"].tolist() == [10, 11, 12, 13]
    np.testing.assert_allclose(s["curvature_x"], 2 * a, rtol=1e-9)
    np.testing.assert_allclose(s["rise_radius_xpos"], np.sqrt(0.1 / a), atol=2e-5)
    inside = np.abs(x) <= 0.5 + 1e-12  # the grid points of the ball, averaged by hand
    np.testing.assert_allclose(s["ball_mean_increase"], a * np.mean(x[inside] ** 2), rtol=1e-9)
    y = np.linspace(-1, 1, 41)
    planes = np.stack([ai * x[:, None] ** 2 + 3.0 * y[None, :] ** 2 for ai in a])
    s2 = ensemble.seed_summaries(ensemble.stack_seeds(x, planes, y=y), rise=0.3)
    np.testing.assert_allclose(s2["curvature_y"], 6.0, rtol=1e-9)
    np.testing.assert_allclose(s2["rise_radius_ypos"], math.sqrt(0.1), atol=2e-3)


def test_t_interval_on_a_hand_example_and_its_coverage():
    d = ensemble.describe([1.0, 2.0, 3.0, 4.0], level=0.9)
    half = 2.353363 * math.sqrt(5 / 3) / 2  # t quantile 0.95 with 3 df, from a table
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-5)
    assert d["median"] == 2.5 and d["n"] == 4 and d["missing"] == 0
    rng = np.random.default_rng(10)
    hits = [(lambda r: r["ci_low"] <= 3.0 <= r["ci_high"])(ensemble.describe(rng.normal(3.0, 2.0, 8))) for _ in range(2000)]
    assert abs(np.mean(hits) - 0.9) <= Z4 * math.sqrt(0.09 / 2000)  # exact for normal values


def test_bootstrap_interval_is_seeded_and_near_nominal():
    values = np.random.default_rng(11).gamma(2.0, 1.0, 12)
    a = ensemble.describe(values, method="bootstrap", seed=5)
    assert a == ensemble.describe(values, method="bootstrap", seed=5)
    assert a["ci_low"] != ensemble.describe(values, method="bootstrap", seed=6)["ci_low"]
    rng = np.random.default_rng(12)
    hits = [(lambda r: r["ci_low"] <= 0.0 <= r["ci_high"])(ensemble.describe(rng.normal(size=30), method="bootstrap",
            seed=i, resamples=1000)) for i in range(400)]
    # the percentile bootstrap covers ≈ 88 % at K = 30; 0.80–0.96 rejects an interval of the values
    # themselves (≈ 100 %) or of one resample (far below)
    assert 0.80 <= np.mean(hits) <= 0.96


def welch_oracle(a, b):
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df


def test_compare_uses_welchs_statistic_and_the_paired_one():
    from scipy import stats as sps

    rng = np.random.default_rng(13)
    a, b = rng.normal(1.0, 0.3, 8).tolist(), rng.normal(1.2, 0.6, 6).tolist()
    c = ensemble.compare(a, b)
    t, df = welch_oracle(a, b)
    assert c.statistic == pytest.approx(t, rel=1e-10) and c.df == pytest.approx(df, rel=1e-10)
    assert c.pvalue == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-8)
    # same draws for both models: the seed-to-seed spread is shared, the shift of 0.05 is not
    base = rng.normal(2.0, 1.0, 8)
    x, y = base + rng.normal(0, 0.01, 8), base + 0.05 + rng.normal(0, 0.01, 8)
    welch, paired = ensemble.compare(x, y), ensemble.compare(x, y, paired=True)
    d = (x - y).tolist()
    assert paired.statistic == pytest.approx(statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(8)), rel=1e-10)
    assert paired.differ and not welch.differ
    assert "do not differ" in welch.verdict and "do not" not in paired.verdict


def test_compare_holds_its_level_under_the_null_and_finds_a_real_difference():
    rng = np.random.default_rng(14)
    rejections = [ensemble.compare(rng.normal(size=8), rng.normal(size=8)).differ for _ in range(2000)]
    assert abs(np.mean(rejections) - 0.05) <= Z4 * math.sqrt(0.05 * 0.95 / 2000)
    assert ensemble.compare(rng.normal(0, 1, 8), rng.normal(4, 1, 8)).differ


def test_compare_summaries_tests_the_shared_flatness_numbers():
    x = np.linspace(-1, 1, 101)
    rng = np.random.default_rng(15)
    sharp = ensemble.seed_summaries(ensemble.stack_seeds(x, rng.uniform(3.0, 4.0, (8, 1)) * x**2), rise=0.1)
    flat = ensemble.seed_summaries(ensemble.stack_seeds(x, rng.uniform(1.0, 1.5, (8, 1)) * x**2), rise=0.1)
    out = ensemble.compare_summaries(sharp, flat, names=("sgd", "adam"))
    assert list(out) == ["rise_radius_xpos", "rise_radius_xneg", "ball_mean_increase", "curvature_x"]
    assert all(r.differ for r in out.values())
    described = ensemble.describe_summaries(sharp)
    assert list(described) == list(out)
    # the model's per-seed curvatures are 2·U(3, 4): the interval for their mean lies inside [6, 8]
    assert 6.0 < described["curvature_x"]["ci_low"] < described["curvature_x"]["ci_high"] < 8.0
    assert described["curvature_x"]["mean"] == pytest.approx(statistics.fmean(sharp["curvature_x"].tolist()))
    assert out["curvature_x"].mean_a > out["curvature_x"].mean_b


def test_nan_seeds_are_left_out_and_counted():
    d = ensemble.describe([1.0, np.nan, 3.0, 2.0])
    assert d["n"] == 3 and d["missing"] == 1 and d["mean"] == pytest.approx(2.0)
    c = ensemble.compare([1.0, np.nan, 1.1, 0.9], [1.0, 1.2, 0.8, np.nan], paired=True)
    assert c.n_a == c.n_b == 2


def test_ensemble_bad_input_raises_lossmap_error():
    with pytest.raises(LossmapError, match="1 direction seed"):
        ensemble.band(np.zeros((1, 5)))
    with pytest.raises(LossmapError, match="low"):
        ensemble.band(np.zeros((3, 5)), low=0.9, high=0.1)
    with pytest.raises(LossmapError, match="1 direction seed"):
        ensemble.describe([1.0])
    with pytest.raises(LossmapError, match="level"):
        ensemble.describe([1.0, 2.0], level=1.5)
    with pytest.raises(LossmapError, match="method"):
        ensemble.describe([1.0, 2.0], method="jackknife")
    with pytest.raises(LossmapError, match="seed"):
        ensemble.compare([1.0], [1.0, 2.0])
    with pytest.raises(LossmapError, match="same seeds"):
        ensemble.compare([1.0, 2.0, 3.0], [1.0, 2.0], paired=True)
    with pytest.raises(LossmapError, match="seed"):
        ensemble.seed_summaries(xr.Dataset({"loss": (("x",), np.zeros(3))}, coords={"x": [-1.0, 0.0, 1.0]}))
