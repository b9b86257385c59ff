"""torchrun on CPU (Gloo): K ranks give the same landscape as one process, bit for bit; a run resumes under
another K; a rank that dies fails the run with a message and leaves the finished points on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lossmap import store

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    import numpy as np, torch
    from torch import nn
    import lossmap
    from lossmap.errors import LossmapError

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format=f"rank{rank} %(message)s")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(128, 10, generator=g), torch.randint(0, 3, (128,), generator=g))
    die_after = int(os.environ.get("DIE_AFTER", "0"))
    calls = [0]

    def mean_out(out, batch):
        calls[0] += 1
        if die_after and rank == 1 and calls[0] > die_after:
            os._exit(3)
        return out.mean()

    try:
        for job in sys.argv[1:]:
            out, x, y = job.split(",")
            ds = lossmap.compute(model, data, x=x, y=None if y == "-" else y, chunk=2, batch_size=32, out=out,
                                 metrics={"accuracy": lossmap.accuracy, "mean_out": mean_out}, flush_every=1, flush_seconds=0)
            np.save(f"{out}.rank{rank}.npy", np.stack([ds[m].values for m in ("loss", "accuracy", "mean_out")]))
    except (LossmapError, KeyboardInterrupt) as exc:
        sys.stderr.write(f"rank{rank} FAILED: {exc}\\n")  # a line in one write: print writes its end apart, so ranks' lines could mix
        sys.exit(1)
    probes = len(sys.argv[1:])  # each run first sends one batch through the metrics (the probe)
    centres = 4 * len(sys.argv[1:])  # and, on a rank with points to do, one pass at θ0 (the paired errors' reference)
    sys.stdout.write(f"rank{rank} evaluated {(calls[0] - probes - centres) // 4} points\\n")
    sys.stdout.flush()
    """
)

JOBS = {"line": "-1:1:17,-", "plane": "-1:1:9,-0.5:1:6"}  # a 1-D grid and a non-square 2-D grid


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", LOSSMAP_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    return env


def _launch(script: Path, jobs: list[str], ranks: int, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(script), *jobs]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", str(script), *jobs]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**_env(), **env})


