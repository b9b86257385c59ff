"""Curve training between fixed endpoints, against closed-form optima of toy losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossmap.connect import barriers, curve_coefficients, locate_max, train_curve
from lossmap.errors import LossmapError

ONE_BATCH = [(torch.zeros(1), torch.zeros(1))]  # a toy's loss ignores the data: one step per epoch


def _returned(output, target):
    return output


class Toy(nn.Module):
    """A parameter vector whose forward returns ``f(θ)``: with ``loss_fn = _returned`` the loss is f."""

    def __init__(self, f, dim):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.f = f

    def forward(self, x):
        return self.f(self.theta)


def test_quadratic_bend_reaches_minus_three_quarters_of_a_plus_b():
    # L(θ) = ½ θᵀHθ. With φ(t) = a(t)A + b(t)θ + c(t)B, a = (1−t)², b = 2t(1−t), c = t², the gradient
    # of E_t L(φ(t)) in θ is H(E[ab]A + E[b²]θ + E[bc]B). Beta integrals: E[ab] = 2∫t(1−t)³ = 1/10,
    # E[b²] = 4∫t²(1−t)² = 2/15, E[bc] = 2∫t³(1−t) = 1/10, so for any invertible H the optimum is
    # θ* = −(1/10)(A + B)/(2/15) = −¾(A + B).
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    h = q @ torch.diag(torch.linspace(1, 4, 6, dtype=torch.float64)) @ q.T
    a, b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    model = Toy(lambda th: 0.5 * th @ h @ th, 6)
    curve = train_curve(model, {"theta": a}, {"theta": b}, ONE_BATCH, _returned,
                        epochs=200, lr=1.0, momentum=0.9, t_samples=64, seed=0)
    target = -0.75 * (a + b)
    # Tolerance: E_t's Hessian is (2/15)H (eigenvalues 0.13…0.53); heavy-ball SGD (lr 1, momentum .9)
    # under the Garipov schedule leaves an optimization residual of 4.9e-5 relative after 200 steps
    # (measured with 512 values of t per step, where sampling noise is negligible). With 32 mirrored
    # stratified pairs per step the t-sampling noise (~32^(−5/2) of the gradient's scale) adds
    # about as much again: observed 0.9–1.7e-4 over seeds 0–3. A wrong curve weight moves the bend
    # by tens of percent.
    assert float((curve.bend["theta"] - target).norm() / target.norm()) < 1e-3
    assert torch.equal(curve.A["theta"], a) and torch.equal(curve.B["theta"], b)


def _double_well(k, c):
    def f(th):
        x, y = th[0], th[1]
        return (x**2 - 1) ** 2 + k * (y - c * (1 - x**2)) ** 2
    return f


def test_double_well_curve_passes_the_saddle():
    # L(x, y) = (x² − 1)² + k(y − c(1 − x²))²: minima (±1, 0), saddle (0, c) with L = 1, and the straight
    # segment y = 0 peaks at x = 0 with L = 1 + kc². The Bezier curve with bend (0, 2c) is
    # x = 2t − 1, y = 4ct(1 − t) = c(1 − x²): exactly the valley, along which max L = 1.
    k, c = 10.0, 1.0
    f = _double_well(k, c)
    a, b = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    line = lambda al: np.array([float(f((1 - s) * a + s * b)) for s in al])  # noqa: E731
    straight = barriers(np.linspace(0, 1, 25), line(np.linspace(0, 1, 25)))
    assert straight.frankle == pytest.approx(1 + k * c * c, abs=1e-12)
    assert straight.entezari == pytest.approx(1 + k * c * c, abs=1e-12)

    curve = train_curve(Toy(f, 2), {"theta": a}, {"theta": b}, ONE_BATCH, _returned,
                        epochs=200, lr=0.3, momentum=0.9, t_samples=16, seed=1)
    on_curve = lambda ts: np.array([float(f(curve.point(t)["theta"])) for t in ts])  # noqa: E731
    peak = locate_max(on_curve, np.linspace(0, 1, 25), refine_rounds=12)
    # Tolerances: the bend is within 2e-3 of (0, 2c) (t-sampling noise with 8 mirrored pairs per
    # step; observed ≤ 8e-4 over seeds 0–1), and an error δ in the bend moves the curve's peak off
    # the saddle value by O(kδ²) ≲ 4e-5; observed |peak − 1| ≤ 3e-8.
    assert torch.allclose(curve.bend["theta"], torch.tensor([0.0, 2 * c], dtype=torch.float64), atol=2e-3, rtol=0)
    assert abs(peak.score - 1.0) < 1e-4
    assert barriers(peak.alphas, peak.values).frankle < 1 + 1e-4


def test_points_and_coefficients_agree_with_the_bezier_and_chain_formulas():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    model = Toy(lambda th: (th**2).sum(), 5)
    for kind in ("bezier", "polychain"):
        curve = train_curve(model, {"theta": a}, {"theta": b}, ONE_BATCH, _returned, kind=kind, epochs=3, lr=0.1)
        theta = curve.bend["theta"]
        assert torch.equal(curve.point(0.0)["theta"], a) and torch.equal(curve.point(1.0)["theta"], b)
        for t in (0.1, 0.25, 0.5, 0.8):
            if kind == "bezier":
                direct = (1 - t) ** 2 * a + 2 * t * (1 - t) * theta + t * t * b
            else:
                direct = a + 2 * t * (theta - a) if t <= 0.5 else theta + (2 * t - 1) * (b - theta)
            c1, c2 = curve.coefficients(t)
            torch.testing.assert_close(curve.point(t)["theta"], direct, rtol=0, atol=1e-14)
            torch.testing.assert_close(a + c1 * (theta - a) + c2 * (b - a), direct, rtol=0, atol=1e-14)
    assert curve_coefficients("polychain", 0.75) == (0.5, 0.5)
    c1, c2 = curve_coefficients("bezier", np.array([0.0, 0.5, 1.0]))
    assert c1.tolist() == [0.0, 0.5, 0.0] and c2.tolist() == [0.0, 0.25, 1.0]


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).mean((2, 3))))


def test_curve_training_leaves_model_and_global_rng_unchanged():
    torch.manual_seed(3)
    model, other = BNNet(), BNNet()
    model.eval()
    model.fc.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    g = torch.Generator().manual_seed(4)
    data = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    curve = train_curve(model, model.state_dict(), other.state_dict(), data, F.cross_entropy, epochs=2, lr=0.05)
    again = train_curve(model, model.state_dict(), other.state_dict(), data, F.cross_entropy, epochs=2, lr=0.05)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert not model.fc.bias.requires_grad and model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert sorted(curve.bend) == sorted(n for n, _ in model.named_parameters())
    assert all(torch.equal(curve.bend[n], again.bend[n]) for n in curve.bend)  # seeded: reproducible
    assert len(curve.losses) == 2 and all(np.isfinite(curve.losses))


@pytest.mark.parametrize(
    "kwargs",
    [dict(kind="spline"), dict(optimizer="rmsprop"), dict(epochs=0), dict(lr=0.0), dict(t_samples=0), dict(lr_schedule="cosine")],
)
def test_bad_settings_are_refused(kwargs):
    model = Toy(lambda th: (th**2).sum(), 2)
    s = {"theta": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(LossmapError):
        train_curve(model, s, {"theta": torch.ones(2, dtype=torch.float64)}, ONE_BATCH, _returned, **kwargs)
    with pytest.raises(LossmapError):
        train_curve(model, s, {"other": torch.ones(2)}, ONE_BATCH, _returned)
    with pytest.raises(LossmapError):
        train_curve(model, s, s, [], _returned)
    with pytest.raises(LossmapError):
        train_curve(model, s, s, ONE_BATCH, lambda out, y: out.reshape(1).expand(3))  # not a scalar
