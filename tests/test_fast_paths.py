"""Every fast evaluator equals the plain float64 loop (the oracle) to 1e-6 relative.

The seed CNN runs on real (embedded digits) samples; biases move too (bias="keep"), so the cached
first layer's bias parts are exercised. Each test also checks that the speed-up it is about was
really in use, so a silent fallback to the plain path cannot pass for a fast path.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossmap.data import digits
from lossmap.directions import random_directions
from lossmap.engine import Engine
from lossmap.engine.fast import FastEngine
from lossmap.engine.onednn import bf16_conv_ok, onednn_usable
from lossmap.engine.vmap import VmapEngine
from lossmap.errors import LossmapError
from lossmap.landscape import compute
from lossmap.models import MnistCNN
from lossmap.objective import Objective

RTOL = 1e-6

# the speed-ups below that use oneDNN kernels are tested where this torch build has them (x86 CPU builds do);
# elsewhere the engine leaves them out (and other tests show the results are the same without them)
needs_onednn = pytest.mark.skipif(
    not (onednn_usable("_linear_pointwise") and onednn_usable("_convolution_pointwise")),
    reason="this torch build has no oneDNN pointwise kernels",
)
needs_bf16_conv = pytest.mark.skipif(not (onednn_usable("_convolution_pointwise") and bf16_conv_ok()),
                                     reason="oneDNN runs no bf16 convolutions on this CPU")


@pytest.fixture
def cache_any_first_layer(monkeypatch):
    """Cache the first moved layer whatever its fan-in (the seed's conv1 is below the default)."""
    monkeypatch.setattr("lossmap.engine.first_layer.MIN_FAN_IN", 0)


@pytest.fixture(scope="module")
def data():
    return digits("test")


def seed_net() -> nn.Module:
    torch.manual_seed(0)
    return MnistCNN()


class BNNet(nn.Module):
    """conv → BN → ReLU → conv → BN → pool → linear: batch-norm after the first moved layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(torch.flatten(x, 1))


def bn_net(data) -> nn.Module:
    torch.manual_seed(1)
    net = BNNet()
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        net(data.tensors[0][:200])
    return net.eval()


def objective(model, data, dirs, *, samples=48, batch_size=20, dtype=torch.float64, include_buffers=False, **kw):
    """The objective of ``model`` on ``data`` over the tensors ``dirs`` move."""
    return Objective(model, data, tensor_filter=dirs.tensor_filter, include_buffers=include_buffers, dtype=dtype,
                     batch_size=batch_size, samples=samples, **kw)


def workload(model, data, dirs, *, autocast=None, **kw):
    """The workload of ``model`` on ``data`` along ``dirs`` (the objective's tensors, loss and metrics)."""
    return objective(model, data, dirs, **kw).workload(dirs.tensors, autocast=autocast)


def evaluators(model, data, *, ndim=2, samples=48, batch_size=20, dtype=torch.float64, bias="keep", autocast=None, **kw):
    """The same setting evaluated by every engine, each checked on the probe batch first: {engine: engine}."""
    model = model.to(dtype)
    dirs = random_directions(model, ndim, seed=3, bias=bias, tensor_filter=kw.pop("tensor_filter", None))
    return {e: objective(model, data, dirs, samples=samples, batch_size=batch_size, dtype=dtype, **kw).engine(
        dirs.tensors, engine=e, autocast=autocast) for e in ("plain", "fast", "vmap")}


def _rebuilt(fast):
    """``fast``'s workload as it was before its speed-ups (the model's own tensors, the data as given)."""
    import dataclasses

    return dataclasses.replace(fast.work, live=list(fast.user_live))


def assert_same(a: np.ndarray, b: np.ndarray, rtol: float = RTOL) -> None:
    assert a.shape == b.shape
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)


def grid2(nx=3, ny=4):
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 1.5, ny)
    return np.array([[a, b] for a in x for b in y])


def test_seed_net_2d_non_square_grid_all_engines(data, cache_any_first_layer):
    ev = evaluators(seed_net(), data)
    assert type(ev["plain"]) is Engine
    fast, vm = ev["fast"], ev["vmap"]
    assert isinstance(fast, FastEngine) and isinstance(vm, VmapEngine)
    assert "first_layer" in fast.applied and "channels_last" in fast.applied
    assert "sub_batch" in fast.applied
    assert vm.vmap_ok
    coeffs = grid2()
    ref = ev["plain"].evaluate_many(coeffs)
    assert ref.shape == (12, 2) and np.ptp(ref[:, 0]) > 0.1  # the points differ: a real landscape
    assert_same(fast.evaluate_many(coeffs), ref)
    vm.points_per_forward = 5  # chunks of 5, 5, 2 points per forward
    assert_same(vm.evaluate_many(coeffs), ref)
    assert vm.vmap_ok