def _launch_bare(script: Path, jobs: list[str], ranks: int, **env: str) -> list[subprocess.CompletedProcess]:
    """The ranks as plain processes (the environment torchrun would set), so that no launcher stops the
    survivors when one rank dies: they must notice it themselves."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *jobs], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**_env(), **env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for r in range(ranks)
    ]
    done = []
    for p in procs:  # communicate() reads both pipes while waiting, so a chatty rank cannot block on them
        out, err = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _values(path: Path) -> np.ndarray:
    ds = store.load(path)
    return np.stack([ds[m].values for m in ("loss", "accuracy", "mean_out")])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    script = root / "run.py"
    script.write_text(SCRIPT)
    ref = {name: root / f"ref-{name}.nc" for name in JOBS}
    done = _launch(script, [f"{ref[n]},{spec}" for n, spec in JOBS.items()], 1)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, script, {name: _values(path) for name, path in ref.items()}


def test_two_ranks_equal_one_process_then_resume_with_one(work):
    root, script, ref = work
    out = {name: root / f"two-{name}.nc" for name in JOBS}
    done = _launch(script, [f"{out[n]},{spec}" for n, spec in JOBS.items()], 2)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in JOBS:
        got = _values(out[name])
        assert np.isfinite(got).all()
        assert np.array_equal(got, ref[name]), name
        for rank in (0, 1):  # every rank returns the whole landscape
            assert np.array_equal(np.load(f"{out[name]}.rank{rank}.npy"), ref[name])
        assert store.load(out[name]).attrs["ranks"] == 2
    # only rank 0 wrote; chunks of 2 points dealt in turn: 9 + 28 points for rank 0, 8 + 26 for rank 1
    assert "rank1 saved" not in done.stdout and "rank0 saved" in done.stdout
    counts = sorted(int(line.split()[2]) for line in done.stdout.splitlines() if " evaluated " in line)
    assert counts == [34, 37]

    # clear some points' mask bits in the 2-D file and finish it with one process
    ds = store.load(out["plane"])
    mask = np.ones((9, 6), bool)
    mask[0, 0] = mask[4, 3] = mask[8, 5] = False
    store.save(store.partial_dataset(ds, mask), out["plane"])
    done = _launch(script, [f"{out['plane']},{JOBS['plane']}"], 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout and "51 of 54 points are done" in done.stdout
    assert "rank0 evaluated 6 points" in done.stdout  # three chunks of two points
    assert np.array_equal(_values(out["plane"]), ref["plane"])


def test_a_dead_rank_fails_the_run_and_finished_points_stay(work):
    root, script, ref = work
    out = root / "dies.nc"
    spec = JOBS["plane"]
    # rank 1 dies in its 9th point (after the probe and the pass at θ0)
    rank0, rank1 = _launch_bare(script, [f"{out},{spec}"], 2, DIE_AFTER=str(1 + 4 + 4 * 8))
    assert rank1.returncode != 0 and rank0.returncode != 0
    said = [line for line in rank0.stderr.splitlines() if line.startswith("rank0 FAILED: ")]
    assert said, rank0.stderr[-3000:]
    assert "another rank stopped answering" in said[0] and "18 of 54 points saved in" in said[0]
    assert "rerun the same command to resume" in said[0]
    ds = store.load(out)
    mask = store.done_mask(ds)
    n_done, total = store.progress(ds)
    assert n_done == 18  # both ranks finished 4 chunks of 2 points; rank 0 also its 5th, kept although the exchange failed
    got = _values(out)
    assert np.array_equal(got[:, mask], ref["plane"][:, mask])
    assert np.isnan(got[:, ~mask]).all()

    # resume with two ranks: only the missing points are evaluated
    done = _launch(script, [f"{out},{spec}"], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [int(line.split()[2]) for line in done.stdout.splitlines() if " evaluated " in line]
    assert len(counts) == 2 and sum(counts) == total - n_done and max(counts) - min(counts) <= 2
    assert np.array_equal(_values(out), ref["plane"])


def test_ranks_with_different_models_are_refused(work):
    root, script, _ = work
    odd = root / "odd.py"
    odd.write_text(SCRIPT.replace("torch.manual_seed(0)", "torch.manual_seed(rank)"))
    out = root / "odd.nc"
    done = _launch(odd, [f"{out},{JOBS['line']}"], 2)
    assert done.returncode != 0
    assert "rank1 FAILED: rank 1 would compute another landscape than rank 0: theta0_sha256" in done.stderr
    assert not out.exists()


def test_torchrun_command_line_resumes_a_single_process_file(tmp_path, cli_files):
    args = ["surface", *cli_files, "--x", "-1:1:7", "--y", "-1:0.5:5", "--flush-every", "1"]
    one = subprocess.run([sys.executable, "-m", "lossmap", *args, "--out", str(tmp_path / "one.nc")],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert one.returncode == 0, one.stderr
    ref = store.load(tmp_path / "one.nc")
    mask = np.random.default_rng(1).random((7, 5)) < 0.5
    store.save(store.partial_dataset(ref, mask), tmp_path / "two.nc")
    (tmp_path / "two.directions.safetensors").write_bytes((tmp_path / "one.directions.safetensors").read_bytes())
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lossmap", *args,
         "--out", str(tmp_path / "two.nc")], capture_output=True, text=True, timeout=240, env=_env())
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports
    assert f"{int(mask.sum())} of 35 points are done" in two.stderr
    got = store.load(tmp_path / "two.nc")
    assert store.is_complete(got) and got.attrs["ranks"] == 2
    for name in ("loss", "accuracy"):
        assert np.array_equal(got[name].values, ref[name].values)
