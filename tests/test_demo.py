"""``lossmap demo --quick --compare`` end to end: files, accuracy, and summary numbers checked
against the written landscapes and against losses recomputed here from the saved checkpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossmap import store
from lossmap.commands.demo import GRIDS
from lossmap.data import digits
from lossmap.models import MnistCNN, load_checkpoint

@pytest.fixture(scope="module")
def demo(quick_demo):
    return quick_demo  # made once per session (conftest.py): the docs tests read the same folder


def summary_numbers(out) -> dict[str, float]:
    text = (out / "summary.txt").read_text(encoding="utf-8")
    return {k: float(v) for k, v in re.findall(r"^(\w+) = ([-+0-9.eE]+)", text, flags=re.M)}


def loss_and_accuracy(checkpoint, samples: int) -> tuple[float, float]:
    net = load_checkpoint(MnistCNN(), checkpoint).eval().double()
    x, y = digits("test").tensors
    with torch.no_grad():
        out = net(x[:samples].double())
    return F.cross_entropy(out, y[:samples]).item(), (out.argmax(1) == y[:samples]).double().mean().item()


@pytest.mark.slow
def test_demo_writes_every_file(demo):
    names = {p.name for p in demo.iterdir()}
    for stem in ("interpolation", "slice1d", "plane", "plane_sgd-b8", "plane_adam-b256"):
        assert f"{stem}.nc" in names and f"{stem}.directions.safetensors" in names
    for ckpt in ("init", "trained", "sgd-b8", "adam-b256"):
        assert f"{ckpt}.safetensors" in names
    figures = ["interpolation_line", "slice1d_line", "compare"] + [f"plane_{k}" for k in ("contour", "contourf", "heatmap", "surface", "line")]
    for fig in figures:
        assert (demo / f"{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
        assert (demo / f"{fig}.pdf").read_bytes()[:4] == b"%PDF", fig
    for report in ("report.html", "compare.html"):
        assert (demo / report).stat().st_size > 100_000  # plotly.js is embedded
    text = (demo / "summary.txt").read_text(encoding="utf-8")
    for name in ("interpolation.nc", "slice1d.nc", "plane.nc", "trained.safetensors", "plane_contour.png", "report.html"):
        assert name in text


@pytest.mark.slow
def test_demo_accuracy_and_checkpoints(demo):
    nums = summary_numbers(demo)
    assert nums["test_accuracy"] > 0.9  # quick mode (one epoch) reaches about 0.955
    _, acc = loss_and_accuracy(demo / "trained.safetensors", 360)
    assert nums["test_accuracy"] == pytest.approx(acc, abs=5e-5)
    _, init_acc = loss_and_accuracy(demo / "init.safetensors", 360)
    assert init_acc < 0.3  # the init checkpoint really is untrained


@pytest.mark.slow
def test_summary_numbers_match_landscapes(demo):
    nums = summary_numbers(demo)
    for key in ("interpolation", "slice1d", "plane"):
        loss = store.load(demo / f"{key}.nc")["loss"].values
        assert nums[f"{key}_loss_min"] == pytest.approx(float(np.nanmin(loss)), rel=1e-5)
        assert nums[f"{key}_loss_max"] == pytest.approx(float(np.nanmax(loss)), rel=1e-5)


@pytest.mark.slow
def test_landscapes_pass_through_the_models(demo):
    samples = GRIDS["quick"].samples
    init_loss, _ = loss_and_accuracy(demo / "init.safetensors", samples)
    trained_loss, trained_acc = loss_and_accuracy(demo / "trained.safetensors", samples)
    interp = store.load(demo / "interpolation.nc")
    assert interp["loss"].sel(x=0.0).item() == pytest.approx(init_loss, rel=1e-4)
    assert interp["loss"].sel(x=1.0).item() == pytest.approx(trained_loss, rel=1e-4)
    assert store.meta(interp)["markers"] == {"init": [0.0], "trained": [1.0]}
    line, plane = store.load(demo / "slice1d.nc"), store.load(demo / "plane.nc")
    assert line["loss"].sel(x=0.0).item() == pytest.approx(trained_loss, rel=1e-4)
    assert plane["loss"].sel(x=0.0, y=0.0).item() == pytest.approx(trained_loss, rel=1e-4)
    assert plane["accuracy"].sel(x=0.0, y=0.0).item() == pytest.approx(trained_acc, abs=1e-12)
    # same seed: the 1-D slice's direction is the plane's first direction, so they agree on β = 0
    for x in (-1.0, 1.0):
        assert plane["loss"].sel(x=x, y=0.0).item() == pytest.approx(line["loss"].sel(x=x).item(), rel=1e-5)
    m = store.meta(plane)
    assert (m["normalization"], m["directions_kind"], m["samples"], m["ndim"]) == ("filter", "random", samples, 2)
    assert plane.sizes == {"x": 7, "y": 7}


def test_training_is_reproducible_and_leaves_the_callers_rng_alone():
    from torch import nn
    from torch.utils.data import TensorDataset

    from lossmap.train import seeded, train

    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))

    def run(seed):
        with seeded(seed):
            net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
        res = train(net, data, data, epochs=2, batch_size=8, optimizer="sgd", lr=0.1, seed=seed)
        return net, res

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    (a, ra), (b, rb), (c, _) = run(0), run(0), run(1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert ra.epoch_loss == rb.epoch_loss and len(ra.epoch_loss) == 2
    assert a.training  # the mode is restored
    # the reported accuracy is recomputed here independently (eval mode: dropout off)
    a.eval()
    with torch.no_grad():
        acc = (a(data.tensors[0]).argmax(1) == data.tensors[1]).double().mean().item()
    assert ra.train_accuracy == pytest.approx(acc, abs=1e-12)