@pytest.mark.parametrize("cache", [False, True])
def test_seed_net_1d_through_compute(data, monkeypatch, cache):
    if cache:
        monkeypatch.setattr("lossmap.engine.first_layer.MIN_FAN_IN", 0)
    kw = dict(x="-0.8:1.2:7", samples=40, batch_size=16, bias="keep", dtype="float64", seed=5)
    plain = compute(seed_net(), data, engine="plain", **kw)
    assert plain.attrs["engine"] == "plain"
    for engine in ("fast", "vmap", "auto"):
        other = compute(seed_net(), data, engine=engine, **kw)
        assert_same(other.loss.values, plain.loss.values)
        assert_same(other.accuracy.values, plain.accuracy.values)
        # the file says which loop ran, with its speed-ups (float64 here: no oneDNN shortcuts)
        expected = {"fast": "fast: sub-batch", "vmap": "vmap: sub-batch", "auto": "fast: sub-batch"}
        assert other.attrs["engine"].startswith(expected[engine]), other.attrs["engine"]
        assert ("first-layer" in other.attrs["engine"]) == (cache and engine != "vmap")


def test_first_layer_cache_matches_at_each_point_and_uneven_sub_batches(data):
    """Sub-batches of 7 over 30 samples (uneven pieces) with the cached first layer."""
    model = seed_net().double()
    dirs = random_directions(model, 2, seed=1, bias="keep")
    plain = Engine(workload(model, data, dirs, samples=30, batch_size=30))
    fast = FastEngine(workload(model, data, dirs, samples=30, batch_size=30), sub_batch=7, first_layer=True)
    assert [b.size for b in fast.source] == [6, 6, 6, 6, 6] and "first_layer" in fast.applied
    for c in ([0.0, 0.0], [2.5, 0.0], [0.0, -3.0], [0.7, 0.4]):
        assert_same(fast.point(c), plain.point(c))


def test_float32_default_path_close_to_plain(data):
    """The path users get by default (fp32, mkldnn, NHWC): within fp32 round-off of the plain loop."""
    ev = evaluators(seed_net(), data, dtype=torch.float32, samples=64)
    coeffs = grid2(2, 2)
    ref = ev["plain"].evaluate_many(coeffs)
    assert "channels_last" in ev["fast"].applied
    assert_same(ev["fast"].evaluate_many(coeffs), ref, rtol=1e-4)


@needs_onednn
def test_float32_paths_against_the_float64_oracle(data):
    """fp32 with oneDNN's GEMM for the Linear layers: as close to the float64 loop as the plain fp32 loop is."""
    oracle = evaluators(seed_net(), data, samples=64)["plain"]
    ev = evaluators(seed_net(), data, dtype=torch.float32, samples=64)
    assert "onednn_linear" in ev["fast"].applied
    coeffs = grid2(2, 2)
    ref = oracle.evaluate_many(coeffs)
    err_plain = np.abs(ev["plain"].evaluate_many(coeffs) - ref)[:, 0] / ref[:, 0]
    err_fast = np.abs(ev["fast"].evaluate_many(coeffs) - ref)[:, 0] / ref[:, 0]
    assert err_plain.max() < 1e-6 and err_fast.max() < 1e-6  # both ~1e-7: float32 round-off


