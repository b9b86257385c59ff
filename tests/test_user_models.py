"""A new user's own models: batch-norm interpolations that reach B exactly, one clear line for every
mistake in the model or data, nothing left behind by a run that failed, model files that import their
neighbours, and the smaller rough edges of the command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lossmap
from lossmap import store
from lossmap.cli import main
from lossmap.directions import target_directions
from lossmap.errors import LossmapError
from lossmap.models import load_model, save_checkpoint

NET = textwrap.dedent(
    """
    from torch import nn
    from blocks import block  # a module beside this file

    def build():
        return nn.Sequential(block(1, 4), nn.MaxPool2d(2), block(4, 6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    """
)
BLOCKS = textwrap.dedent(
    """
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
    """
)
DATA = textwrap.dedent(
    """
    import torch
    from dataclasses import dataclass
    from torch import nn
    from torch.utils.data import TensorDataset

    def _make(channels=1, labels=10, floats=False):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, channels, 12, 12, generator=g)
        y = torch.rand(48, generator=g) if floats else torch.randint(0, labels, (48,), generator=g)
        return TensorDataset(x, y)

    def good():
        return _make()

    def rgb():
        return _make(channels=3)

    def labels():
        return _make(labels=13)

    def floats():
        return _make(floats=True)

    def broken():
        return _make()[:][0]  # a tensor of inputs without targets

    @dataclass
    class Output:
        logits: object
        loss: object = None

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(144, 10)
        def forward(self, x):
            return Output(self.fc(x.flatten(1)))

    def hf():
        return HF()
    """
)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A model file importing a module beside it, data factories, and checkpoints A (init) and B (trained, with
    other batch-norm statistics), C (trained from another seed)."""
    root = tmp_path_factory.mktemp("user")
    (root / "net.py").write_text(NET)
    (root / "blocks.py").write_text(BLOCKS)
    (root / "data.py").write_text(DATA)
    sys.path.insert(0, str(root))
    try:
        from data import good  # noqa: F401 - the factories, for the in-process oracles
        import data as data_module
    finally:
        sys.path.remove(str(root))
    spec = f"{root / 'net.py'}:build"
    x, y = data_module.good().tensors
    models = {}
    for name, seed, steps in (("a", 0, 0), ("b", 0, 60), ("c", 1, 40)):
        torch.manual_seed(seed)
        net = load_model(spec)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        net.train()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        save_checkpoint(net, root / f"{name}.safetensors")
        models[name] = net.eval()
    return {"root": root, "spec": spec, "data": f"{root / 'data.py'}:good", "x": x, "y": y, **models}


def _eval_loss(net, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(net.eval()(x), y))


def run(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_interpolating_batch_norm_models_reaches_b_exactly(user, tmp_path, capsys):
    a, b, x, y = user["a"], user["b"], user["x"], user["y"]
    la, lb = _eval_loss(a, x, y), _eval_loss(b, x, y)
    assert la > lb + 0.5  # training did something, and B's running statistics differ from A's
    assert not torch.equal(a[0][1].running_var, b[0][1].running_var)
    ds = lossmap.compute(a, (x, y), [0.0, 0.5, 1.0], directions=target_directions(a, b))
    assert float(ds.loss[0]) == pytest.approx(la, rel=1e-6) and float(ds.loss[2]) == pytest.approx(lb, rel=1e-6)
    assert any("running_var" in n for n in ds.attrs["moved_tensors"])
    out = tmp_path / "ab.nc"
    rc, text, err = run(["interpolate", "--model", user["spec"], "--from", user["root"] / "a.safetensors", "--to",
                         user["root"] / "b.safetensors", "--data", user["data"], "--x", "0:1:3", "--out", out], capsys)
    assert rc == 0, err
    cli = lossmap.load(out)
    assert float(cli.loss[0]) == pytest.approx(la, rel=1e-6) and float(cli.loss[2]) == pytest.approx(lb, rel=1e-6)
    # what an interpolation is summarized by: the models and what lies between, not flatness around A
    assert cli.attrs["summary_at_a"] == pytest.approx(la, rel=1e-6) and cli.attrs["summary_at_b"] == pytest.approx(lb, rel=1e-6)
    assert "path: loss at A" in text and "flatness" not in text


def test_the_plane_through_three_batch_norm_models_passes_through_all_three(user):
    a, b, c, x, y = user["a"], user["b"], user["c"], user["x"], user["y"]
    d = target_directions(a, b, c)
    t, s = d.markers["C"]
    ds = lossmap.compute(a, (x, y), [0.0, t, 1.0], [0.0, s], directions=d)
    assert float(ds.loss[0, 0]) == pytest.approx(_eval_loss(a, x, y), rel=1e-6)
    assert float(ds.loss[2, 0]) == pytest.approx(_eval_loss(b, x, y), rel=1e-6)
    assert float(ds.loss[1, 1]) == pytest.approx(_eval_loss(c, x, y), rel=1e-5)


def test_a_flag_that_contradicts_the_directions_is_an_error(user):
    a, b, x, y = user["a"], user["b"], user["x"], user["y"]
    params_only = target_directions(a, b, include_buffers=False)
    with pytest.raises(LossmapError, match="include_buffers=True but the directions do not cover the model's buffers"):
        lossmap.compute(a, (x, y), [0.0], directions=params_only, include_buffers=True)
    with pytest.raises(LossmapError, match="tensor_filter='0.*' but the directions were made for None"):
        lossmap.compute(a, (x, y), [0.0], directions=params_only, tensor_filter="0.*")


@pytest.mark.parametrize("data, needle", [
    ("rgb", "the inputs have shape (48, 3, 12, 12) (3 channels) but the model's first layer '0.0' (Conv2d) takes 1"),
    ("labels", "the labels range from 0 to 12 but the model outputs 10 classes"),
    ("floats", "for classification give integer class labels (y.long())"),
    ("broken", "the data has no targets"),
])
def test_each_mistake_is_one_line_and_the_fixed_command_runs(user, tmp_path, capsys, data, needle):
    out = tmp_path / "m.nc"
    base = ["surface", "--model", user["spec"], "--checkpoint", user["root"] / "b.safetensors", "--x", "-1:1:3", "--out", out]
    rc, _, err = run(base + ["--data", f"{user['root'] / 'data.py'}:{data}"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("lossmap: error: ") and "Traceback" not in err, err
    assert needle in err
    assert not out.exists() and not store.directions_path(out).exists()  # nothing left to block the fixed command
    rc, _, err = run(base + ["--data", user["data"]], capsys)
    assert rc == 0, err


def test_a_model_output_object_needs_its_tensor_named(user, tmp_path, capsys):
    base = ["surface", "--model", f"{user['root'] / 'data.py'}:hf", "--data", user["data"], "--x", "-1:1:3", "--out",
            tmp_path / "hf.nc"]
    rc, _, err = run(base, capsys)
    assert rc == 2 and err.count("\n") == 1 and "--output logits" in err and "Traceback" not in err
    rc, _, err = run(base + ["--output", "logits"], capsys)
    assert rc == 0, err


def test_an_error_after_the_first_batch_is_one_line_with_the_cause_chained(user):
    x, y = user["x"], user["y"].clone()
    y[-1] = 10  # only the last batch has a label the model cannot output
    with pytest.raises(LossmapError, match="on a batch of 16 .*labels range from 0 to 10 but the model outputs 10 classes") as info:
        lossmap.compute(user["b"], (x, y), [0.0], batch_size=16, engine="plain")
    assert isinstance(info.value.__cause__, (IndexError, RuntimeError))


def test_a_file_that_failed_before_its_first_point_is_replaced(user, tmp_path):
    out = tmp_path / "f.nc"
    ds = lossmap.compute(user["b"], (user["x"], user["y"]), "-1:1:3", seed=0)
    store.save(store.partial_dataset(ds, np.zeros(3, bool)), out)  # a file with no finished point, other settings
    again = lossmap.compute(user["b"], (user["x"], user["y"]), "-1:1:3", seed=5, out=out)
    assert store.is_complete(lossmap.load(out)) and again.attrs["seed"] == 5


def test_batch_norm_recomputation_says_which_data_and_records_it(user, tmp_path, capsys):
    base = ["surface", "--model", user["spec"], "--checkpoint", user["root"] / "b.safetensors", "--data", user["data"],
            "--x", "-1:1:3", "--bn", "recompute"]
    rc, text, err = run(base + ["--out", tmp_path / "r.nc"], capsys)
    assert rc == 0 and "batch norm: statistics re-estimated at every point from the evaluation data" in text, err
    rc, text, err = run(base + ["--bn-data", f"{user['root'] / 'data.py'}:rgb", "--out", tmp_path / "s.nc"], capsys)
    assert rc == 2 and "the model's forward (batch-norm re-estimation)" in err and "3 channels" in err
    rc, text, err = run(base + ["--bn-data", f"{user['root'] / 'data.py'}:labels", "--out", tmp_path / "s.nc"], capsys)
    assert rc == 0 and "from " + f"{user['root'] / 'data.py'}:labels" in text, err
    assert lossmap.load(tmp_path / "s.nc").attrs["bn_data"].endswith("data.py:labels")


def test_a_complete_file_says_nothing_was_computed(user, tmp_path, capsys):
    args = ["surface", "--model", user["spec"], "--data", user["data"], "--checkpoint", user["root"] / "b.safetensors",
            "--x", "-1:1:3", "--out", tmp_path / "c.nc"]
    assert run(args, capsys)[0] == 0
    rc, text, err = run(args, capsys)
    assert rc == 0 and "is complete (3 points): nothing to compute" in err
    assert "wrote" not in text and "c.nc is unchanged" in text


def test_plot_into_a_folder(user, tmp_path, capsys, monkeypatch):
    nc = tmp_path / "p.nc"
    lossmap.compute(user["b"], (user["x"], user["y"]), "-1:1:3", "-1:1:3", out=nc)
    (tmp_path / "figs").mkdir()
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(["plot", nc, "--kind", "contour", "--out", "figs/"], capsys)
    assert rc == 0, err
    assert (tmp_path / "figs" / "p_contour.png").is_file() and not list(tmp_path.glob("figs_*"))
    rc, _, err = run(["plot", nc, "--out", "nowhere/"], capsys)
    assert rc == 2 and "output folder 'nowhere/' does not exist" in err


def test_moved_tensors_leaves_out_what_bias_zero_keeps_fixed(user):
    ds = lossmap.compute(user["b"], (user["x"], user["y"]), [0.0], bias="zero")
    assert ds.attrs["moved_tensors"] == ["0.0.weight", "2.0.weight", "5.weight"]
    ds = lossmap.compute(user["b"], (user["x"], user["y"]), [0.0], bias="keep")
    assert "5.bias" in ds.attrs["moved_tensors"]


def test_extrapolated_running_variances_that_turn_negative_are_reported(user, caplog):
    a, b = user["a"], user["b"]
    d = target_directions(a, b)
    var = {n: t for n, t in d.tensors[0].items() if n.endswith("running_var")}
    va = dict(a.named_buffers())
    alpha = min(float((-va[n][dv < 0] / dv[dv < 0]).min()) for n, dv in var.items() if (dv < 0).any())  # first zero
    with caplog.at_level("WARNING", logger="lossmap"):
        lossmap.compute(a, (user["x"], user["y"]), [0.0, alpha * 1.5], directions=d)
    assert any("running variances are negative" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="lossmap"):
        lossmap.compute(a, (user["x"], user["y"]), [0.0, 1.0], directions=d)
    assert not caplog.records


def test_the_command_line_imports_nothing_heavy_for_help_and_argument_errors():
    code = ("import sys; from lossmap.cli import build_parser, main; build_parser(); "
            "rc = main(['surface', '--x', '-1:1']) if False else 0; "
            "print(sorted(m for m in ('torch', 'xarray', 'matplotlib', 'scipy', 'pandas', 'plotly') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    bad = subprocess.run([sys.executable, "-X", "importtime", "-m", "lossmap", "surface", "--model", "m", "--data", "d",
                          "--out", "o.nc", "--x", "-1:1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "lossmap: error:" in bad.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in bad.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "xarray", "matplotlib", "scipy", "pandas"}, sorted(imported & {"torch", "xarray"})


def test_mesh_formats_of_the_command_are_the_exporters():
    from lossmap.commands.export import MESH_FORMATS
    from lossmap.export import FORMATS

    assert MESH_FORMATS == tuple(sorted(FORMATS))


@pytest.mark.slow
def test_docs_streaming_example_runs_as_written(tmp_path):
    """The command-line guide's image-folder factory, streamed at every point, runs unchanged and streams."""
    import os
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks, current = [], None  # fenced shell blocks, read fence by fence
    for line in guide.splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line.strip() in ("```", "```bash") else "other"
            else:
                if current != "other":
                    blocks.append("\n".join(current))
                current = None
        elif isinstance(current, list):
            current.append(line)
    blocks = [b for b in blocks if "imagefolder.py" in b]
    assert len(blocks) == 1
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", "-euc", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ds = lossmap.load(tmp_path / "images.nc")
    assert ds.attrs["data_mode"] == "streamed" and ds.attrs["samples"] == 2000 and ds.attrs["loss"] == "cross_entropy"
