"""``lossmap connect`` end to end on tiny models, against hand-made oracles: a planted permutation (the aligned
barrier is exactly 0, the aligned checkpoint is A bit for bit), the path's values recomputed in float64 with
plain torch, the convex case (softmax regression: no Entezari barrier), and one-line errors for bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lossmap.connect.files import load_result
from lossmap.models import load_model, save_checkpoint

from cli_run import run_fail, run_ok

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self, hidden=12):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(5, hidden), nn.Linear(hidden, 10), nn.Linear(10, 3)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.tanh(self.fc1(x)))))

    class Cumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(torch.cumsum(torch.relu(self.fc1(x)), dim=1))

    def mlp():
        return MLP()

    def wide():
        return MLP(hidden=16)

    def nobias():
        net = MLP()
        net.fc3 = nn.Linear(10, 3, bias=False)
        return net

    def cumsum():
        return Cumsum()

    def softmax_regression():
        return nn.Linear(5, 3)
    """
)

# the hidden units of MLP: fc1's 12 outputs (tanh) and fc2's 10 outputs (ReLU)
GROUPS = [(12, [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]),
          (10, [("fc2.weight", 0), ("fc2.bias", 0), ("fc3.weight", 1)])]


def _plant(state: dict, seed: int) -> dict:
    """Permute the hidden units by hand with plain indexing."""
    rng = np.random.default_rng(seed)
    out = {k: v.clone() for k, v in state.items()}
    for size, axes in GROUPS:
        perm = torch.as_tensor(rng.permutation(size))
        for name, axis in axes:
            out[name] = out[name].index_select(axis, perm).contiguous()
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("connect")
    (root / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    spec = f"{root / 'nets.py'}:mlp"
    torch.manual_seed(0)
    a = load_model(spec)
    with torch.no_grad():
        a.fc3.weight.mul_(6.0)  # confident outputs, so a mixture of permuted units is visibly worse
    y = a(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(root / "data.npz", x=x, y=y)
    np.savez(root / "test.npz", x=x[:20] + 0.1, y=y[:20])
    save_checkpoint(a, root / "a.safetensors")
    state_b = _plant(a.state_dict(), seed=1)
    torch.save(state_b, root / "b.pt")
    files = {"root": root, "spec": spec, "data": f"npz:{root / 'data.npz'}", "x": x, "y": y,
             "a": root / "a.safetensors", "b": root / "b.pt"}
    for name in ("wide", "nobias", "cumsum"):
        torch.manual_seed(1)
        files[name] = save_checkpoint(load_model(f"{root / 'nets.py'}:{name}"), root / f"{name}.safetensors")
    torch.manual_seed(2)
    files["cumsum_b"] = save_checkpoint(load_model(f"{root / 'nets.py'}:cumsum"), root / "cumsum_b.safetensors")
    return files


def _loss64(model, state, x, y) -> float:
    with torch.no_grad():
        out = torch.func.functional_call(model.double(), {k: v.double() for k, v in state.items()}, (torch.from_numpy(x).double(),))
    return float(F.cross_entropy(out, torch.from_numpy(y)))


def test_exact_permuted_copy_is_aligned_to_a_flat_path(env, tmp_path, capsys):
    out = tmp_path / "ab.nc"
    text = run_ok(["connect", env["a"], env["b"], "--model", env["spec"], "--data", env["data"], "--alphas", "5",
                   "--refine", "2", "--align", "weights", "--seed", "-1", "--out", out], capsys)
    assert "Frankle" in text and "Entezari" in text
    table = [line for line in text.splitlines() if line.startswith(("data ", env["data"]))]
    shown = run_ok(["info", out], capsys).splitlines()  # the same table from the file, then its attributes
    assert len(table) == 7 and shown[1:8] == table and ["lossmap_format", "=", "lossmap.connect"] in [r.split() for r in shown]
    ds = load_result(out, "lossmap.connect")
    assert list(ds["path"].values) == ["unaligned", "aligned"]
    aligned = ds["barrier"].sel(path="aligned").values
    assert np.all(aligned == 0.0)  # B permuted back is A bit for bit: every point of the path is A
    unaligned = ds["barrier"].sel(path="unaligned", data=env["data"])
    assert float(unaligned.sel(quantity="loss", definition="frankle")) > 0.1  # float noise is ~1e-7
    assert float(unaligned.sel(quantity="error", definition="entezari")) > 0.05
    state_a = load_file(str(env["a"]))
    state_aligned = load_file(str(tmp_path / "ab.aligned.safetensors"))
    assert all(torch.equal(state_aligned[k], state_a[k]) for k in state_a)
    spec = json.loads((tmp_path / "ab.spec.json").read_text())
    assert sorted(len(v) for v in spec.values()) == [3, 3]
    # the unaligned path's values, against a float64 loop over plain interpolations
    model, state_b = load_model(env["spec"]), torch.load(env["b"])
    loss = ds["loss"].sel(path="unaligned", data=env["data"])
    for alpha in (0.0, 0.25, 0.5, 1.0):
        mid = {k: (1 - alpha) * state_a[k].double() + alpha * state_b[k].double() for k in state_a}
        assert float(loss.sel(alpha=alpha)) == pytest.approx(_loss64(model, mid, env["x"], env["y"]), rel=2e-5, abs=1e-6)
    on_grid = ds["alpha"].values[ds["on_grid"].values == 1]
    assert on_grid.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ds["alpha"].size > 5  # refinement added points


def test_explicit_spec_and_no_alignment(env, tmp_path, capsys):
    spec = {"P1": [[n, a] for n, a in GROUPS[0][1]], "P2": [[n, a] for n, a in GROUPS[1][1]]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "given.nc"
    run_ok(["connect", env["a"], env["b"], "--model", env["spec"], "--data", env["data"], "--alphas", "3", "--refine", "0",
            "--align", "weights", "--spec", tmp_path / "spec.json", "--out", out], capsys)
    ds = load_result(out, "lossmap.connect")
    assert ds.attrs["align_spec"] == "given" and np.all(ds["barrier"].sel(path="aligned").values == 0.0)
    plain = tmp_path / "plain.nc"
    run_ok(["connect", env["a"], env["b"], "--model", env["spec"], "--data", env["data"], "--data", f"npz:{env['root'] / 'test.npz'}",
            "--alphas", "3", "--refine", "0", "--out", plain], capsys)
    ds = load_result(plain, "lossmap.connect")
    assert list(ds["path"].values) == ["unaligned"] and ds["alpha"].values.tolist() == [0.0, 0.5, 1.0]
    assert list(ds["data"].values) == [env["data"], f"npz:{env['root'] / 'test.npz'}"]
    assert np.isfinite(ds["loss"].values).all()
    assert not (tmp_path / "plain.aligned.safetensors").exists()


def test_convex_softmax_regression_has_no_entezari_barrier(env, tmp_path, capsys):
    # the mean cross-entropy of a linear model is convex in its weights: L(α) ≤ (1 − α)L(A) + αL(B)
    spec = f"{env['root'] / 'nets.py'}:softmax_regression"
    for seed, scale in ((3, 1.0), (4, 4.0)):
        torch.manual_seed(seed)
        net = load_model(spec)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        save_checkpoint(net, tmp_path / f"lr{seed}.safetensors")
    out = tmp_path / "convex.nc"
    run_ok(["connect", tmp_path / "lr3.safetensors", tmp_path / "lr4.safetensors", "--model", spec, "--data", env["data"],
            "--dtype", "float64", "--alphas", "25", "--refine", "6", "--out", out], capsys)
    ds = load_result(out, "lossmap.connect")
    la, lb = (float(ds[k].sel(path="unaligned", data=env["data"], quantity="loss")) for k in ("value_a", "value_b"))
    assert abs(la - lb) > 0.1
    loss = ds["barrier"].sel(path="unaligned", data=env["data"], quantity="loss")
    assert abs(float(loss.sel(definition="entezari"))) <= 1e-12
    assert float(loss.sel(definition="frankle")) == pytest.approx(abs(la - lb) / 2, abs=1e-12)  # the worse end


def _connect(env, out, *extra):
    return ["connect", env["a"], env["b"], "--model", env["spec"], "--data", env["data"], "--out", out, *extra]


def test_bad_input_is_one_line(env, tmp_path, capsys):
    cases = [
        (_connect(env, tmp_path / "o.nc", "--alphas", "1"), "--alphas 1"),
        (_connect(env, tmp_path / "o.nc", "--alphas", "0"), "at least 2"),
        (_connect(env, tmp_path / "o.nc", "--refine", "-1"), "--refine"),
        (_connect(env, tmp_path / "o.nc", "--spec", tmp_path / "s.json"), "--align weights"),
        (["connect", env["a"], env["wide"], "--model", env["spec"], "--data", env["data"], "--out", tmp_path / "o.nc"], "wide.safetensors"),
        (["connect", env["a"], env["nobias"], "--model", env["spec"], "--data", env["data"], "--out", tmp_path / "o.nc"], "fc3.bias"),
        (["connect", env["cumsum"], env["cumsum_b"], "--model", f"{env['root'] / 'nets.py'}:cumsum", "--data", env["data"],
          "--align", "weights", "--out", tmp_path / "o.nc"], "'cumsum'"),
        (_connect(env, tmp_path / "o.nc", "--align", "weights", "--spec", tmp_path / "missing.json"), "missing.json"),
        (_connect(env, tmp_path / "o.nc", "--data", env["data"]), "twice"),
    ]
    for argv, needle in cases:
        line = run_fail(argv, capsys)
        assert needle in line, line
    (tmp_path / "exists.nc").write_bytes(b"")
    assert "--overwrite" in run_fail(_connect(env, tmp_path / "exists.nc"), capsys)
    (tmp_path / "bad.json").write_text('{"P": [["fc1.weight", 0], ["fc1.bias", 0]]}')  # forgets fc2's columns
    line = run_fail(_connect(env, tmp_path / "o.nc", "--align", "weights", "--spec", tmp_path / "bad.json"), capsys)
    assert "changes the model's outputs" in line
    assert not (tmp_path / "o.nc").exists()