class FunctionalLinear(nn.Module):
    """F.linear without nn.Linear: a 3-D input, no bias, a transposed (non-contiguous) weight."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(49, 32) / 7)  # used transposed
        self.w2 = nn.Parameter(torch.randn(10, 16 * 32) / 20)
        self.b2 = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        h = torch.tanh(F.linear(x.reshape(-1, 16, 49), self.w1.t()))  # (n, 16, 32)
        return F.linear(h.flatten(1), self.w2, self.b2)


@needs_onednn
def test_onednn_linear_routes_functional_calls_and_matches_float64(data):
    torch.manual_seed(7)
    model = FunctionalLinear()
    oracle = evaluators(model, data, samples=40, bias="keep")["plain"]
    torch.manual_seed(7)
    ev = evaluators(FunctionalLinear(), data, dtype=torch.float32, samples=40, bias="keep")
    fast = ev["fast"]
    assert "onednn_linear" in fast.applied
    fast.ensure_reference()  # the centre's pass for the paired errors, before the points counted below
    calls = []
    op = fast.linear_mode.op
    fast.linear_mode.op = lambda *a: calls.append(a[0].shape) or op(*a)
    coeffs = grid2(2, 2)
    ref = oracle.evaluate_many(coeffs)
    assert_same(fast.evaluate_many(coeffs), ref, rtol=1e-6)
    assert len(calls) == 2 * 4 * len(fast.source) and any(len(shape) == 3 for shape in calls)
    n = len(calls)
    F.linear(torch.ones(1, 2), torch.ones(1, 2))
    assert len(calls) == n  # routed only inside the evaluator's forward
    off = FastEngine(fast.work, onednn_linear=False)
    assert "onednn_linear" not in off.applied
    assert_same(off.evaluate_many(coeffs), ref, rtol=1e-6)


@pytest.mark.parametrize("bn", ["frozen", "recompute"])
def test_batchnorm_model_both_policies(data, bn, cache_any_first_layer):
    model = bn_net(data)
    kw = dict(bn=bn)
    if bn == "recompute":
        kw["bn_data"] = (data.tensors[0][:100], data.tensors[1][:100])
    ev = evaluators(model, data, **kw)
    if bn == "recompute":  # the fast paths do not apply: make_engine gives the exact plain loop
        assert all(type(e) is Engine for e in ev.values())
    else:
        assert "first_layer" in ev["fast"].applied and ev["vmap"].vmap_ok
    coeffs = grid2(2, 3)
    ref = ev["plain"].evaluate_many(coeffs)
    for engine in ("fast", "vmap"):
        assert_same(ev[engine].evaluate_many(coeffs), ref)


def test_seed_conv1_is_not_cached_by_default(data):
    """Fan-in 9: reading k+1 cached outputs costs more than the convolution (measured), so auto skips it."""
    ev = evaluators(seed_net(), data, samples=16)
    assert "first_layer" not in ev["fast"].applied and "channels_last" in ev["fast"].applied
    coeffs = grid2(2, 2)
    assert_same(ev["fast"].evaluate_many(coeffs), ev["plain"].evaluate_many(coeffs))


def test_first_moved_layer_after_frozen_prefix(data):
    """Only fc1/fc2 move: the first moved layer is fc1, fed by the frozen convolutions."""
    ev = evaluators(seed_net(), data, tensor_filter="fc*")
    fast = ev["fast"]
    assert "first_layer" in fast.applied and fast.first.module is fast.model.fc1
    coeffs = grid2(3, 2)
    assert_same(fast.evaluate_many(coeffs), ev["plain"].evaluate_many(coeffs))


class ScaledInput(nn.Module):
    """The input is scaled by a parameter of the container before the first layer: no caching."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.fc1 = nn.Linear(784, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(torch.flatten(x, 1) * self.scale)))


class Shared(nn.Module):
    """One linear layer used twice: its output is not a single affine map of the point."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(784, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.tanh(self.inp(torch.flatten(x, 1)))
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(h)))))


class LinearFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@pytest.mark.parametrize("factory, cached", [(ScaledInput, False), (Shared, True), (LinearFirst, True)])
def test_models_where_caching_may_or_may_not_apply(data, factory, cached):
    torch.manual_seed(2)
    ev = evaluators(factory(), data, bias="filter")
    assert ("first_layer" in ev["fast"].applied) is cached
    coeffs = grid2(2, 3)
    ref = ev["plain"].evaluate_many(coeffs)
    for engine in ("fast", "vmap"):
        assert_same(ev[engine].evaluate_many(coeffs), ref)


def test_shared_first_layer_is_not_cached(data):
    """The first moved module runs twice (weight sharing): the cache must not be used."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(784, 784)
            self.b = nn.Linear(784, 10)

        def forward(self, x):
            x = torch.flatten(x, 1)
            return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))

    torch.manual_seed(4)
    ev = evaluators(Twice(), data, samples=24)
    assert "first_layer" not in ev["fast"].applied
    coeffs = grid2(2, 2)
    assert_same(ev["fast"].evaluate_many(coeffs), ev["plain"].evaluate_many(coeffs))


