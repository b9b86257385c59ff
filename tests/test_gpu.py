"""CUDA paths against the CPU float64 reference (skipped without a GPU), the TF32 switch and bf16 autocast."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lossmap
from lossmap.data import digits
from lossmap.directions import random_directions
from lossmap.precision import tf32_allowed as _precision
from lossmap.models import MnistCNN

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_precision_switch_sets_and_restores_the_global_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's own default
    try:
        with _precision("cuda:0", False):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        with _precision("cpu", False):  # nothing to do on the CPU
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    net = MnistCNN()
    ds = digits("test")
    return net, (ds.tensors[0][:300], ds.tensors[1][:300]), random_directions(net, 2, seed=1)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("engine", ["plain", "fast", "vmap"])
def test_cuda_engines_match_cpu_float64(setting, engine):
    net, data, d = setting
    before = copy.deepcopy(net.state_dict())
    ref = lossmap.compute(net, data, "-1:1:5", "-0.5:1:4", directions=d, dtype="float64", engine="plain")
    got = lossmap.compute(net, data, "-1:1:5", "-0.5:1:4", directions=d, device="cuda", engine=engine, chunk=6)
    np.testing.assert_allclose(got.loss.values, ref.loss.values, rtol=1e-6)
    np.testing.assert_allclose(got.accuracy.values, ref.accuracy.values, atol=1.01 / 300)
    assert got.attrs["device"].startswith("cuda") and not got.attrs["tf32"]
    # the engine asked for really ran (no silent fallback to the plain loop or to one point at a time)
    assert got.attrs["engine"].split(":")[0] == engine and "vmap-fallback" not in got.attrs["engine"]
    assert all(torch.equal(v, before[k]) and v.device.type == "cpu" for k, v in net.state_dict().items())


@pytest.mark.gpu
@cuda
def test_tf32_is_opt_in_and_its_error_is_recorded(setting):
    net, data, d = setting
    got = lossmap.compute(net, data, "-1:1:3", "-1:1:3", directions=d, device="cuda", tf32=True)
    # TF32 really was on: float32 arithmetic would be within ~1e-7
    assert got.attrs["tf32"] and 1e-7 < got.attrs["tf32_centre_rel_error"] < 1e-2


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("engine", ["fast", "vmap"])
def test_bf16_autocast_on_cuda_within_its_bound(setting, engine):
    net, data, d = setting
    ref = lossmap.compute(net, data, "-1:1:3", "-1:1:3", directions=d, dtype="float64", engine="plain")
    got = lossmap.compute(net, data, "-1:1:3", "-1:1:3", directions=d, device="cuda", engine=engine, bf16=True)
    np.testing.assert_allclose(got.loss.values, ref.loss.values, rtol=1e-2)
    assert got.attrs["bf16"] and 1e-6 < got.attrs["bf16_centre_rel_error"] < 1e-2
