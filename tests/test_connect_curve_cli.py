"""``lossmap curve`` end to end on tiny models. Oracles: the curve's and the segment's points rebuilt from the
three checkpoints and evaluated in float64 with plain torch; the plane's geometry (Gram–Schmidt by hand);
batch-norm statistics re-estimated by hand (mean and unbiased variance of the pre-norm activations)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lossmap import store
from lossmap.cli import main
from lossmap.connect import train_curve
from lossmap.connect.curve_eval import bend_state, evaluate_curve
from lossmap.connect.files import load_result
from lossmap.models import load_model, save_checkpoint

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3))

    def bn():
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    """
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve")
    (root / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    np.savez(root / "data.npz", x=x, y=y)
    files = {"root": root, "x": torch.from_numpy(x), "y": torch.from_numpy(y), "data": f"npz:{root / 'data.npz'}"}
    for kind in ("mlp", "bn"):
        for k in (0, 1):
            torch.manual_seed(10 + k)
            files[f"{kind}{k}"] = save_checkpoint(load_model(f"{root / 'nets.py'}:{kind}"), root / f"{kind}{k}.safetensors")
    return files


def _loss64(spec, state, x, y) -> float:
    model = load_model(spec).double().eval()
    with torch.no_grad():
        out = torch.func.functional_call(model, {k: v.double() for k, v in state.items()}, (x.double(),))
    return float(F.cross_entropy(out, y))


def _mix(weights, states) -> dict:
    return {k: sum(w * s[k].double() for w, s in zip(weights, states)) for k in states[0]}


def test_curve_command_files_and_values(env, tmp_path, capsys):
    spec = f"{env['root'] / 'nets.py'}:mlp"
    stem = tmp_path / "cv"
    argv = ["curve", env["mlp0"], env["mlp1"], "--model", spec, "--data", env["data"], "--out", stem, "--epochs", "3",
            "--points", "11", "--grid", "5", "--train-batch-size", "10", "--lr", "0.05"]
    assert main([str(a) for a in argv]) == 0
    text = capsys.readouterr().out
    assert "curve: max loss" in text and "line: max loss" in text
    assert main(["info", str(stem) + ".nc"]) == 0  # the file says what the command printed
    shown = capsys.readouterr().out.splitlines()
    assert shown[1:3] == [line for line in text.splitlines() if line.startswith(("curve: ", "line: "))]
    for name in ("cv.bend.safetensors", "cv.nc", "cv_plane.nc", "cv_plane.directions.safetensors", "cv.png", "cv.pdf",
                 "cv_profile.png", "cv_profile.pdf"):
        assert (tmp_path / name).stat().st_size > 0, name
    a, b, bend = (load_file(str(p)) for p in (env["mlp0"], env["mlp1"], tmp_path / "cv.bend.safetensors"))
    assert any(not torch.equal(bend[k], 0.5 * (a[k] + b[k])) for k in a)  # the bend moved from the midpoint
    ds = load_result(tmp_path / "cv.nc", "lossmap.curve")
    assert ds["t"].size == 11 and len(ds.attrs["train_losses"]) > 2
    for t in (0.0, 0.3, 0.5, 1.0):
        on_curve = _mix([(1 - t) ** 2, 2 * t * (1 - t), t * t], [a, bend, b])
        on_line = _mix([1 - t, t], [a, b])
        got = ds["loss"].sel(t=t, method="nearest")
        assert float(got.sel(path="curve")) == pytest.approx(_loss64(spec, on_curve, env["x"], env["y"]), rel=2e-5)
        assert float(got.sel(path="line")) == pytest.approx(_loss64(spec, on_line, env["x"], env["y"]), rel=2e-5)
    # the plane: Gram–Schmidt by hand, in float64
    u = torch.cat([(b[k] - a[k]).double().flatten() for k in a])
    v = torch.cat([(bend[k] - a[k]).double().flatten() for k in a])
    bx = float(v @ u / (u @ u))
    by = float((v - bx * u).norm() / u.norm())
    assert (ds.attrs["bend_x"], ds.attrs["bend_y"]) == pytest.approx((bx, by), rel=1e-5)
    c1 = 2 * 0.3 * 0.7
    assert float(ds["plane_x"].sel(path="curve").sel(t=0.3, method="nearest")) == pytest.approx(c1 * bx + 0.09, rel=1e-6)
    assert float(ds["plane_y"].sel(path="curve").sel(t=0.3, method="nearest")) == pytest.approx(c1 * by, rel=1e-6)
    plane = store.load(tmp_path / "cv_plane.nc")
    assert store.meta(plane)["markers"]["bend"] == pytest.approx([bx, by], rel=1e-5)
    px, py = float(plane["x"][3]), float(plane["y"][1])
    point = {k: a[k].double() + px * (b[k] - a[k]).double()
             + py / by * ((bend[k] - a[k]).double() - bx * (b[k] - a[k]).double()) for k in a}
    assert float(plane["loss"].isel(x=3, y=1)) == pytest.approx(_loss64(spec, point, env["x"], env["y"]), rel=1e-4)
    # the same command again refuses to replace the trained bend
    assert main([str(s) for s in argv]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_batch_norm_is_recomputed_along_the_curve(env):
    model = load_model(f"{env['root'] / 'nets.py'}:bn")
    a, b = load_file(str(env["bn0"])), load_file(str(env["bn1"]))
    data = [(env["x"][:20], env["y"][:20]), (env["x"][20:], env["y"][20:])]
    curve = train_curve(model, a, b, data, F.cross_entropy, epochs=2, lr=0.05)
    pairs = (env["x"], env["y"])
    bend = bend_state(model, a, curve, bn_data=pairs)
    ds = evaluate_curve(model, a, b, bend, pairs, points=5, bn_data=pairs, dtype=torch.float64)
    assert ds.attrs["bn_policy"] == "recompute"

    def by_hand(state):  # the statistics of the whole data set (one batch), then evaluation mode
        s = {k: v.double() for k, v in state.items()}
        h = env["x"].double() @ s["0.weight"].T + s["0.bias"]
        mean, var = h.mean(0), h.var(0, unbiased=True)
        z = torch.relu((h - mean) / torch.sqrt(var + 1e-5) * s["1.weight"] + s["1.bias"])
        return float(F.cross_entropy(z @ s["3.weight"].T + s["3.bias"], env["y"])), mean, var

    _, mean, var = by_hand(bend)
    torch.testing.assert_close(bend["1.running_mean"].double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bend["1.running_var"].double(), var, rtol=1e-5, atol=1e-6)
    for t in (0.25, 0.5, 0.75):
        on_curve = _mix([(1 - t) ** 2, 2 * t * (1 - t), t * t], [a, bend, b])
        on_line = _mix([1 - t, t], [a, b])
        assert float(ds["loss"].sel(path="curve", t=t)) == pytest.approx(by_hand(on_curve)[0], rel=1e-9)
        assert float(ds["loss"].sel(path="line", t=t)) == pytest.approx(by_hand(on_line)[0], rel=1e-9)


def test_bad_curve_input_is_one_line(env, tmp_path, capsys):
    spec = f"{env['root'] / 'nets.py'}:mlp"
    base = ["curve", env["mlp0"], env["mlp1"], "--model", spec, "--data", env["data"], "--out", tmp_path / "c"]
    for extra, needle in ((["--bends", "2"], "--bends 2"), (["--points", "1"], "--points 1"), (["--epochs", "0"], "--epochs 0"),
                          (["--margin", "-1"], "--margin")):
        assert main([str(a) for a in base + extra]) == 2
        err = capsys.readouterr().err.strip().split("\n")
        assert len(err) == 1 and err[0].startswith("lossmap: error: ") and needle in err[0], err
    wider = ["curve", env["mlp0"], env["bn1"], "--model", spec, "--data", env["data"], "--out", tmp_path / "c"]
    assert main([str(a) for a in wider]) == 2
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 1 and "bn1.safetensors" in err[0]
    assert not (tmp_path / "c.bend.safetensors").exists()