def test_custom_loss_and_metrics_keep_user_batches(data):
    def loss_fn(out, target):
        return F.nll_loss(out, target)

    def top2(out, target):
        return (out.topk(2, dim=1).indices == target[:, None]).any(dim=1).double().mean()

    ev = evaluators(seed_net(), data, loss_fn=loss_fn, metrics={"top2": top2})
    fast = ev["fast"]
    assert [b.size for b in fast.source] == [20, 20, 8]  # batch means: the user's cut is kept
    assert ev["plain"].metric_names == fast.metric_names == ["loss", "top2"]
    coeffs = grid2(2, 2)
    ref = ev["plain"].evaluate_many(coeffs)
    for engine in ("fast", "vmap"):
        assert_same(ev[engine].evaluate_many(coeffs), ref)


class LateItemNet(LinearFirst):
    """vmaps on the vmap engine's probe (two samples) but not on larger batches: ``.item()`` of a vmapped parameter."""

    def forward(self, x):
        scale = 1.0 + (abs(float(self.fc2.bias.sum().item())) if x.shape[0] > 2 else 0.0)
        return super().forward(x) / scale


def test_vmap_falls_back_when_the_model_cannot_be_batched(data):
    class ItemNet(LinearFirst):
        def forward(self, x):
            scale = 1.0 + abs(float(self.fc2.bias.sum().item()))  # .item() of a vmapped parameter fails
            return super().forward(x) / scale

    for net in (ItemNet, LateItemNet):
        torch.manual_seed(5)
        ev = evaluators(net(), data, samples=24)
        coeffs = grid2(2, 2)
        ref = ev["plain"].evaluate_many(coeffs)
        vm = ev["vmap"]
        # known before any point (the probe at the start), or from the first failing chunk on
        assert (not vm.vmap_ok) == (net is ItemNet)
        assert_same(vm.evaluate_many(coeffs), ref)
        assert not vm.vmap_ok


def test_a_fallback_mid_run_reaches_the_files_engine(data, tmp_path):
    from lossmap import store

    torch.manual_seed(5)
    ds = compute(LateItemNet(), data, x="-1:1:3", samples=24, engine="vmap", out=tmp_path / "l.nc")
    assert ds.attrs["engine"].startswith("vmap: ") and "vmap-fallback" in ds.attrs["engine"]
    assert store.load(tmp_path / "l.nc").attrs["engine"] == ds.attrs["engine"]


def test_user_forward_gets_the_plain_path(data):
    def forward(model, batch):
        return model(batch[0])

    ev = evaluators(seed_net(), data, forward=forward, samples=8)
    assert all(type(e) is Engine for e in ev.values())


def test_unknown_engine_names_the_choices(data):
    with pytest.raises(LossmapError, match="engine 'turbo'.*plain"):
        compute(seed_net(), data, x="-1:1:2", samples=4, engine="turbo")


def test_model_comes_back_unchanged(data):
    model = seed_net()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    strides = {n: t.stride() for n, t in model.state_dict().items()}
    compute(model, data, x="-1:1:3", y="-1:1:2", samples=16, bias="keep", engine="fast")
    for n, t in model.state_dict().items():
        assert torch.equal(t, before[n]) and t.stride() == strides[n], n
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(m.training for m in model.modules())  # built in train mode, given back in train mode


