"""torchrun on CPU (Gloo): two ranks give the per-point errors of one process bit for bit — for a landscape, a
direction ensemble and evaluation to a stated precision. Each point is evaluated whole by one rank (the ranks
share out points, not data), and the rows a rank gathers to rank 0 carry the point's errors and sample count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lossmap import store
from lossmap.uncertainty.pointwise import error_names

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    import lossmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(600, 8, generator=g), torch.randint(0, 3, (600,), generator=g))
    folder = sys.argv[1]
    common = dict(x="-1:1:7", y="-1:1:5", chunk=2, batch_size=50, samples=500, flush_every=1, flush_seconds=0)
    lossmap.compute(model, data, out=f"{folder}/plane.nc", **common)
    lossmap.compute(model, data, out=f"{folder}/seeds.nc", seeds="0:3", **common)
    lossmap.compute(model, data, out=f"{folder}/precise.nc", precision_abs=0.05, **common)
    """
)
NAMES = ("plane", "seeds", "precise")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", LOSSMAP_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    return env


def _launch(script, folder, ranks: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(script), str(folder)]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *cmd[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())


def test_two_ranks_store_the_errors_of_one_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    for ranks in (1, 2):
        folder = tmp_path / f"ranks{ranks}"
        folder.mkdir()
        done = _launch(script, folder, ranks)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in NAMES:
        one, two = (store.load(tmp_path / f"ranks{r}" / f"{name}.nc") for r in (1, 2))
        assert two.attrs["ranks"] == 2 and store.is_complete(two)
        names = ["loss", "accuracy", *error_names(one)]
        assert "loss_se_set" in names and "loss_paired_se" in names  # 500 of 600 samples: errors w.r.t. the set too
        assert ("samples_used" in names) == (name == "precise")
        for var in names:
            assert np.array_equal(one[var].values, two[var].values, equal_nan=True), (name, var)
            assert np.isfinite(one[var].values).all(), (name, var)
    precise = store.load(tmp_path / "ranks2" / "precise.nc")
    assert precise.samples_used.values.min() < 500  # some points stopped early, on either rank
