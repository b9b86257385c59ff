"""``lossmap demo --quick --connect``: two seed CNNs from different seeds trained briefly on the embedded digits.
The aligned barrier is below the unaligned one and the trained curve's highest loss below the straight line's;
the files' values are recomputed here in float64 from the saved checkpoints, and the aligned checkpoint is
checked to compute B's function."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossmap.cli import main
from lossmap.commands.demo_connect import SETTINGS
from lossmap.connect.files import load_result
from lossmap.data import digits
from lossmap.models import MnistCNN, load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_connect") / "d"
    assert main(["demo", "--quick", "--connect", "--out", str(out)]) == 0
    return out


def _numbers(out) -> dict[str, float]:
    text = (out / "summary.txt").read_text(encoding="utf-8")
    return {k: float(v) for k, v in re.findall(r"^(\w+) = ([-+0-9.eE]+)", text, flags=re.M)}


def _loss64(state: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    net = MnistCNN().double().eval()
    with torch.no_grad():
        out = torch.func.functional_call(net, {k: v.double() for k, v in state.items()}, (x.double(),))
    return float(F.cross_entropy(out, y))


def _state(path) -> dict:
    return {k: v.detach() for k, v in load_checkpoint(MnistCNN(), path).state_dict().items()}


def test_alignment_lowers_the_barrier_and_the_curve_stays_below_the_line(demo):
    nums = _numbers(demo)
    for split in ("train", "test"):
        assert nums[f"aligned_loss_barrier_{split}"] < nums[f"unaligned_loss_barrier_{split}"]
        assert nums[f"aligned_error_barrier_{split}"] < nums[f"unaligned_error_barrier_{split}"]
    assert nums["curve_max_loss"] < nums["line_max_loss"]
    ds = load_result(demo / "connect.nc", "lossmap.connect")
    loss = ds["barrier"].sel(quantity="loss", definition="frankle")
    np.testing.assert_allclose(loss.sel(path="aligned", data="digits:train"), nums["aligned_loss_barrier_train"], rtol=1e-5)
    curve = load_result(demo / "curve.nc", "lossmap.curve")
    assert float(curve["peak"].sel(path="curve", quantity="loss")) == pytest.approx(nums["curve_max_loss"], rel=1e-5)
    for name in ("connect.aligned.safetensors", "connect.spec.json", "curve.bend.safetensors", "curve_plane.nc",
                 "connect_barriers.png", "curve.png", "curve_profile.png", "connect.html"):
        assert (demo / name).stat().st_size > 0, name
    assert "Barriers between A and B" in (demo / "connect.html").read_text(encoding="utf-8")


def test_files_agree_with_float64_losses_from_the_checkpoints(demo):
    n = SETTINGS["quick"].samples
    x, y = (t[:n] for t in digits("train").tensors)
    a, b = _state(demo / "trained.safetensors"), _state(demo / "trained_seed1.safetensors")
    aligned, bend = _state(demo / "connect.aligned.safetensors"), _state(demo / "curve.bend.safetensors")
    ds = load_result(demo / "connect.nc", "lossmap.connect")
    for path, end in (("unaligned", b), ("aligned", aligned)):
        mid = {k: 0.5 * (a[k].double() + end[k].double()) for k in a}
        got = float(ds["loss"].sel(path=path, data="digits:train", alpha=0.5))
        assert got == pytest.approx(_loss64(mid, x, y), rel=1e-4)
    curve = load_result(demo / "curve.nc", "lossmap.curve")
    on_curve = {k: 0.25 * a[k].double() + 0.5 * bend[k].double() + 0.25 * b[k].double() for k in a}
    assert float(curve["loss"].sel(path="curve", t=0.5)) == pytest.approx(_loss64(on_curve, x, y), rel=1e-4)
    assert float(curve["loss"].sel(path="line", t=0.5)) == pytest.approx(
        _loss64({k: 0.5 * (a[k].double() + b[k].double()) for k in a}, x, y), rel=1e-4)
    # the aligned checkpoint is B with its hidden units reordered: the same function, other weights
    xt = digits("test").tensors[0][:64].double()
    net = MnistCNN().double().eval()
    with torch.no_grad():
        out_b = torch.func.functional_call(net, {k: v.double() for k, v in b.items()}, (xt,))
        out_aligned = torch.func.functional_call(net, {k: v.double() for k, v in aligned.items()}, (xt,))
    torch.testing.assert_close(out_aligned, out_b, rtol=0, atol=1e-9)
    assert any(not torch.equal(aligned[k], b[k]) for k in b)