_HEAP_PROBE = """
import ctypes, json, sys, torch
from torch import nn
import lossmap

libc = ctypes.CDLL("libc.so.6")
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in fields]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

blocks = (ctypes.c_void_p * 4096)()  # a C array: no Python object lands in the heap between the blocks

def kept_after_free():
    # 4096 blocks of 64 KiB (256 MiB) from the heap, freed: MiB the heap keeps of them instead of giving back
    base = libc.mallinfo2().arena
    for i in range(4096):
        blocks[i] = libc.malloc(64 * 1024)
    for i in reversed(range(4096)):
        libc.free(blocks[i])
    return (libc.mallinfo2().arena - base) / 2**20

before = kept_after_free()
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
lossmap.compute(net, (torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))), x="-1:1:3", y="-1:1:3")
after = kept_after_free()
lossmap.tune_allocator()
tuned = kept_after_free()
print(json.dumps({"before": before, "after": after, "tuned": tuned}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in platform.libc_ver()[0],
                    reason="glibc's allocator is what lossmap.tune_allocator changes")
def test_compute_leaves_the_allocator_as_it_was_and_tuning_is_explicit(tmp_path):
    """After compute() freed heap memory goes back to the system as before; lossmap.tune_allocator() (what the
    lossmap command does) keeps it — so the probe would see a compute() that tuned the allocator."""
    script = tmp_path / "heap.py"
    script.write_text(_HEAP_PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = json.loads(done.stdout.strip().splitlines()[-1])
    assert kept["before"] < 128 and kept["after"] < 128, kept  # glibc's trim threshold is at most 64 MiB
    assert kept["tuned"] > 200, kept  # the tuned 1 GiB threshold keeps the 256 MiB


def test_a_model_the_fast_path_cannot_drive_gets_the_plain_loop(data, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("cannot reparametrize this module")

    monkeypatch.setattr(FastEngine, "__init__", broken)
    ev = evaluators(seed_net(), data, samples=8)
    assert type(ev["fast"]) is Engine and type(ev["vmap"]) is Engine


def test_moving_batchnorm_buffers_too(data):
    """include_buffers: the running statistics move with the parameters, on every engine."""
    model = bn_net(data).double()
    dirs = random_directions(model, 2, seed=7, bias="keep", include_buffers=True)
    assert any("running_mean" in n for n in dirs.names)
    ev = {e: objective(model, data, dirs, samples=40, include_buffers=True).engine(dirs.tensors, engine=e)
          for e in ("plain", "fast", "vmap")}
    assert ev["vmap"].vmap_ok
    coeffs = grid2(2, 2) * 0.3  # running variances stay positive
    ref = ev["plain"].evaluate_many(coeffs)
    for engine in ("fast", "vmap"):
        assert_same(ev[engine].evaluate_many(coeffs), ref)
    assert ev["vmap"].vmap_ok  # batched, not fallen back


def test_conv_weight_shared_by_two_modules(data):
    """One weight, two Conv2d modules: its channels_last copy is one tensor, written once per point."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 1, 3, padding=1)
            self.c2 = nn.Conv2d(1, 1, 3, padding=1)
            self.c2.weight = self.c1.weight
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(torch.flatten(torch.tanh(self.c2(torch.tanh(self.c1(x)))), 1))

    torch.manual_seed(6)
    ev = evaluators(Tied(), data, samples=24)
    assert "channels_last" in ev["fast"].applied
    coeffs = grid2(2, 2)
    ref = ev["plain"].evaluate_many(coeffs)
    for engine in ("fast", "vmap"):
        assert_same(ev[engine].evaluate_many(coeffs), ref)


@needs_bf16_conv
def test_bf16_autocast_every_engine_within_its_bound(data):
    """bf16 autocast: each engine within 1e-2 of the float64 loop, and really in bf16 (not fp32-exact)."""
    oracle = evaluators(seed_net(), data, samples=64)["plain"]
    coeffs = grid2(2, 2)
    ref = oracle.evaluate_many(coeffs)
    ev = evaluators(seed_net(), data, dtype=torch.float32, samples=64, autocast=torch.bfloat16)
    assert ev["fast"].autocast == torch.bfloat16 and "onednn_linear" not in ev["fast"].applied
    assert ev["fast"].fused == {"conv+relu": 2}  # fused layers run in bf16 too
    for engine, e in ev.items():
        got = e.evaluate_many(coeffs)
        assert got.dtype == np.float64
        rel = np.abs(got[:, 0] - ref[:, 0]) / ref[:, 0]
        assert rel.max() < 1e-2, engine
        assert rel.max() > 1e-5, engine  # fp32 arithmetic would be within 1e-6: bf16 was in use
        assert np.abs(got[:, 1] - ref[:, 1]).max() <= 3 / 64  # accuracy: at most a few of 64 samples flip


def test_bf16_error_at_the_centre_is_recorded_exactly(data):
    kw = dict(x="-1:1:3", y="-1:1:3", samples=48, batch_size=16, seed=2)
    exact = compute(seed_net(), data, **kw)
    fast = compute(seed_net(), data, bf16=True, **kw)
    assert fast.attrs["bf16"] and not exact.attrs["bf16"] and "bf16_centre_rel_error" not in exact.attrs
    centre = dict(x=0.0, y=0.0)
    rel = max(abs(float(fast[m].sel(centre)) - float(exact[m].sel(centre))) / abs(float(exact[m].sel(centre)))
              for m in ("loss", "accuracy"))
    # the exact run may take other float32 kernels (oneDNN's GEMM): its value differs in the 7th digit, which
    # moves an error of ~5e-4 by ~1e-7 relative to the loss, i.e. ~2e-4 relative to itself
    assert fast.attrs["bf16_centre_rel_error"] == pytest.approx(rel, rel=2e-3)
    assert 1e-6 < fast.attrs["bf16_centre_rel_error"] < 1e-2
    with pytest.raises(LossmapError, match="bf16 autocast needs float32"):
        compute(seed_net(), data, bf16=True, dtype="float64", **kw)


