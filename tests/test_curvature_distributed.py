"""torchrun on CPU (Gloo): two ranks, each with a share of the data and the HVPs summed across ranks, give the
spectrum of one process on all the data — with unequal shares (39 samples: 19 and 20), so a plain average of
the ranks' HVPs would be wrong."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lossmap.curvature.results import load_spectrum
from lossmap.curvature.shards import bounds, shard

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", LOSSMAP_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    return env


def test_two_ranks_with_unequal_shards_equal_one_process(tmp_path, cli_files):
    args = ["hessian", *cli_files, "--samples", "39", "--top", "3", "--bottom", "1", "--tol", "1e-10", "--trace",
            "--trace-matvecs", "12", "--dtype", "float64", "--hvp", "double-backward"]
    one = subprocess.run([sys.executable, "-m", "lossmap", *args, "--out", str(tmp_path / "one.nc")],
                         capture_output=True, text=True, timeout=240, env=_env())
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                          "lossmap", *args, "--out", str(tmp_path / "two.nc")],
                         capture_output=True, text=True, timeout=240, env=_env())
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == one.stdout.count("wrote ")  # rank 0 alone reports and writes
    a, b = load_spectrum(tmp_path / "one.nc"), load_spectrum(tmp_path / "two.nc")
    assert b.attrs["ranks"] == 2 and b.attrs["samples"] == a.attrs["samples"] == 39
    for name in ("eigenvalues_top", "eigenvalues_bottom"):
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-9, atol=1e-12)
    assert abs(b.attrs["trace"] - a.attrs["trace"]) < 1e-9 * abs(a.attrs["trace"])


def test_shards_cover_the_data_once():
    import torch

    x, y = torch.arange(39.0)[:, None], torch.arange(39)
    parts = [shard((x, y), r, 3)[1].tolist() for r in range(3)]
    assert sum(parts, []) == list(range(39)) and [len(p) for p in parts] == [13, 13, 13]
    assert [bounds(5, r, 2) for r in range(2)] == [(0, 2), (2, 5)]
