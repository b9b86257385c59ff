"""The ``lossmap`` command line on a tiny model: files, values against direct calls and hand-made
oracles, ``info``/``plot`` output, and one-line errors with exit status 2 for every bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lossmap
from lossmap import LossmapError, store
from lossmap.cli import main
from lossmap.directions import Directions, target_directions
from lossmap.models import load_checkpoint, load_model, save_checkpoint

from cli_run import run_fail, run_ok

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def tiny():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))

    def wider():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def broken():
        raise RuntimeError("no weights for this net")

    def not_a_module():
        return 42
    """
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A factory file, an npz data file and three checkpoints of the tiny model."""
    root = tmp_path_factory.mktemp("cli")
    (root / "nets.py").write_text(FACTORY)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=48).astype(np.int64)
    np.savez(root / "data.npz", x=x, y=y)
    spec = f"{root / 'nets.py'}:tiny"
    ckpts = {}
    for k, name in enumerate(("a", "b", "c")):
        torch.manual_seed(k)
        ckpts[name] = save_checkpoint(load_model(spec), root / f"{name}.safetensors")
    torch.manual_seed(3)
    save_checkpoint(load_model(f"{root / 'nets.py'}:wider"), root / "wider.safetensors")
    return {"root": root, "model": spec, "data": f"npz:{root / 'data.npz'}", "x": x, "y": y, **ckpts}


def model_at(env, ckpt):
    return load_checkpoint(load_model(env["model"]), ckpt)


def surface_args(env, out, *extra):
    return ["surface", "--model", env["model"], "--checkpoint", env["a"], "--data", env["data"], "--out", out, *extra]


# ------------------------------------------------------------------------------------------------ values


def test_surface_2d_equals_direct_compute_and_writes_files(env, tmp_path, capsys):
    out = tmp_path / "plane.nc"
    text = run_ok(surface_args(env, out, "--x", "-1:1:5", "--y", "-0.5:0.5:3", "--seed", "7", "--batch-size", "20"), capsys)
    assert f"wrote {out}" in text and "5×3 points" in text
    assert out.is_file() and (tmp_path / "plane.directions.safetensors").is_file()
    ds = store.load(out)
    ref = lossmap.compute(model_at(env, env["a"]), lossmap.data.npz(env["root"] / "data.npz"),
                          x="-1:1:5", y="-0.5:0.5:3", seed=7, batch_size=20)
    np.testing.assert_array_equal(ds["x"].values, ref["x"].values)
    np.testing.assert_array_equal(ds["y"].values, ref["y"].values)
    for metric in ("loss", "accuracy"):
        np.testing.assert_array_equal(ds[metric].values, ref[metric].values)
    m = store.meta(ds)
    assert (m["seed"], m["normalization"], m["bias_policy"], m["ndim"]) == (7, "filter", "zero", 2)
    assert m["data"] == env["data"] and m["samples"] == 48


def test_surface_bf16_flag_reaches_compute_and_the_file(env, tmp_path, capsys):
    out = tmp_path / "bf16.nc"
    text = run_ok(surface_args(env, out, "--x", "-1:1:3", "--y", "-1:1:3", "--seed", "7", "--bf16"), capsys)
    ds = store.load(out)
    ref = lossmap.compute(model_at(env, env["a"]), lossmap.data.npz(env["root"] / "data.npz"),
                          x="-1:1:3", y="-1:1:3", seed=7, bf16=True)
    np.testing.assert_array_equal(ds["loss"].values, ref["loss"].values)
    assert ds.attrs["bf16"] and ds.attrs["bf16_centre_rel_error"] == ref.attrs["bf16_centre_rel_error"]
    assert f"precision: bf16 changes the metrics at the centre by {ds.attrs['bf16_centre_rel_error']:.2g} (relative)" in text


def test_surface_centre_is_the_checkpoints_loss(env, tmp_path, capsys):
    """Independent oracle: at α = 0 the model is the checkpoint itself; its mean cross-entropy and
    accuracy are computed here by hand in float64."""
    out = tmp_path / "line.nc"
    run_ok(surface_args(env, out, "--x", "-1:1:3", "--dtype", "float64", "--normalization", "layer",
                        "--bias", "filter", "--samples", "40"), capsys)
    ds = store.load(out)
    net = model_at(env, env["a"]).double()
    logits = net(torch.from_numpy(env["x"][:40]).double())
    target = torch.from_numpy(env["y"][:40])
    assert ds["loss"].sel(x=0.0).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)
    assert ds["accuracy"].sel(x=0.0).item() == pytest.approx((logits.argmax(1) == target).double().mean().item(), abs=1e-15)
    m = store.meta(ds)
    assert (m["normalization"], m["bias_policy"], m["dtype"], m["samples"]) == ("layer", "filter", "float64", 40)


def test_surface_reuses_directions_file_and_tensor_filter(env, tmp_path, capsys):
    first = tmp_path / "first.nc"
    run_ok(surface_args(env, first, "--x", "-1:1:3", "--y", "-1:1:3", "--seed", "1", "--tensors", "3.*"), capsys)
    m = store.meta(store.load(first))
    assert m["moved_tensors"] == ["3.weight"] and m["tensor_filter"] == "3.*"  # --bias zero keeps 3.bias fixed
    second = tmp_path / "second.nc"
    run_ok(surface_args(env, second, "--x", "-1:1:3", "--y", "-1:1:3", "--seed", "99",
                        "--directions", tmp_path / "first.directions.safetensors"), capsys)
    a, b = store.load(first), store.load(second)
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    d0 = Directions.load(tmp_path / "first.directions.safetensors")
    d1 = Directions.load(tmp_path / "second.directions.safetensors")
    for x, y in zip(d0.tensors, d1.tensors):
        assert all(torch.equal(x[n], y[n]) for n in x)


def test_interpolate_line_hits_both_models(env, tmp_path, capsys):
    out = tmp_path / "ab.nc"
    run_ok(["interpolate", "--model", env["model"], "--from", env["a"], "--to", env["b"], "--data", env["data"],
            "--x", "-0.5:1.5:5", "--out", out], capsys)
    ds = store.load(out)
    a, b = model_at(env, env["a"]), model_at(env, env["b"])
    ref = lossmap.compute(a, lossmap.data.npz(env["root"] / "data.npz"), x="-0.5:1.5:5",
                          directions=target_directions(a, b))
    np.testing.assert_array_equal(ds["loss"].values, ref["loss"].values)
    x = torch.from_numpy(env["x"])
    target = torch.from_numpy(env["y"])
    with torch.no_grad():
        for alpha, net in ((0.0, a), (1.0, b)):
            expected = F.cross_entropy(net.double()(x.double()), target).item()
            assert ds["loss"].sel(x=alpha).item() == pytest.approx(expected, rel=1e-5)
    assert store.meta(ds)["markers"] == {"A": [0.0], "B": [1.0]}


def test_interpolate_plane_marks_three_models_and_plots(env, tmp_path, capsys):
    out = tmp_path / "abc.nc"
    run_ok(["interpolate", "--model", env["model"], "--from", env["a"], "--to", env["b"], "--via", env["c"],
            "--data", env["data"], "--x", "-0.5:1.5:5", "--out", out], capsys)
    ds = store.load(out)
    markers = store.meta(ds)["markers"]
    assert set(markers) == {"A", "B", "C"} and markers["A"] == [0.0, 0.0] and markers["B"] == [1.0, 0.0]
    t, s = markers["C"]
    # the default β axis covers C with a margin of 0.5 and has as many points as x
    assert ds.sizes["y"] == 5 and ds["y"].values[0] <= min(0.0, s) - 0.49 and ds["y"].values[-1] >= max(0.0, s) + 0.49
    text = run_ok(["plot", out, "--format", "png,svg"], capsys)
    for kind in ("contour", "contourf", "heatmap", "surface", "line"):
        for fmt in ("png", "svg"):
            assert (tmp_path / f"abc_{kind}.{fmt}").stat().st_size > 1000
    assert text.count("wrote ") == 10


# ------------------------------------------------------------------------------------------------ info / plot


def test_info_prints_coordinates_metrics_and_metadata(env, tmp_path, capsys):
    out = tmp_path / "p.nc"
    run_ok(surface_args(env, out, "--x", "-1:1:5", "--y", "-1:1:3", "--seed", "5"), capsys)
    text = run_ok(["info", out], capsys)
    ds = store.load(out)
    assert "x: 5 points from -1 to 1, step 0.5" in text
    assert "y: 3 points from -1 to 1, step 1" in text
    assert f"loss: min {float(ds.loss.min()):.6g}, max {float(ds.loss.max()):.6g}, at centre {float(ds.loss.sel(x=0, y=0)):.6g}" in text
    for key, value in store.meta(ds).items():
        if key != "settings":  # in a section of its own, see below
            assert f"\n  {key} " in text or f"\n  {key}=" in text, key
    assert "= filter" in text and "= 5" in text and ds.attrs["theta0_sha256"] in text
    assert "\n  settings " not in text and '{"bf16"' not in text  # no longer one JSON line among the metadata


def test_info_prints_the_settings_one_per_line(tmp_path, capsys):
    """The settings a resume compares: a ``settings:`` section, one ``key: value`` per line, hashes shortened,
    grids summarized, a mapping's entries one level deeper."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    path = tmp_path / "s.nc"

    def spread(out, target):
        return out.std()

    lossmap.compute(model, (torch.randn(20, 4), torch.randint(0, 3, (20,))), "-1:1:5", out=path, metrics={"spread": spread})
    settings = store.meta(store.load(path))["settings"]
    text = run_ok(["info", path], capsys)
    section = text.split("\nsettings:\n", 1)[1].splitlines()
    assert len(section) == len(settings) + 1  # every setting, the one metric function on a line of its own
    keys = [line.split(":", 1)[0].strip() for line in section if not line.startswith("    ")]
    assert keys == sorted(settings)
    for line in section:
        assert line.startswith("  ") and ": " in line or line.endswith(":"), line
        assert len(line) < 120 and "{" not in line and "[" not in line, line
    rows = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in section}
    assert rows["seed"] == "0" and rows["normalization"] == "filter" and rows["orthogonalized"] == "false"
    assert rows["x"] == "5 points from -1 to 1, step 0.5" and rows["y"] == "none"
    assert rows["metrics"] == "loss, spread"
    assert rows["theta0_sha256"] == settings["theta0_sha256"][:12] + "…"
    assert rows["loss_function"] == "cross_entropy" and rows["forward_function"] == "the model's"  # the default by name
    assert rows["tensor_filter"] == "none" and rows["bn_data_sha256"] == "none"
    assert rows["metric_functions"] == ""
    digest = settings["metric_functions"]["spread"].split("sha256:")[1]
    assert f"\n    spread: test_cli.test_info_prints_the_settings_one_per_line.<locals>.spread sha256:{digest[:12]}…\n" in text
    assert digest not in text
    # the values line up after the longest key
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in section if not line.startswith("    ") and not line.endswith(":")}
    assert starts == {len(max(settings, key=len)) + 4}  # "  " + key + ":" + " "


