"""Direction ensembles: one file with a seed dimension whose slices are the single-seed landscapes, resumed
like one landscape, curvature per seed against its closed form, and the commands that read ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossmap
from lossmap import store
from lossmap.directions import random_directions
from lossmap.errors import LossmapError
from lossmap.landscape import compute_run
from lossmap.run import Interrupted
from lossmap.uncertainty.ensemble import seed_summaries
from lossmap.uncertainty.seeds import parse_seeds

GRID = dict(x="-1:1:5", y="-1:1:4")  # 20 points, non-square


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _data(n: int = 96):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


class Tripwire:
    """A per-example metric that raises KeyboardInterrupt at call ``at`` (a Ctrl-C in the middle of a run)."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.calls = at, 0

    def __call__(self, out, target):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return out[:, 0]


def _run(model=None, **kw):
    metrics = {"accuracy": lossmap.accuracy, "first_logit": kw.pop("metric", None) or Tripwire()}
    return lossmap.compute(model or _model(), _data(), **{**GRID, "batch_size": 32, "chunk": 3, "engine": "plain", **kw},
                           metrics=metrics)


def test_parse_seeds():
    assert parse_seeds("0:8") == list(range(8)) and parse_seeds("8") == list(range(8)) and parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("5,1,9") == [5, 1, 9] and parse_seeds([2, 3]) == [2, 3]
    for bad in ("1", "0:1", "x", "1,1", 0):
        with pytest.raises(LossmapError):
            parse_seeds(bad)


def test_each_seed_of_the_file_is_that_seeds_landscape(tmp_path):
    ens = _run(seeds="3:6", out=tmp_path / "e.nc")
    assert ens.loss.dims == ("seed", "x", "y") and ens.seed.values.tolist() == [3, 4, 5]
    assert ens.loss_se.dims == ens.loss_paired_se.dims == ("seed", "x", "y")
    assert store.metric_names(ens) == ["loss", "accuracy", "first_logit"]
    for k, s in enumerate((3, 4, 5)):
        one = _run(seed=s)
        for name in ("loss", "accuracy", "first_logit", "loss_se", "first_logit_se", "loss_paired_se"):
            np.testing.assert_allclose(ens[name].isel(seed=k).values, one[name].values, rtol=1e-12, atol=1e-15, err_msg=name)
    saved = store.load(tmp_path / "e.nc")
    assert store.is_complete(saved) and saved.attrs["seeds"] == 3
    settings = store.meta(saved)["settings"]
    assert settings["seed"] == [3, 4, 5] and len(settings["directions_sha256"]) == 3
    assert not store.directions_path(tmp_path / "e.nc").exists()  # each seed's directions are redrawn from it


def test_an_interrupted_ensemble_resumes_and_equals_an_uninterrupted_one(tmp_path):
    ref = _run(seeds="0:3")
    out = tmp_path / "e.nc"
    # per point 3 batches; seed 0's run: the probe, the pass at θ0, 20 points; seed 1's run: its probe, then points
    trip = Tripwire(at=1 + 3 + 3 * 20 + 1 + 3 * 7 + 2)  # in seed 1's 8th point (its third chunk)
    with pytest.raises(Interrupted, match=r"26 of 60 points saved in .*e.nc"):
        _run(seeds="0:3", out=out, metric=trip, flush_every=1, flush_seconds=0)
    part = store.load(out)
    mask = store.done_mask(part)
    assert mask.shape == (3, 5, 4) and mask[0].all() and mask[1].sum() == 6 and not mask[2].any()
    run = compute_run(_model(), _data(), **GRID, batch_size=32, chunk=3, engine="plain", seeds="0:3", out=out,
                      metrics={"accuracy": lossmap.accuracy, "first_logit": Tripwire()})
    assert run.resumed and run.computed == 60 - 26
    done = run.landscape()
    for name in ("loss", "accuracy", "first_logit", "loss_se", "loss_paired_se"):
        assert np.array_equal(done[name].values, ref[name].values), name
    with pytest.raises(LossmapError, match=r"seed \(file: 3 points from 0 to 2, step 1, now: 2 points"):
        _run(seeds="0:2", out=out)
    with pytest.raises(LossmapError, match="seed"):
        _run(seed=0, out=out)


def test_seeds_and_given_directions_exclude_each_other():
    model = _model()
    with pytest.raises(LossmapError, match="seeds"):
        _run(model, seeds="0:2", directions=random_directions(model, 2, seed=0))


def test_curvature_at_the_centre_of_each_seed_is_dT_H_d():
    """A linear least-squares model: the loss is quadratic in the weights, H = 2·XᵀX/N, and the central second
    difference along each seed's direction d is exactly dᵀHd (directions regenerated from the seed)."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = torch.randn(200, 1, generator=g, dtype=torch.float64)
    ds = lossmap.compute(model, (x, y), "-1:1:5", "-0.5:0.5:3", seeds="0:4", normalization="none", engine="plain")
    curv = seed_summaries(ds)
    H = 2.0 * (x.T @ x).numpy() / len(x)
    for k, s in enumerate(range(4)):
        d = random_directions(model, 2, seed=s, normalization="none").tensors
        a, b = d[0]["weight"].reshape(-1).numpy(), d[1]["weight"].reshape(-1).numpy()
        assert curv["curvature_x"][k] == pytest.approx(a @ H @ a, rel=1e-8)
        assert curv["curvature_y"][k] == pytest.approx(b @ H @ b, rel=1e-8)


@pytest.mark.slow
def test_commands_read_ensembles(cli_files, tmp_path, capsys):
    from lossmap.cli import main

    def cli(*argv):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    base = ["surface", *cli_files, "--x", "-1:1:5", "--y", "-1:1:4", "--seeds", "0:3"]
    rc, out, err = cli(*base, "--out", tmp_path / "a.nc")
    assert rc == 0, err
    assert "over 3 direction seeds" in out and "curvature_x" in out
    # the same seeds on a model with the same shapes: a paired comparison
    rc, out, err = cli(*base, "--out", tmp_path / "b.nc", "--normalization", "layer")
    assert rc == 0, err
    rc, out, err = cli("compare", tmp_path / "a.nc", tmp_path / "b.nc", "--out", tmp_path / "cmp.png", "--rise", "0.05")
    assert rc == 0, err
    assert "t-test" in out and "beyond the spread across seeds" in out and (tmp_path / "cmp.png").stat().st_size > 0
    rc, out, err = cli("plot", tmp_path / "a.nc", "--out", f"{tmp_path}/", "--mask-noise")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.glob("a_*.png")) == ["a_contour.png", "a_line.png", "a_summary.png"]
    rc, out, err = cli("report", tmp_path / "a.nc", tmp_path / "b.nc", "--out", tmp_path / "r.html")
    assert rc == 0, err
    assert "Flatness numbers over seeds" in (tmp_path / "r.html").read_text()
    rc, out, err = cli("info", tmp_path / "a.nc")
    assert rc == 0 and "seed: 3 points" in out and "loss_paired_se" in out
    rc, out, err = cli("export", tmp_path / "a.nc", "--out", tmp_path / "a.vtu")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "direction ensemble" in err
    rc, out, err = cli("surface", *cli_files, "--x", "-1:1:5", "--y", "-1:1:4", "--out", tmp_path / "c.nc")
    assert rc == 0, err
    rc, out, err = cli("compare", tmp_path / "a.nc", tmp_path / "c.nc", "--out", tmp_path / "mixed.png")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "ensembles" in err
