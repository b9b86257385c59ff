"""Benchmark: the plane of a long training run — memory and where the time goes.

    make bench-trajectory                                     # 200 checkpoints of a 25M-parameter model
    .venv/bin/python bench/trajectory.py --checkpoints 200 --params 25e6
    .venv/bin/python bench/trajectory.py --quick              # 40 checkpoints of 2M parameters (seconds)

Writes M float32 checkpoints (safetensors + manifest, as the Recorder does) of a synthetic model of P
parameters in four tensors — a random walk from a random start whose steps shrink, so the offsets span
many directions — to a temporary folder (``--dir``; M·P·4 bytes: 20 GB for the default), then computes
``trajectory_plane`` in a fresh process for each page-cache state asked for:

* ``cold``: every checkpoint file's pages are dropped from the page cache first
  (``posix_fadvise(POSIX_FADV_DONTNEED)`` after an fsync; no root needed), so every byte is read from disk;
* ``warm``: the files are read once first (only meaningful when M·P·4 bytes fit in free memory; skipped
  otherwise, and said so).

Measured per run: wall time of the plane; time inside the file reads (``read_piece``, positioned reads into
a buffer) versus the rest (float64 conversion, the Gram's M²P multiply-adds, forming the directions); the
process's CPU time (on a machine shared with other work, the wall time of the computing part grows with the
load while the CPU time does not); the peak RSS added by the plane (VmHWM after resetting it, in units of one model's float32 size); the explained
variance as a check. Results: a table here and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

_WORKER = r"""
import json, sys, time
from lossmap.trajectory import passes, trajectory_plane

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key + ":"))

spent = {"read": 0.0, "calls": 0}
real = passes.read_piece
def timed(*args):
    t = time.perf_counter()
    try:
        return real(*args)
    finally:
        spent["read"] += time.perf_counter() - t
        spent["calls"] += 1
passes.read_piece = timed

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak RSS (VmHWM) restarts from the current RSS
before = status("VmRSS")
t0, c0 = time.perf_counter(), time.process_time()
plane = trajectory_plane(sys.argv[1])
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "read_seconds": spent["read"], "reads": spent["calls"],
                  "peak_rss_added": status("VmHWM") - before, "explained": plane.explained}))
"""

SHAPES = ((0.4, 2), (0.3, 2), (0.28, 2), (0.02, 1))  # fractions of P and ranks of the four tensors


def shapes(params: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for k, (frac, rank) in enumerate(SHAPES):
        n = max(16, int(params * frac))
        out[f"layer{k}.weight"] = (n // 1024, 1024) if rank == 2 and n >= 2048 else (n,)
    return out


def write_run(folder: Path, m: int, params: int, seed: int = 0) -> tuple[int, float]:
    """M checkpoints of a random walk; returns (parameters, seconds). Files are fsynced."""
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    sizes = shapes(params)
    theta = {n: torch.randn(s, generator=g) for n, s in sizes.items()}
    entries = []
    for i in range(m):
        name = f"step-{i:09d}.safetensors"
        save_file(theta, str(folder / name), metadata={"names": json.dumps(list(sizes)), "parameters": json.dumps(list(sizes))})
        with open(folder / name, "rb") as fh:
            os.fsync(fh.fileno())
        entries.append({"step": i, "file": name, "epoch": None, "lr": None, "loss": None, "time": time.time(), "scalars": {}})
        scale = 0.1 / (1 + i) ** 0.5
        for t in theta.values():
            t.add_(torch.randn(t.shape, generator=g), alpha=scale)
    (folder / "manifest.json").write_text(json.dumps({"format": "lossmap.run", "format_version": 1, "checkpoints": entries}))
    return sum(int(t.numel()) for t in theta.values()), time.perf_counter() - t0


def drop_cache(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


def cached_fraction(folder: Path) -> float | None:
    """Fraction of the checkpoints' pages in the page cache (``mincore`` on a mapping), None where unavailable."""
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        total = resident = 0
        for f in folder.glob("*.safetensors"):
            size = f.stat().st_size
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            with open(f, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
                view = (ctypes.c_char * size).from_buffer(mm)  # no page is touched
                rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vec)
                del view
            if rc != 0:
                return None
            resident += sum(v & 1 for v in vec)
            total += pages
        return resident / total if total else None
    except (OSError, AttributeError, ValueError, TypeError):
        return None


def free_bytes() -> int:
    with open("/proc/meminfo") as fh:
        info = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in fh}
    return info.get("MemAvailable", 0)


def measure(folder: Path, state: str) -> dict:
    if state == "cold":
        drop_cache(folder)
    else:
        warm_cache(folder)
    cached = cached_fraction(folder)
    src = str(HERE.parent / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _WORKER, str(folder)], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(state=state, cached_before=cached)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=200, metavar="M")
    p.add_argument("--params", type=float, default=25e6, metavar="P", help="parameters (default 25e6)")
    p.add_argument("--states", default="cold,warm", help="page-cache states to measure, in order (default: cold,warm)")
    p.add_argument("--quick", action="store_true", help="40 checkpoints of 2M parameters")
    p.add_argument("--dir", type=Path, default=None, help="where the checkpoints are written (default: the temp folder)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/trajectory-<date>.json)")
    args = p.parse_args(argv)
    m, params = (40, int(2e6)) if args.quick else (args.checkpoints, int(args.params))
    states = [s.strip() for s in args.states.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="lossmap-trajectory-bench-") as tmp:
        folder = Path(tmp)
        n, write_s = write_run(folder, m, params)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        print(f"wrote {m} checkpoints of {n:,} float32 parameters ({size / 2**30:.1f} GiB) in {write_s:.0f} s to {folder}",
              flush=True)
        rows = []
        for state in states:
            if state == "warm" and size > 0.8 * free_bytes():
                print(f"warm: skipped, the files ({size / 2**30:.1f} GiB) do not fit in the free memory "
                      f"({free_bytes() / 2**30:.1f} GiB)", flush=True)
                continue
            r = measure(folder, state)
            r["peak_rss_models"] = r["peak_rss_added"] / (4 * n)
            rows.append(r)
            cached = "?" if r["cached_before"] is None else f"{100 * r['cached_before']:.0f} %"
            print(f"{state:5s} (cached before: {cached}): {r['seconds']:7.1f} s, of which reading the files "
                  f"{r['read_seconds']:6.1f} s ({100 * r['read_seconds'] / r['seconds']:.0f} %), CPU time "
                  f"{r['cpu_seconds']:.1f} s; peak RSS added "
                  f"{r['peak_rss_added'] / 2**20:,.0f} MiB = {r['peak_rss_models']:.2f} models; explained {r['explained']:.3f}",
                  flush=True)
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "checkpoints": m,
              "parameters": n, "bytes": size, "write_seconds": write_s, "runs": rows,
              "load_average": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"trajectory-{m}x{n}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
