"""Benchmark: evaluation to a stated precision against the full evaluation, side by side, same run.

    make bench-precision                                  # seed CNN, full 10,000-image MNIST test set, 21×21
    .venv/bin/python bench/precision.py --grid 21 --precision 0.01,0.05 --precision-abs 0.01
    .venv/bin/python bench/precision.py --quick           # 5×5 grid, 2,000 images: a smoke run

The same plane (seed 0, filter-normalized) is computed once with every point reading all the data and once per
stated precision (``compute(..., precision=REL)`` or ``precision_abs=TOL``; 95 %: z = 1.96). For each precision:
wall seconds, the speed-up over the full evaluation, the samples the points read (mean, min, max), and the error
against the full evaluation: the largest ``|Δloss|``, and the share of points within the tolerance (nominally
95 %; relative tolerances are against each point's full-evaluation loss). Each run is its own process, run after
the other, so they share the machine's state. Results: a table here and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as common  # noqa: E402 - the shared helpers of bench/run.py (checkpoint, data, directions)


def worker(cfg: dict) -> dict:
    """One landscape: the full evaluation (no precision) or one stated precision."""
    import numpy as np

    from lossmap.landscape import compute

    model = common.trained_model()
    x, y = common.load_xy(cfg["samples"])
    spec = f"-1:1:{cfg['grid']}"
    kw = {k: cfg[k] for k in ("precision", "precision_abs", "device") if cfg.get(k) is not None}
    start = time.perf_counter()
    ds = compute(model, (x, y), x=spec, y=spec, directions=common.plane(model), **kw)
    seconds = time.perf_counter() - start
    used = ds["samples_used"].values if "samples_used" in ds.variables else np.full(ds.loss.shape, float(len(y)))
    return {"seconds": seconds, "loss": ds.loss.values.tolist(), "samples_used": used.tolist(), "engine": ds.attrs["engine"],
            "loss_se_centre": float(ds.loss_se.sel(x=0.0, y=0.0, method="nearest"))}


def run_worker(cfg: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * 3600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"precision benchmark worker failed:\n{proc.stderr[-3000:]}")


def compare(full: dict, got: dict, tol: float, relative: bool, total: int) -> dict:
    import numpy as np

    ref, val = np.asarray(full["loss"]), np.asarray(got["loss"])
    err = np.abs(val - ref)
    bound = tol * np.abs(ref) if relative else np.full_like(ref, tol)
    used = np.asarray(got["samples_used"])
    return {"seconds": got["seconds"], "speedup": full["seconds"] / got["seconds"], "max_abs_error": float(err.max()),
            "max_error_over_tolerance": float((err / bound).max()), "within_tolerance": float((err <= bound).mean()),
            "samples_mean": float(used.mean()), "samples_min": int(used.min()), "samples_max": int(used.max()),
            "samples_fraction": float(used.mean() / total), "engine": got["engine"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=int, default=21, help="points per axis (default 21)")
    p.add_argument("--samples", type=int, default=10000, help="MNIST test images (default 10000, the whole set)")
    p.add_argument("--precision", default="0.01,0.05", help="relative precisions, comma separated (default 0.01,0.05)")
    p.add_argument("--precision-abs", default="0.01", help="absolute tolerances, comma separated (default 0.01; '' for none)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--quick", action="store_true", help="5×5 grid, 2,000 images")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/<date>-<host>-precision.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.quick:
        args.grid, args.samples = 5, 2000
    common.ensure_checkpoint()
    base = {"grid": args.grid, "samples": args.samples, "device": args.device}
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    say(f"machine: {common.machine().get('cpu', '?')}, load {common.loadavg()}; data {common.data_spec()}; "
        f"{args.grid}×{args.grid} grid, {args.samples} samples")
    full = run_worker(base)
    say(f"full evaluation: {full['seconds']:.1f} s ({full['engine']}); standard error at the centre {full['loss_se_centre']:.3g}")
    stated = [("precision", float(v), True) for v in args.precision.split(",") if v.strip()]
    stated += [("precision_abs", float(v), False) for v in args.precision_abs.split(",") if v.strip()]
    rows = []
    for key, tol, relative in stated:
        got = run_worker({**base, key: tol})
        row = {"stated": f"{100 * tol:g} % relative" if relative else f"{tol:g} absolute", **compare(full, got, tol, relative, args.samples)}
        rows.append(row)
        say(f"{row['stated']:>14}: {row['seconds']:7.1f} s, {row['speedup']:.2f}× faster; samples per point {row['samples_mean']:.0f} "
            f"({100 * row['samples_fraction']:.0f} %, {row['samples_min']}–{row['samples_max']}); max |Δloss| "
            f"{row['max_abs_error']:.3g} ({row['max_error_over_tolerance']:.2f}× the tolerance); within tolerance "
            f"{100 * row['within_tolerance']:.1f} % of points")
    res = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": common.machine(),
           "load_after": common.loadavg(), "data": common.data_spec(), "config": base, "full_seconds": full["seconds"],
           "full_engine": full["engine"], "rows": rows}
    common.RESULTS.mkdir(exist_ok=True)
    out = args.out or common.RESULTS / f"{dt.datetime.now().strftime('%Y%m%d-%H%M')}-{platform.node()}-precision.json"
    Path(out).write_text(json.dumps(res, indent=1, sort_keys=True))
    say(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
