"""Data of any size: streamed and cached runs give the same numbers, a data set larger than the memory
budget is evaluated with peak memory bounded (measured in a fresh process), and data in a changing order is
refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lossmap
from lossmap.data.source import Cached, Streamed, make_source, parse_bytes
from lossmap.errors import LossmapError
from lossmap.models import MnistCNN


def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("engine", ["plain", "fast", "vmap"])
def test_streamed_and_cached_runs_agree(engine):
    torch.manual_seed(0)
    model = MnistCNN()
    data = DataLoader(_images(), batch_size=32)
    kw = dict(x="-1:1:3", y="-1:1:3", seed=1, engine=engine)
    cached = lossmap.compute(model, data, cache="device", **kw)
    streamed = lossmap.compute(model, data, cache="stream", **kw)
    budget = lossmap.compute(model, data, memory_budget=10_000, **kw)  # 96 images are 301 kB: over the budget
    assert cached.attrs["data_mode"] == "cached" and streamed.attrs["data_mode"] == budget.attrs["data_mode"] == "streamed"
    for ds in (streamed, budget):
        np.testing.assert_allclose(ds.loss.values, cached.loss.values, rtol=1e-6)
        np.testing.assert_array_equal(ds.accuracy.values, cached.accuracy.values)
        assert ds.attrs["settings"]["data_sha256"] == cached.attrs["settings"]["data_sha256"]  # the same samples


def test_streaming_honours_samples_and_resumes_a_cached_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    data = DataLoader(_images(), batch_size=25)
    out = tmp_path / "s.nc"
    first = lossmap.compute(model, data, x="-1:1:5", samples=60, cache="device", out=out, chunk=1)
    assert first.attrs["samples"] == 60
    ds = lossmap.load(out)
    mask = np.array([True, False, True, False, True])
    lossmap.store.save(lossmap.store.partial_dataset(ds, mask), out)
    again = lossmap.compute(model, data, x="-1:1:5", samples=60, cache="stream", out=out, chunk=1)  # same samples: resumes
    np.testing.assert_allclose(again.loss.values, first.loss.values, rtol=1e-6)


class _Shuffling(Dataset):
    """Random augmentation: every read of an item adds fresh noise."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


def test_data_in_a_changing_order_is_refused_with_one_line():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    shuffled = DataLoader(_images(), batch_size=16, shuffle=True)
    for cache in ("device", "stream"):
        with pytest.raises(LossmapError, match=r"is shuffled .*shuffle=False") as info:
            lossmap.compute(model, shuffled, [0.0], cache=cache)
        assert "\n" not in str(info.value)
    augmented = DataLoader(_Shuffling(_images()), batch_size=16)
    with pytest.raises(LossmapError, match="another first batch on a second pass"):
        lossmap.compute(model, augmented, [0.0], cache="stream")
    ds = lossmap.compute(model, shuffled, [0.0], cache="stream", allow_nondeterministic=True)
    assert ds.attrs["data_nondeterministic"] == 1


def test_a_one_pass_iterator_is_cached_or_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    batches = ((x, y) for x, y in DataLoader(_images(), batch_size=32))
    assert lossmap.compute(model, batches, [0.0]).attrs["data_mode"] == "cached"
    with pytest.raises(LossmapError, match="one-pass iterator cannot be streamed"):
        lossmap.compute(model, ((x, y) for x, y in DataLoader(_images(), batch_size=32)), [0.0], cache="stream")


def test_sources_see_the_same_batches_and_stream_ahead():
    data = DataLoader(_images(50), batch_size=16)
    cached = make_source(data, cache="device", samples=40)
    streamed = make_source(data, cache="stream", samples=40)
    assert isinstance(cached, Cached) and isinstance(streamed, Streamed)
    assert cached.total == streamed.total == 40 and [b.size for b in streamed] == [16, 16, 8]
    every = lambda source: torch.cat([b.inputs for b in source])  # noqa: E731
    assert torch.equal(every(cached), every(streamed)) and torch.equal(every(streamed), every(streamed.rebatched(6)))
    split = [b.size for b in streamed.rebatched(6)]  # each streamed batch is cut evenly, never joined to the next
    assert split == [5, 6, 5, 5, 6, 5, 4, 4]
    assert [b.size for b in cached.rebatched(6)] == [6, 5, 6, 6, 6, 5, 6]  # cached batches are joined, then cut evenly
    assert cached.fingerprint() == streamed.fingerprint()


def test_memory_budget_is_parsed_and_checked():
    assert parse_bytes("2GB") == 2 * 1024**3 and parse_bytes("512 MiB") == 512 * 1024**2 and parse_bytes(10) == 10
    for bad in ("lots", "-1GB", "2XB"):
        with pytest.raises(LossmapError, match="memory budget"):
            parse_bytes(bad)


_PEAK = textwrap.dedent(
    """
    import json, resource, sys, torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    import lossmap

    class Big(Dataset):  # made on the fly: n images of 3x64x64 float32 (48 kB each)
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.randn(3, 64, 64, generator=g), i % 10

    n = int(sys.argv[1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10))
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = lossmap.compute(model, DataLoader(Big(n), batch_size=64), x="-1:1:2", memory_budget="4MB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kb": peak - start, "mode": ds.attrs["data_mode"], "samples": int(ds.attrs["samples"])}))
    """
)


@pytest.mark.slow
def test_peak_memory_of_a_streamed_run_does_not_grow_with_the_data(tmp_path):
    """Data sets of 2,000 and 8,000 images (96 and 384 MB) under a 4 MB budget: the growth of peak RSS is
    the same few MB for both, far below the smaller data set's size (cached, it would grow by the data)."""
    script = tmp_path / "peak.py"
    script.write_text(_PEAK)
    runs = {}
    for n in (2000, 8000):
        done = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, timeout=600,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr[-2000:]
        runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(r["mode"] == "streamed" for r in runs.values()) and runs[8000]["samples"] == 8000
    data_kb = {n: n * 3 * 64 * 64 * 4 // 1024 for n in runs}
    assert runs[2000]["growth_kb"] < data_kb[2000] / 4
    assert runs[8000]["growth_kb"] < runs[2000]["growth_kb"] + 16 * 1024  # not proportional to the data
