"""``lossmap hessian``, ``surface --directions-from hessian --curvature`` and ``plot --kind curvature`` end to end
on a tiny model; the eigenvalues against torch.autograd.functional.hessian of the same model and data; bad input
gives one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lossmap import store
from lossmap.cli import main
from lossmap.curvature.results import load_eigenvectors, load_spectrum
from lossmap.data import load_data
from lossmap.directions import Directions
from lossmap.models import load_checkpoint, load_model

from oracles import dense_hessian

pytestmark = pytest.mark.slow


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def oracle_eigenvalues(cli_files) -> np.ndarray:
    """Eigenvalues of the dense Hessian of the mean cross-entropy over the npz data (float64 copy of the model)."""
    spec, ckpt, data = cli_files[1], cli_files[3], cli_files[5]
    model = load_checkpoint(load_model(spec), ckpt).double()
    x, y = load_data(data).tensors
    x = x.double()
    return np.linalg.eigvalsh(dense_hessian(model, x, y))


def test_hessian_command_writes_the_spectrum_eigenvectors_and_directions(tmp_path, cli_files, capsys):
    out = tmp_path / "h.nc"
    code, stdout, err = cli(["hessian", *cli_files, "--out", out, "--top", 3, "--bottom", 2, "--tol", 1e-6, "--trace",
                             "--trace-matvecs", 30, "--density", "--steps", 12, "--runs", 2, "--per-layer",
                             "--directions", "top,bottom", "--dtype", "float64"], capsys)
    assert code == 0, err
    ref = oracle_eigenvalues(cli_files)
    ds = load_spectrum(out)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ds["eigenvalues_top"].values, ref[::-1][:3], atol=1e-6 * scale)
    np.testing.assert_allclose(ds["eigenvalues_bottom"].values, ref[:2], atol=1e-6 * scale)
    assert ds.attrs["parameter_count"] == ref.size == 163
    assert abs(ds.attrs["trace"] - ref.sum()) < 5 * ds.attrs["trace_se"] + 1e-9
    assert abs(ds["density_weights"].values.sum() - 1) < 1e-12
    assert ds.attrs["hvps_total"] > ds.attrs["hvps_top"] > 0 and list(ds["layer"].values) == ["1", "3"]
    vectors = load_eigenvectors(tmp_path / "h.eigenvectors.safetensors")
    assert len(vectors["top"]) == 3 and len(vectors["bottom"]) == 2
    d = Directions.load(tmp_path / "h.directions.safetensors")
    assert d.kind == "hessian" and "most negative" in d.labels[1]
    assert (tmp_path / "h_density.png").stat().st_size > 1000
    assert f"wrote {out}" in stdout and "163 parameters" in stdout
    # the saved directions slice a surface; the grid's units are distances in parameter space
    code, stdout, err = cli(["surface", *cli_files, "--directions", tmp_path / "h.directions.safetensors",
                             "--x", "-1:1:3", "--y", "-1:1:3", "--out", tmp_path / "s.nc"], capsys)
    assert code == 0, err
    assert store.load(tmp_path / "s.nc").attrs["directions_kind"] == "hessian"
    # computed results are not replaced without --overwrite
    code, _, err = cli(["hessian", *cli_files, "--out", out, "--top", 1], capsys)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1


def test_surface_along_eigenvectors_with_a_curvature_map_resumes_and_plots(tmp_path, cli_files, capsys):
    out = tmp_path / "c.nc"
    args = ["surface", *cli_files, "--directions-from", "hessian:top,bottom", "--curvature", "--x", "-0.5:0.5:3",
            "--y", "-0.5:0.5:3", "--out", out, "--flush-seconds", "0"]
    code, stdout, err = cli(args, capsys)
    assert code == 0, err
    ds = store.load(out)
    assert ds.attrs["directions_kind"] == "hessian" and ds.attrs["curvature_points_done"] == 9
    lmax, lmin = ds["lambda_max"].values, ds["lambda_min"].values
    ref = oracle_eigenvalues(cli_files)
    assert abs(lmax[1, 1] - ref[-1]) < 1e-3 * ref[-1] and abs(lmin[1, 1] - ref[0]) < 1e-3 * abs(ref).max()
    np.testing.assert_allclose(ds["lambda_ratio"].values, np.abs(lmin / lmax))
    assert "lambda_max" in stdout
    # drop four points of the map: a rerun computes those only, and the loss grid is not recomputed
    mask = np.ones((3, 3), bool)
    mask[0, :] = mask[2, 2] = False
    part = ds.copy()
    for name in ("lambda_max", "lambda_min", "lambda_ratio"):
        part[name] = part[name].where(mask)
    part = part.assign_coords(curvature_done=(("x", "y"), mask.astype(np.uint8)))
    part.attrs["curvature_points_done"] = 5
    store.save(part, out)
    code, stdout, err = cli(args, capsys)
    assert code == 0, err
    again = store.load(out)
    assert "curvature_done" not in again.coords and again.attrs["curvature_points_done"] == 9
    np.testing.assert_allclose(again["lambda_max"].values, lmax, rtol=1e-4)
    np.testing.assert_allclose(again["lambda_min"].values, lmin, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(again["loss"].values, ds["loss"].values)
    code, stdout, err = cli(["plot", out, "--kind", "curvature"], capsys)
    assert code == 0, err and (tmp_path / "c_curvature.png").stat().st_size > 1000


READ_WITHOUT_TORCH = """
import sys
from lossmap.cli import main
for argv in (["info", "h.nc"], ["plot", "h.nc", "--format", "png,pdf"], ["plot", "h.nc", "--kind", "density", "--out", "d.svg"]):
    assert main(argv) == 0, argv
