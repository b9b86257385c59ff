"""Permutation alignment: derived structures recover planted permutations exactly.

Oracle: each model's hidden units are permuted by hand (the axes each permutation acts on are written
out per architecture below, and applied with plain indexing), so the planted copy computes the same
function (checked) and the aligned copy must equal model A bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossmap.connect import align, apply_permutation, check_spec, derive_spec, spec_from_axes, weight_matching
from lossmap.errors import LossmapError


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Distinct random values in every float tensor, batch-norm statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                v = torch.randn(t.shape, generator=g, dtype=t.dtype)
                t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v * 0.5)
    return model


def _plant(state: dict, groups: list[tuple[int, list[tuple[str, int, int]]]], seed: int) -> tuple[dict, list]:
    """Permute ``state`` by hand: group k reorders its units with a random permutation on every listed
    (tensor, axis, block)."""
    rng = np.random.default_rng(seed)
    out = {k: v.clone() for k, v in state.items()}
    perms = []
    for size, axes in groups:
        perm = rng.permutation(size)
        assert not np.array_equal(perm, np.arange(size))
        perms.append(perm)
        for name, axis, block in axes:
            t = out[name].movedim(axis, 0)
            t = t.reshape(size, block, *t.shape[1:])[torch.as_tensor(perm)]
            out[name] = t.reshape(size * block, *t.shape[2:]).movedim(0, axis).contiguous()
    return out, perms


def _out(model, state, x):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.func.functional_call(model, state, (x,), tie_weights=False)
    finally:
        model.train(was)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(6, 16), nn.BatchNorm1d(16)
        self.fc2, self.drop = nn.Linear(16, 12), nn.Dropout(0.2)
        self.fc3 = nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.fc1(x)))
        x = self.drop(torch.tanh(self.fc2(x)))
        return self.fc3(x)


MLP_GROUPS = [
    (16, [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("bn1.weight", 0, 1), ("bn1.bias", 0, 1),
          ("bn1.running_mean", 0, 1), ("bn1.running_var", 0, 1), ("fc2.weight", 1, 1)]),
    (12, [("fc2.weight", 0, 1), ("fc2.bias", 0, 1), ("fc3.weight", 1, 1)]),
]


class CNN(nn.Module):
    """conv → BN → ReLU → max-pool → conv → ReLU → flatten → linear → ReLU → linear (8×8 inputs)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.fc1, self.fc2 = nn.Linear(6 * 2 * 2, 10), nn.Linear(10, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.avg_pool2d(F.relu(self.conv2(x)), 1)
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


CNN_GROUPS = [
    (8, [("conv1.weight", 0, 1), ("conv1.bias", 0, 1), ("bn1.weight", 0, 1), ("bn1.bias", 0, 1),
         ("bn1.running_mean", 0, 1), ("bn1.running_var", 0, 1), ("conv2.weight", 1, 1)]),
    (6, [("conv2.weight", 0, 1), ("conv2.bias", 0, 1), ("fc1.weight", 1, 4)]),  # 4 = H·W after flatten
    (10, [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)]),
]


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.layer1, self.layer2 = Block(8, 8, 1), Block(8, 12, 2)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _bn(prefix):
    return [(f"{prefix}.{n}", 0, 1) for n in ("weight", "bias", "running_mean", "running_var")]


RESNET_GROUPS = [
    # the first residual stream: stem, layer1's output, and layer2's inputs
    (8, [("stem.weight", 0, 1), *_bn("bn"), ("layer1.conv1.weight", 1, 1), ("layer1.conv2.weight", 0, 1),
         *_bn("layer1.bn2"), ("layer2.conv1.weight", 1, 1), ("layer2.short.0.weight", 1, 1)]),
    (8, [("layer1.conv1.weight", 0, 1), *_bn("layer1.bn1"), ("layer1.conv2.weight", 1, 1)]),
    (12, [("layer2.conv1.weight", 0, 1), *_bn("layer2.bn1"), ("layer2.conv2.weight", 1, 1)]),
    # the second stream: the block's main path and its 1×1 projection shortcut share one permutation
    (12, [("layer2.conv2.weight", 0, 1), *_bn("layer2.bn2"), ("layer2.short.0.weight", 0, 1),
          *_bn("layer2.short.1"), ("head.weight", 1, 1)]),
]