def test_info_names_a_null_function_setting_as_a_refused_resume_does(tmp_path, capsys):
    """A run without its own functions: each null reads as what it falls back to, in the same words as the
    message of a resume refused over that setting."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    data = (torch.randn(20, 4), torch.randint(0, 3, (20,)))
    path = tmp_path / "n.nc"
    lossmap.compute(model, data, "-1:1:3", out=path)
    text = run_ok(["info", path], capsys)
    rows = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in text.split("\nsettings:\n", 1)[1].splitlines()}
    assert (rows["loss_function"], rows["metric_functions"], rows["forward_function"]) == ("cross_entropy", "none", "the model's")
    with pytest.raises(LossmapError, match=r"forward_function \(file: the model's, now: "):
        lossmap.compute(model, data, "-1:1:3", out=path, forward=lambda m, batch: m(batch[0]))


def test_plot_single_kind_exact_file_and_options(env, tmp_path, capsys):
    out = tmp_path / "q.nc"
    run_ok(surface_args(env, out, "--x", "-1:1:5", "--y", "-1:1:5"), capsys)
    target = tmp_path / "figs" / "my.pdf"
    target.parent.mkdir()
    run_ok(["plot", out, "--kind", "contour", "--levels", "6", "--vmin", "1", "--vmax", "4", "--log", "--out", target], capsys)
    assert target.read_bytes()[:4] == b"%PDF" and sorted(os.listdir(target.parent)) == ["my.pdf"]
    line = tmp_path / "l.nc"
    run_ok(surface_args(env, line, "--x", "-1:1:4"), capsys)
    run_ok(["plot", line], capsys)
    assert (tmp_path / "l_line.png").read_bytes()[:4] == b"\x89PNG"
    # a stem, with or without a figure suffix, gets _<kind> whether one kind or all are drawn
    run_ok(["plot", line, "--kind", "line", "--out", tmp_path / "one"], capsys)
    run_ok(["plot", line, "--out", tmp_path / "every.pdf"], capsys)
    assert (tmp_path / "one_line.png").is_file() and (tmp_path / "every_line.png").is_file()
    msg = run_fail(["plot", line, "--kind", "contour"], capsys)
    assert "1-D" in msg and "--kind line" in msg


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_model_spec(env, tmp_path, capsys):
    msg = run_fail(["surface", "--model", "resnet9000", "--data", env["data"], "--out", tmp_path / "o.nc"], capsys)
    assert "'resnet9000'" in msg


def test_unknown_data_spec(env, tmp_path, capsys):
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--data", "imagenet"), capsys)
    assert "'imagenet'" in msg
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--data", "npz:/no/such.npz"), capsys)
    assert "/no/such.npz" in msg


def test_missing_checkpoint(env, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    msg = run_fail(["surface", "--model", env["model"], "--checkpoint", missing, "--data", env["data"],
                    "--out", tmp_path / "o.nc"], capsys)
    assert str(missing) in msg and "does not exist" in msg
    msg = run_fail(["interpolate", "--model", env["model"], "--from", env["a"], "--to", missing, "--data", env["data"],
                    "--out", tmp_path / "o.nc"], capsys)
    assert str(missing) in msg


def test_checkpoint_that_does_not_fit(env, tmp_path, capsys):
    msg = run_fail(["surface", "--model", env["model"], "--checkpoint", env["root"] / "wider.safetensors",
                    "--data", env["data"], "--out", tmp_path / "o.nc"], capsys)
    assert "1.weight: checkpoint (16, 64) vs model (12, 64)" in msg and "does not fit" in msg


def test_factory_that_raises_or_returns_no_module(env, tmp_path, capsys):
    nets = env["root"] / "nets.py"
    msg = run_fail(["surface", "--model", f"{nets}:broken", "--data", env["data"], "--out", tmp_path / "o.nc"], capsys)
    assert "RuntimeError" in msg and "no weights for this net" in msg
    msg = run_fail(["surface", "--model", f"{nets}:not_a_module", "--data", env["data"], "--out", tmp_path / "o.nc"], capsys)
    assert "not a torch.nn.Module" in msg
    msg = run_fail(["surface", "--model", f"{nets}:absent", "--data", env["data"], "--out", tmp_path / "o.nc"], capsys)
    assert "'absent'" in msg


def test_output_that_cannot_be_written(env, tmp_path, capsys):
    msg = run_fail(surface_args(env, tmp_path / "no" / "such" / "o.nc", "--x", "-1:1:3"), capsys)
    assert "does not exist" in msg and str(tmp_path / "no" / "such") in msg
    msg = run_fail(surface_args(env, tmp_path, "--x", "-1:1:3"), capsys)
    assert "is a folder" in msg
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            msg = run_fail(surface_args(env, locked / "o.nc", "--x", "-1:1:3"), capsys)
            assert "not writable" in msg
        finally:
            locked.chmod(0o700)
    assert not list(tmp_path.rglob("*.nc"))


def test_read_only_output_folder_is_refused_before_computing(env, tmp_path, capsys, monkeypatch):
    """Also where the tests run as root (who may write anywhere): the check asks os.access."""
    calls = []
    monkeypatch.setattr(os, "access", lambda path, mode: calls.append(str(path)) or False)
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--x", "-1:1:3"), capsys)
    assert f"output folder {str(tmp_path)!r} is not writable" in msg and calls == [str(tmp_path)]


def test_demo_refuses_a_file_as_output_folder(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    msg = run_fail(["demo", "--quick", "--out", target], capsys)
    assert "is a file" in msg and str(target) in msg


def test_existing_output_needs_overwrite(env, tmp_path, capsys):
    out = tmp_path / "o.nc"
    run_ok(surface_args(env, out, "--x", "-1:1:3", "--seed", "0"), capsys)
    before = store.load(out)
    msg = run_fail(surface_args(env, out, "--x", "-1:1:3", "--seed", "1"), capsys)
    assert "o.nc" in msg and "--overwrite" in msg
    np.testing.assert_array_equal(store.load(out)["loss"].values, before["loss"].values)
    run_ok(surface_args(env, out, "--x", "-1:1:3", "--seed", "1", "--overwrite"), capsys)
    assert store.meta(store.load(out))["seed"] == 1


@pytest.mark.parametrize("spec", ["-1:1", "a:1:5", "-1:1:0", "1:-1:5", "-1:1:2.5"])
def test_malformed_axis(env, tmp_path, capsys, spec):
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--x", spec), capsys)
    assert repr(spec) in msg and "x axis" in msg


def test_bad_options(env, tmp_path, capsys):
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--samples", "0"), capsys)
    assert "--samples 0" in msg
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--device", "tpu9"), capsys)
    assert "tpu9" in msg
    msg = run_fail(["interpolate", "--model", env["model"], "--from", env["a"], "--to", env["b"], "--y", "-1:1:3",
                    "--data", env["data"], "--out", tmp_path / "o.nc"], capsys)
    assert "--via" in msg
    msg = run_fail(surface_args(env, tmp_path / "o.nc", "--normalization", "batch"), capsys)
    assert "'batch'" in msg
    msg = run_fail(["interpolate", "--model", env["model"], "--from", env["a"], "--to", env["a"], "--data", env["data"],
                    "--out", tmp_path / "o.nc"], capsys)
    assert "identical" in msg


def test_missing_or_damaged_landscape_file(tmp_path, capsys):
    msg = run_fail(["info", tmp_path / "none.nc"], capsys)
    assert "does not exist" in msg
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a landscape")
    msg = run_fail(["plot", junk], capsys)
    assert "junk.nc" in msg


# ------------------------------------------------------------------------------------------------ subprocess


def _python_m(*argv, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lossmap", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_python_m_lossmap_end_to_end(env, tmp_path):
    proc = _python_m("surface", "--model", env["model"], "--checkpoint", env["a"], "--data", env["data"],
                     "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s.nc", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote s.nc (3×3 points; loss ")
    ds = store.load(tmp_path / "s.nc")
    ref = lossmap.compute(model_at(env, env["a"]), lossmap.data.npz(env["root"] / "data.npz"), x="-1:1:3", y="-1:1:3")
    np.testing.assert_array_equal(ds["loss"].values, ref["loss"].values)
    proc = _python_m("info", "s.nc", cwd=tmp_path)
    assert proc.returncode == 0 and "normalization" in proc.stdout


def test_python_m_lossmap_error_is_one_line(env, tmp_path):
    proc = _python_m("surface", "--model", env["model"], "--checkpoint", env["root"] / "wider.safetensors",
                     "--data", env["data"], "--out", "s.nc", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "does not fit the model" in proc.stderr


def test_a_reader_that_leaves_early_ends_the_command_quietly(env, tmp_path):
    """`lossmap info f.nc | head`: the pipe's reader is gone before the first line is written."""
    lossmap.compute(model_at(env, env["a"]), lossmap.data.npz(env["root"] / "data.npz"), x="-1:1:3", out=tmp_path / "s.nc")
    proc = subprocess.Popen([sys.executable, "-m", "lossmap", "info", "s.nc"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and err == ""


def test_ctrl_c_before_the_first_point_says_interrupted(tmp_path, capsys):
    (tmp_path / "slow.py").write_text("def build():\n    raise KeyboardInterrupt\n")
    rc = main(["surface", "--model", f"{tmp_path / 'slow.py'}:build", "--data", "digits:test", "--out", str(tmp_path / "s.nc")])
    assert rc == 130 and capsys.readouterr().err == "lossmap: interrupted\n"
    assert not (tmp_path / "s.nc").exists()


def test_docs_own_model_example_runs_as_written(tmp_path):
    """The command-line guide's 'your own model' shell block (factory file, .pt checkpoint, npz data) runs unchanged."""
    import re

    guide = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```(?:bash)?\n(.*?)```", guide, flags=re.S) if "mynet.py" in b]
    assert len(blocks) == 1
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), PYTHONWARNINGS="ignore")
    proc = subprocess.run(["bash", "-euc", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ds = store.load(tmp_path / "mynet.nc")
    assert ds.sizes == {"x": 11, "y": 11} and store.meta(ds)["samples"] == 256
    lines = proc.stdout.strip().splitlines()
    wrote = next(line for line in lines if line.startswith("wrote mynet.nc"))
    flatness = lines[lines.index(wrote) + 1]
    assert wrote.startswith("wrote mynet.nc (11×11 points; loss ")
    assert flatness.startswith(f"flatness: centre loss {ds.attrs['summary_centre']:.4g}")


def test_plot_all_on_a_single_row_plane_draws_what_applies(tmp_path, capsys):
    """A 9×1 plane has no contours or surface: `plot` writes the heatmap and the line, exit 0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    path = tmp_path / "row.nc"
    lossmap.compute(model, (torch.randn(20, 4), torch.randint(0, 3, (20,))), "-1:1:9", [0.0], out=path)
    assert main(["plot", str(path), "--format", "png"]) == 0
    assert sorted(p.name for p in tmp_path.glob("row_*.png")) == ["row_heatmap.png", "row_line.png"]