print("torch imported:", "torch" in sys.modules)
"""


def _numbers(line: str) -> np.ndarray:
    """The numbers after a line's colon, up to its parenthesis."""
    return np.array([float(v) for v in line.split(":", 1)[1].split("(")[0].replace("±", ",").split(",")])


def test_info_and_plot_read_a_hessian_file_without_torch(tmp_path, cli_files, capsys):
    code, _, err = cli(["hessian", *cli_files, "--out", tmp_path / "h.nc", "--top", 2, "--bottom", 1, "--tol", 1e-8,
                        "--trace", "--trace-matvecs", 30, "--density", "--steps", 10, "--per-layer", "--dtype", "float64"],
                       capsys)
    assert code == 0, err
    proc = subprocess.run([sys.executable, "-c", READ_WITHOUT_TORCH], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    assert printed["torch imported"].endswith("False")
    ref = oracle_eigenvalues(cli_files)
    np.testing.assert_allclose(_numbers(printed["largest eigenvalues"]), ref[::-1][:2], rtol=1e-5)
    np.testing.assert_allclose(_numbers(printed["most negative eigenvalues"]), ref[:1], rtol=1e-5)
    ds = load_spectrum(tmp_path / "h.nc")
    assert _numbers(printed["trace"]).tolist() == [float(f"{ds.attrs['trace']:.6g}"), float(f"{ds.attrs['trace_se']:.2g}")]
    assert "163 parameters" in proc.stdout and "  1 (" in proc.stdout and "  3 (" in proc.stdout  # the two layers
    for name in ("h_density.png", "h_density.pdf", "d.svg"):
        assert (tmp_path / name).stat().st_size > 1000, name
    # what a Hessian file cannot draw, and a density the file does not hold: one line each
    code, _, err = cli(["plot", tmp_path / "h.nc", "--kind", "contour"], capsys)
    assert code == 2 and "--kind density" in err and err.count("\n") == 1, err
    code, _, err = cli(["hessian", *cli_files, "--out", tmp_path / "top.nc", "--top", 1], capsys)
    assert code == 0, err
    code, _, err = cli(["plot", tmp_path / "top.nc"], capsys)
    assert code == 2 and "--density" in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("top_*"))


NOISY = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)
    def forward(self, x):
        return self.lin(x + 0.1 * torch.randn_like(x))

def noisy():
    return Noisy()