class ReluVariants(nn.Module):
    """Conv → ReLU written four ways, one conv whose output is used twice (not fusable), a conv
    with a hook (not fused), and a forward that reads ``self.training``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2)
        self.act = nn.ReLU(inplace=True)
        self.c3 = nn.Conv2d(4, 6, 3, padding="same")
        self.c4 = nn.Conv2d(6, 6, 1)
        self.c5 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.c6 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6 * 13 * 13, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.act(self.c2(x))
        x = torch.relu(self.c3(x))
        y = self.c4(x)
        x = y.relu() + torch.tanh(y)  # c4's output has two users
        x = self.c5(x).relu_()
        x = F.relu(self.c6(x))
        x = F.dropout(x, 0.5, self.training)
        return self.fc(torch.flatten(x, 1))


@needs_onednn
def test_conv_relu_fusion_matches_the_float64_loop(data, monkeypatch):
    torch.manual_seed(4)
    model = ReluVariants()
    model.c6.register_forward_hook(lambda m, i, o: o * 1.5)  # a hooked module keeps its own call
    model.train()  # fusion traces in evaluation mode, so the dropout in the graph is off
    oracle = evaluators(copy.deepcopy(model), data, samples=40, bias="keep")["plain"]
    ev = evaluators(model, data, dtype=torch.float32, samples=40, bias="keep")
    fast = ev["fast"]
    assert fast.fused == {"conv+relu": 4, "flatten+linear": 1}  # c1, c2, c3, c5; not c4 (two users), c6 (hook)
    coeffs = grid2(2, 2)
    ref = oracle.evaluate_many(coeffs)
    assert_same(fast.evaluate_many(coeffs), ref, rtol=1e-6)
    assert_same(ev["plain"].evaluate_many(coeffs), ref, rtol=1e-6)
    off = FastEngine(_rebuilt(fast), fuse=False)
    assert not off.fused
    monkeypatch.setattr("lossmap.engine.fx.FLATTEN_LINEAR_MAX_BYTES", 0)  # flatten as usual: only the fusion differs
    np.testing.assert_array_equal(off.evaluate_many(coeffs), fast.evaluate_many(coeffs))  # the post-op ReLU is exact


class ResidualNet(nn.Module):
    """Residual blocks in the spellings ResNets use: conv → BN → ReLU, ``out += x``, ``shortcut + out``,
    ``torch.add(...).relu()``, a strided 1×1 shortcut conv → BN, BN without affine parameters, a
    hooked BN (not folded), a BN output used twice (the chain stops there), and ``sc.add_(out)``,
    which writes into the shortcut (the add is not fused there; its conv → BN is). (Tracing records
    ``out += x`` as ``out + x``.)"""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.a1, self.an1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.a2, self.an2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)
        self.act = nn.ReLU()
        self.b1, self.bn1 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12)
        self.b2, self.bn2 = nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.short, self.sbn = nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12)
        self.c1, self.cn1 = nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.d1, self.dn1 = nn.Conv2d(12, 12, 1), nn.BatchNorm2d(12)
        self.e1, self.en1 = nn.Conv2d(12, 12, 1), nn.BatchNorm2d(12)
        self.f1, self.fn1 = nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))  # conv+bn+relu
        out = self.act(self.an1(self.a1(x)))  # conv+bn+relu
        out = self.an2(self.a2(out))
        out += x  # conv+bn+add (+=)
        x = torch.relu(out)  # ... +relu
        out = F.relu(self.bn1(self.b1(x)))  # conv+bn+relu
        x = (self.sbn(self.short(x)) + self.bn2(self.b2(out))).relu()  # conv+bn (shortcut), conv+bn+add+relu
        x = torch.add(self.cn1(self.c1(x)), x).relu_()  # conv+bn+add+relu
        h = self.dn1(self.d1(x))  # conv+bn, used twice
        x = h * torch.sigmoid(h) + self.en1(self.e1(x))  # e1 → hooked en1: nothing fused
        sc = x * 0.5
        sc.add_(self.fn1(self.f1(x)))  # writes into sc: conv+bn only
        return self.fc(F.adaptive_avg_pool2d(F.relu(sc), 1).flatten(1))


def residual_net() -> nn.Module:
    torch.manual_seed(9)
    net = ResidualNet()
    net.en1.register_forward_hook(lambda m, i, o: None)  # hooked: keeps its own call, e1 fuses nothing
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics far from (0, 1) so that folding matters
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.05, 3)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return net.eval()


@needs_onednn
def test_conv_bn_residual_relu_fusion_matches_the_float64_loop(data):
    model = residual_net()
    oracle = evaluators(copy.deepcopy(model), data, samples=40, batch_size=16)["plain"]
    fast = evaluators(model, data, dtype=torch.float32, samples=40, batch_size=16)["fast"]
    assert fast.fused == {"conv+bn+relu": 3, "conv+bn+add+relu": 3, "conv+bn": 3, "flatten+linear": 1}
    coeffs = grid2(3, 3)
    assert_same(fast.evaluate_many(coeffs), oracle.evaluate_many(coeffs), rtol=1e-6)
    off = FastEngine(_rebuilt(fast), fuse=False)
    assert not off.fused
    assert_same(off.evaluate_many(coeffs), fast.evaluate_many(coeffs), rtol=1e-6)


@needs_onednn
def test_folded_batch_norms_follow_moving_running_statistics(data):
    """With ``include_buffers`` the running statistics move too; the folding reads them at every point.
    (Small steps: a random direction on running_var soon makes a variance negative.)"""
    kw = dict(x="-0.02:0.02:3", y="-0.02:0.02:3", samples=40, batch_size=16, include_buffers=True, bias="keep", seed=1)
    ref = compute(residual_net().double(), data, engine="plain", dtype="float64", **kw)
    fast = compute(residual_net(), data, engine="fast", **kw)
    assert "conv+bn+add+relu x3" in fast.attrs["engine"] and "running_var" in " ".join(fast.attrs["moved_tensors"])
    assert_same(fast.loss.values, ref.loss.values, rtol=1e-6)
    assert np.ptp(ref.loss.values) > 1e-3  # the points differ: the statistics did move


@needs_bf16_conv
def test_fused_residual_net_under_bf16_within_its_bound(data):
    """bf16 autocast with folded batch norms and residual post-ops: within the bf16 bound of the float64 loop."""
    model = residual_net()
    ref = evaluators(copy.deepcopy(model), data, samples=40, batch_size=16)["plain"].evaluate_many(grid2(2, 2))
    fast = evaluators(model, data, dtype=torch.float32, samples=40, batch_size=16, autocast=torch.bfloat16)["fast"]
    assert fast.fused == {"conv+bn+relu": 3, "conv+bn+add+relu": 3, "conv+bn": 3}
    rel = np.abs(fast.evaluate_many(grid2(2, 2))[:, 0] / ref[:, 0] - 1)
    assert 1e-5 < rel.max() < 1e-2


def test_norm_by_batch_statistics_keeps_the_users_batches(data):
    """A batch norm without running statistics normalizes by each batch: re-cutting would change the result."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    oracle = evaluators(copy.deepcopy(net), data, samples=40, batch_size=16)["plain"]
    ev = evaluators(net, data, dtype=torch.float32, samples=40, batch_size=16)
    assert "sub_batch" not in ev["fast"].applied and "channels_last" not in ev["fast"].applied
    coeffs = grid2(2, 2)
    ref = oracle.evaluate_many(coeffs)
    for engine in ("fast", "vmap"):
        assert_same(ev[engine].evaluate_many(coeffs), ref, rtol=1e-6)