class TiedLM(nn.Module):
    """Embedding, a residual MLP, layer norm, and an output layer tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc1, self.fc2 = nn.Embedding(11, 8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.ln, self.head = nn.LayerNorm(8), nn.Linear(8, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(self.ln(h))


LM_GROUPS = [
    # the residual stream; the tied matrix is one tensor under two names, permuted alike
    (8, [("emb.weight", 1, 1), ("head.weight", 1, 1), ("fc1.weight", 1, 1), ("fc2.weight", 0, 1),
         ("fc2.bias", 0, 1), ("ln.weight", 0, 1), ("ln.bias", 0, 1)]),
    (16, [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)]),
]


class Mixer(nn.Module):
    """Per-token features, then a token-mixing linear layer applied across tokens (after a transpose)."""

    def __init__(self):
        super().__init__()
        self.embed, self.tokens, self.out = nn.Linear(5, 8), nn.Linear(6, 6), nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.tokens(h.transpose(1, 2)).transpose(1, 2)
        return self.out(F.relu(h).mean(1))


MIXER_GROUPS = [(8, [("embed.weight", 0, 1), ("embed.bias", 0, 1), ("out.weight", 1, 1)])]


def _floats(*shape):
    return lambda g: torch.randn(*shape, generator=g)


CASES = {
    "mlp": (MLP, MLP_GROUPS, _floats(32, 6)),
    "cnn": (CNN, CNN_GROUPS, _floats(8, 3, 8, 8)),
    "resnet": (ResNet, RESNET_GROUPS, _floats(4, 3, 8, 8)),
    "tied-lm": (TiedLM, LM_GROUPS, lambda g: torch.randint(0, 11, (4, 7), generator=g)),
    "mixer": (Mixer, MIXER_GROUPS, _floats(4, 6, 5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_planted_permutation_is_recovered_exactly(case):
    cls, groups, make_input = CASES[case]
    model = _randomize(cls(), seed=1)
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b, _ = _plant(state_a, groups, seed=2)
    x = make_input(torch.Generator().manual_seed(3))
    # the hand-made copy is the same function: the oracle itself is right
    torch.testing.assert_close(_out(model, state_b, x), _out(model, state_a, x), rtol=1e-5, atol=1e-5)
    unaligned = sum(float((state_a[k].double() - state_b[k].double()).pow(2).sum()) for k in state_a if state_a[k].is_floating_point())
    assert unaligned > 1.0

    res = align(model, state_a, state_b, probe=x)

    assert res.converged
    assert sorted(res.spec.sizes.values()) == sorted(size for size, _ in groups)
    for k in state_a:
        assert torch.equal(res.state[k], state_a[k]), k
    assert res.distance_after == 0.0
    assert res.distance_before == pytest.approx(unaligned ** 0.5, rel=1e-12)
    assert res.objective_after > res.objective_before


def _barrier(model, sa, sb, x, y, alphas=np.linspace(0, 1, 11)):
    losses = []
    for a in alphas:
        mid = {k: ((1 - a) * sa[k] + a * sb[k]) if sa[k].is_floating_point() else sa[k] for k in sa}
        losses.append(float(F.cross_entropy(_out(model, mid, x), y)))
    return max(losses) - 0.5 * (losses[0] + losses[-1])


def test_aligned_barrier_is_zero_and_unaligned_positive():
    model = _randomize(MLP(), seed=4)
    with torch.no_grad():
        model.fc3.weight.mul_(8.0)  # confident outputs: a permuted mixture is not
    sa = {k: v.clone() for k, v in model.state_dict().items()}
    sb, _ = _plant(sa, MLP_GROUPS, seed=5)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(6))
    y = _out(model, sa, x).argmax(1)
    res = align(model, sa, sb, probe=x)
    assert _barrier(model, sa, sb, x, y) > 0.1
    assert _barrier(model, sa, res.state, x, y) == 0.0


def test_derived_spec_lists_the_hand_written_axes():
    model = MLP()
    spec = derive_spec(model, torch.randn(5, 6))
    found = sorted(sorted(entries) for entries in spec.perms.values())
    assert found == sorted(sorted(axes) for _, axes in MLP_GROUPS)


def test_seed_cnn_structure_and_alignment_of_two_random_networks():
    from lossmap.models import MnistCNN

    torch.manual_seed(12)
    a, b = MnistCNN(), MnistCNN()
    x = torch.randn(2, 1, 28, 28)
    spec = derive_spec(a, x)
    assert spec.sizes == {"P_conv1": 32, "P_conv2": 64, "P_fc1": 128}
    assert ("fc1.weight", 1, 144) in spec.perms["P_conv2"]  # 64 channels of 12×12 flattened
    res = align(a, a.state_dict(), b.state_dict(), probe=x)
    # ‖π(B)‖ = ‖B‖, so ‖A − π(B)‖² = ‖A‖² + ‖B‖² − 2⟨A, π(B)⟩: matching can only bring B closer
    norm2 = sum(float(t.double().pow(2).sum()) for s in (a.state_dict(), b.state_dict()) for t in s.values())
    assert res.distance_after ** 2 == pytest.approx(norm2 - 2 * res.objective_after, rel=1e-9)
    assert res.distance_after < res.distance_before
    assert check_spec(a, res.spec, res.state, x) < 1e-5


def test_weight_matching_recovers_a_planted_permutation_of_an_explicit_spec():
    g = torch.Generator().manual_seed(7)
    a = {"w1": torch.randn(10, 4, generator=g), "w2": torch.randn(3, 10, generator=g)}
    spec = spec_from_axes({"P": [("w1", 0), ("w2", 1)]}, a)
    perm = np.random.default_rng(8).permutation(10)
    b = {"w1": a["w1"][perm], "w2": a["w2"][:, perm]}
    perms, _, converged = weight_matching(spec, a, b)
    assert converged
    # unit i of aligned B is unit perms[i] of B, i.e. unit perm[perms[i]] of A, which must be i
    assert np.array_equal(perm[perms["P"]], np.arange(10))


def test_functional_check_rejects_a_wrong_explicit_spec():
    model = _randomize(MLP(), seed=9)
    state = model.state_dict()
    x = torch.randn(16, 6)
    wrong = {"P": [("fc1.weight", 0), ("fc1.bias", 0)]}  # forgets bn1 and fc2's input columns
    with pytest.raises(LossmapError) as err:
        align(model, state, state, spec=wrong, probe=x)
    assert "\n" not in str(err.value)
    right = {"P1": [a[:2] for a in MLP_GROUPS[0][1]], "P2": [a[:2] for a in MLP_GROUPS[1][1]]}
    res = align(model, state, state, spec=right, probe=x)
    assert res.check_deviation is not None and res.check_deviation < 1e-5
    assert check_spec(model, res.spec, state, x) < 1e-5


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.fc = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(F.relu(self.gn(self.conv(x))).mean((2, 3)))


class CumsumNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.cumsum(F.relu(self.fc1(x)), dim=1))


class RecurrentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.rnn = nn.Linear(4, 6), nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        return self.rnn(torch.relu(self.fc(x)))[0]


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)).view(x.size(0), 2, 4)).sum(1)  # splits fc1's 8 units in two


@pytest.mark.parametrize(
    "net, shape, layer",
    [(GroupNormNet, (2, 3, 6, 6), "gn"), (CumsumNet, (3, 4), "cumsum"), (RecurrentNet, (2, 5, 4), "rnn"),
     (SplitNet, (3, 4), "view")],
)
def test_underivable_structure_names_the_layer(net, shape, layer):
    with pytest.raises(LossmapError) as err:
        derive_spec(net(), torch.randn(*shape))
    assert f"'{layer}'" in str(err.value) and "\n" not in str(err.value)


def test_unpermuted_input_pins_the_residual_stream():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(5, 7), nn.Linear(7, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.out(x + self.fc2(F.relu(self.fc1(x))))

    spec = derive_spec(Skip(), torch.randn(4, 5))
    assert list(spec.sizes.values()) == [7]  # fc2's outputs join the input: they cannot move


def test_models_are_left_unchanged():
    model = _randomize(ResNet(), seed=10)
    model.train()
    model.layer1.eval()
    model.head.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    sb, _ = _plant(before, RESNET_GROUPS, seed=11)
    align(model, before, sb, probe=torch.randn(4, 3, 8, 8))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_mismatched_state_dicts_are_refused():
    model = MLP()
    other = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(LossmapError):
        align(model, model.state_dict(), other.state_dict(), probe=torch.randn(4, 6))
    with pytest.raises(LossmapError):
        align(model, model.state_dict(), model.state_dict())  # neither spec nor probe


def test_apply_permutation_blocks_match_a_hand_computed_case():
    state = {"w": torch.arange(12.0).reshape(2, 6)}
    spec = spec_from_axes({"P": [("w", 1, 2)]}, state)
    got = apply_permutation(state, spec, {"P": np.array([2, 0, 1])})["w"]
    assert got.tolist() == [[4, 5, 0, 1, 2, 3], [10, 11, 6, 7, 8, 9]]