def frozen():
    return nn.BatchNorm1d(16, affine=False)

def shuffled():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(40, 16, generator=g), torch.randint(0, 3, (40,), generator=g)),
                      batch_size=8, shuffle=True)
"""


@pytest.mark.parametrize("extra, match", [
    (["--top", 163], "top=163 eigenvalues of a Hessian of 163 parameters"),
    (["--top", 2, "--bottom", 500], "bottom=500"),
    (["--top", -1], "--top -1"),
    (["--top", 0], "nothing to compute"),
    (["--tensors", "nothing*"], "matches no tensor"),
    (["--trace", "--trace-matvecs", 2], "--trace-matvecs 2"),
    (["--directions", "left"], "not understood"),
    (["--top", 1, "--directions", "top,top"], "--top 2 or more"),
    (["--top", 2, "--directions", "top,bottom"], "--bottom 1 or more"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli_files, capsys, extra, match):
    code, out, err = cli(["hessian", *cli_files, "--out", tmp_path / "h.nc", *extra], capsys)
    assert code == 2 and match in err and err.count("\n") == 1, err
    assert "HVPs" not in out and not (tmp_path / "h.nc").exists()  # refused before any work


def test_negative_seeds_seed_the_curvature_commands(tmp_path, cli_files, capsys):
    # numpy's seed sequences refuse negative numbers; torch.manual_seed and `surface --seed` take them
    code, _, err = cli(["hessian", *cli_files, "--out", tmp_path / "h.nc", "--top", 2, "--tol", 1e-8, "--trace",
                        "--trace-matvecs", 9, "--seed", -3, "--dtype", "float64"], capsys)
    assert code == 0, err
    ref = oracle_eigenvalues(cli_files)
    np.testing.assert_allclose(load_spectrum(tmp_path / "h.nc")["eigenvalues_top"].values, ref[::-1][:2], rtol=1e-6)
    code, _, err = cli(["surface", *cli_files, "--directions-from", "hessian", "--curvature", "--seed", -2,
                        "--x", "-0.5:0.5:3", "--out", tmp_path / "s.nc"], capsys)
    assert code == 0, err
    np.testing.assert_allclose(store.load(tmp_path / "s.nc")["lambda_max"].sel(x=0.0), ref[-1], rtol=1e-4)


def test_no_parameters_and_nondeterminism_are_one_line(tmp_path, cli_files, capsys):
    (tmp_path / "odd.py").write_text(NOISY)
    data = cli_files[4:6]
    cases = [
        (["--model", f"{tmp_path / 'odd.py'}:noisy", *data], "two Hessian-vector products with the same vector differ"),
        (["--model", f"{tmp_path / 'odd.py'}:frozen", *data], "the model has no parameters"),
        ([*cli_files[:4], "--data", f"{tmp_path / 'odd.py'}:shuffled"], "shuffled"),
    ]
    for argv, match in cases:
        code, _, err = cli(["hessian", *argv, "--out", tmp_path / "h.nc", "--top", 1], capsys)
        assert code == 2 and match in err and err.count("\n") == 1, err
    code, _, err = cli(["surface", *cli_files, "--directions-from", "hessian", "--directions", "d.safetensors",
                        "--out", tmp_path / "s.nc"], capsys)
    assert code == 2 and "use one of them" in err
    for flag in (["--curvature"], ["--directions-from", "hessian"]):
        code, _, err = cli(["surface", *cli_files, *flag, "--seeds", "2", "--out", tmp_path / "s.nc"], capsys)
        assert code == 2 and "--seeds" in err and err.count("\n") == 1, err
    assert not (tmp_path / "s.nc").exists()
    code, _, err = cli(["surface", *cli_files, "--curvature", "--bn", "recompute", "--out", tmp_path / "s.nc"], capsys)
    assert code == 2 and "frozen batch-norm" in err
    code, _, err = cli(["surface", *cli_files, "--directions-from", "hessian:top", "--y", "-1:1:3",
                        "--out", tmp_path / "s.nc"], capsys)
    assert code == 2 and "needs two eigenvectors" in err