class FlattenHeads(nn.Module):
    """Flatten → Linear three ways on channels_last activations, plus a hooked head and a flatten
    with an explicit end_dim (both left as they are)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2)
        self.fa, self.fb, self.fc = nn.Linear(6 * 13 * 13, 10), nn.Linear(6 * 13 * 13, 10), nn.Linear(6 * 13 * 13, 10)
        self.fd, self.fe = nn.Linear(6 * 13 * 13, 10, bias=False), nn.Linear(6 * 13 * 13, 10)

    def forward(self, x):
        h = F.relu(self.conv(x))
        a = self.fa(h.flatten(1)) + self.fb(torch.flatten(h, start_dim=1)) + self.fd(torch.flatten(h, 1))
        return a + self.fc(torch.flatten(h, 1)) + self.fe(torch.flatten(h, 1, -1))


@needs_onednn
def test_flatten_linear_reads_channels_last_memory_as_it_lies(data):
    torch.manual_seed(11)
    model = FlattenHeads()
    model.fc.register_forward_hook(lambda m, i, o: o * 0.5)
    oracle = evaluators(copy.deepcopy(model), data, samples=40, batch_size=16)["plain"]
    fast = evaluators(model, data, dtype=torch.float32, samples=40, batch_size=16)["fast"]
    assert "channels_last" in fast.applied
    assert fast.fused == {"conv+relu": 1, "flatten+linear": 3}  # fa, fb, fd; not fc (hook) nor fe
    coeffs = grid2(3, 3)
    ref = oracle.evaluate_many(coeffs)
    assert_same(fast.evaluate_many(coeffs), ref, rtol=1e-6)
    # the permuted weights follow every point: back and forth between two points gives the oracle each time
    for i in (4, 0, 4):
        assert_same(fast.evaluate_many(coeffs[i : i + 1]), ref[i : i + 1], rtol=1e-6)


def test_untraceable_model_keeps_its_own_forward(data):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            h = F.relu(self.c(x))
            if h.mean() > 0:  # data-dependent control flow: symbolic tracing fails
                h = h * 2
            return self.fc(h.flatten(1))

    torch.manual_seed(5)
    oracle = evaluators(Branchy(), data, samples=24)["plain"]
    torch.manual_seed(5)
    fast = evaluators(Branchy(), data, dtype=torch.float32, samples=24)["fast"]
    assert not fast.fused and "channels_last" in fast.applied
    coeffs = grid2(2, 2)
    assert_same(fast.evaluate_many(coeffs), oracle.evaluate_many(coeffs), rtol=1e-6)


@needs_bf16_conv
def test_onednn_shortcuts_follow_a_users_autocast():
    """Inside a caller's CPU autocast, linear goes through autocast and fused conv+ReLU runs in bf16: not fp32 oneDNN."""
    from lossmap.engine.onednn import OneDNNLinear as _OneDNNLinear
    from lossmap.engine.onednn import conv_fused as _conv_fused
    from lossmap.engine.onednn import onednn_linear_op as _onednn_linear_op

    x, w = torch.randn(4, 8), torch.randn(3, 8)
    img, k = torch.randn(2, 1, 6, 6), torch.randn(2, 1, 3, 3)
    with torch.inference_mode(), _OneDNNLinear(_onednn_linear_op()):
        assert F.linear(x, w).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert F.linear(x, w).dtype == torch.bfloat16
            fused = _conv_fused(img, k, None, (1, 1), (0, 0), (1, 1), 1, relu=True)
            plain = F.relu(F.conv2d(img, k))
            assert fused.dtype == plain.dtype == torch.bfloat16
            torch.testing.assert_close(fused, plain, rtol=0, atol=0)  # the same bf16 arithmetic
    ref = F.relu(F.conv2d(img, k))
    torch.testing.assert_close(_conv_fused(img, k, None, (1, 1), (0, 0), (1, 1), 1, relu=True), ref, rtol=1e-6, atol=1e-6)


def test_model_with_tuple_output_and_a_user_loss(data):
    """A forward that returns a tuple: the graph check cannot compare it, so the model's forward stays."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3, stride=2)
            self.fc = nn.Linear(4 * 13 * 13, 10)

        def forward(self, x):
            h = F.relu(self.c(x))
            return self.fc(h.flatten(1)), h

    def loss(out, target):
        return F.cross_entropy(out[0], target)

    torch.manual_seed(8)
    oracle = evaluators(Pair(), data, samples=24, loss_fn=loss)["plain"]
    torch.manual_seed(8)
    fast = evaluators(Pair(), data, dtype=torch.float32, samples=24, loss_fn=loss)["fast"]
    assert isinstance(fast, FastEngine) and not fast.fused
    coeffs = grid2(2, 2)
    assert_same(fast.evaluate_many(coeffs), oracle.evaluate_many(coeffs), rtol=1e-6)


def test_onednn_switched_off_by_the_user_is_respected(data, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    fast = evaluators(seed_net(), data, dtype=torch.float32, samples=16)["fast"]
    assert "onednn_linear" not in fast.applied and not fast.fused
