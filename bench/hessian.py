"""Benchmark: the Hessian of the seed CNN on MNIST test images, three ways, same machine, same run.

    make bench                                              # part of it (after bench/run.py)
    .venv/bin/python bench/hessian.py --samples 1000        # the default
    .venv/bin/python bench/hessian.py --samples 200 --quick # a smoke run

Contenders (each in its own fresh process, so its peak memory is its own), all on the same briefly trained seed
CNN (bench/run.py's checkpoint), the same samples in batches of 250 (equal batches: hessian-eigenthings'
1/n_batches average is then the true mean), the mean NLL loss:
  lossmap                lossmap.curvature: the faster HVP (probed on the Lanczos start, whose first product the probe
                         then gives), each batch's gradient graph kept (within lossmap's default memory budget),
                         thick-restart Lanczos (tol) for the top 5, Hutch++; the set-up (objective and probe, 2 HVPs)
                         is timed apart and counted in the "both" ratio;
  hessian-eigenthings    1.0.0a5: HessianOperator (double backward), lanczos(k=5, which="LA", tol), with max_iter
                         doubled from 10 until every Ritz pair meets tol (only the converged run is timed);
                         hutch_plus_plus with the same number of HVPs;
  curvlinops             3.0.1: HessianLinearOperator (forward-over-reverse), .to_scipy() with eigsh (same tol, same
                         start vector); hutchpp_trace with the same number of HVPs;
  interleaved            one HVP of each implementation in turn, three rounds, in one process (the fair per-product
                         cost on a machine whose load changes between the contenders' runs).
Each contender runs ``--repeat`` times (default 2), each time in a fresh process; every timed part is the fastest
of its runs (the values and HVP counts are the same in every run), and the JSON keeps each run's timings.
The tolerance is relative: ‖Hx − λx‖ ≤ tol·|λ| for every pair (ARPACK and hessian-eigenthings' Ritz test are the
same criterion). Every contender runs with the allocator setting the ``lossmap`` command uses
(``lossmap.tune_allocator()``: glibc keeps freed activation buffers instead of unmapping them; ``--glibc-default``
leaves it). Also: the cost of one HVP against one gradient (lossmap: both fresh methods, and one product
through the kept graphs).
Results: a table here and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import CKPT, ensure_checkpoint, load_xy, peak_rss_mb  # noqa: E402

BATCH = 250


def batches(samples: int):
    x, y = load_xy(samples)
    return [(x[lo : lo + BATCH], y[lo : lo + BATCH]) for lo in range(0, len(y), BATCH)]


def model():
    from lossmap.models import MnistCNN, load_checkpoint

    return load_checkpoint(MnistCNN(), CKPT).eval()


def start_vector(n: int):
    import numpy as np

    return np.random.default_rng([0, 0]).standard_normal(n)


# ------------------------------------------------------------------------------------------ contenders
def w_lossmap(cfg: dict) -> dict:
    import torch

    from lossmap.curvature.extremes import largest
    from lossmap.curvature.hessian import check_deterministic, hessian_operator
    from lossmap.curvature.trace import hutchpp
    from lossmap.objective import Objective

    x, y = load_xy(cfg["samples"])
    t0 = time.perf_counter()
    obj = Objective(model(), (x, y), "nll", metrics={}, batch_size=BATCH)
    op = hessian_operator(obj)
    v0 = start_vector(op.shape[0])
    check_deterministic(op, v=v0)  # as `lossmap hessian` does: the probe's product is the Lanczos run's first
    setup = time.perf_counter() - t0
    t = time.perf_counter()
    eig = largest(op, 5, tol=cfg["tol"], v0=v0)
    t_eig = time.perf_counter() - t
    t = time.perf_counter()
    tr = hutchpp(op, cfg["matvecs"], seed=0)
    t_tr = time.perf_counter() - t
    costs = hvp_cost(obj) if cfg.get("costs") else {}
    graphs = op.hvp.graphs
    kept = dict(kept_batches=len(graphs.kept), kept_mb=graphs.held / 2**20) if graphs is not None else {}
    if costs and graphs is not None:
        costs["hvp_kept_s"] = best_of(2, lambda: op.matvec(start_vector(op.shape[0])))
    return dict(top5=eig.values.tolist(), eig_hvps=eig.hvps, eig_s=t_eig, setup_s=setup, probe_hvps=2,
                method=op.hvp.method, trace=tr.estimate, trace_se=tr.se, trace_hvps=tr.hvps, trace_s=t_tr, **costs,
                **kept, threads=torch.get_num_threads())


def best_of(times: int, fn) -> float:
    """The fastest of ``times`` calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(times):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def hvp_cost(obj) -> dict:
    """Seconds of one gradient and one fresh HVP (each method) over the same data, best of 2."""
    import torch

    v = {n: torch.randn_like(t) for n, t in obj.theta0.items()}
    return {key: best_of(2, fn) for key, fn in (("grad_s", lambda: obj.value_and_grad()),
                                                ("hvp_forward_s", lambda: obj.hvp(v, method="forward-over-reverse")),
                                                ("hvp_double_s", lambda: obj.hvp(v, method="double-backward")))}


def w_eigenthings(cfg: dict) -> dict:
    import hessian_eigenthings as he
    import torch
    from torch import nn

    data = batches(cfg["samples"])
    net = model()
    op = he.HessianOperator(net, data, he.supervised_loss(nn.NLLLoss()))
    calls = [0]
    inner = op.matvec

    def counted(v):
        calls[0] += 1
        return inner(v)

    op.matvec = counted
    tries = []
    max_iter = 10
    while True:
        calls[0] = 0
        t = time.perf_counter()
        res = he.lanczos(op, k=5, max_iter=max_iter, tol=cfg["tol"], which="LA", seed=0)
        tries.append(dict(max_iter=max_iter, seconds=time.perf_counter() - t, hvps=calls[0],
                          converged=bool(res.converged.all())))
        if res.converged.all() or max_iter >= 320:
            break
        max_iter *= 2
    calls[0] = 0
    t = time.perf_counter()
    tr = he.hutch_plus_plus(op, num_matvecs=cfg["matvecs"], seed=0)
    t_tr = time.perf_counter() - t
    return dict(top5=sorted(res.eigenvalues.tolist(), reverse=True), eig_hvps=tries[-1]["hvps"], eig_s=tries[-1]["seconds"],
                eig_s_all_tries=sum(tr_["seconds"] for tr_ in tries), tries=tries, trace=tr.estimate, trace_se=tr.stderr,
                trace_hvps=calls[0], trace_s=t_tr, threads=torch.get_num_threads())


def w_curvlinops(cfg: dict) -> dict:
    import numpy as np
    import torch
    from curvlinops import HessianLinearOperator, hutchpp_trace
    from scipy.sparse.linalg import LinearOperator, eigsh
    from torch import nn

    data = batches(cfg["samples"])
    net = model()
    params = [p for p in net.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    h = HessianLinearOperator(net, nn.NLLLoss(), params, data)
    setup = time.perf_counter() - t0
    sp = h.to_scipy()
    calls = [0]

    def mv(v):
        calls[0] += 1
        return sp @ np.asarray(v, dtype=np.float32)

    lin = LinearOperator(sp.shape, matvec=mv, rmatvec=mv, dtype=np.float32)
    t = time.perf_counter()
    values = eigsh(lin, k=5, which="LA", tol=cfg["tol"], v0=start_vector(sp.shape[0]).astype(np.float32),
                   return_eigenvectors=False)
    t_eig = time.perf_counter() - t
    eig_hvps = calls[0]
    m = cfg["matvecs"] - cfg["matvecs"] % 3
    t = time.perf_counter()
    tr = float(hutchpp_trace(h, num_matvecs=m))
    t_tr = time.perf_counter() - t
    return dict(top5=sorted(values.tolist(), reverse=True), eig_hvps=eig_hvps, eig_s=t_eig, setup_s=setup, trace=tr,
                trace_se=None, trace_hvps=m, trace_s=t_tr, threads=torch.get_num_threads())


def w_interleaved(cfg: dict) -> dict:
    """One HVP of each implementation in turn, ``rounds`` times, in one process: on a shared machine whose load
    changes, this compares the cost of one product fairly (the contenders' own runs are minutes apart)."""
    import hessian_eigenthings as he
    import numpy as np
    import torch
    from curvlinops import HessianLinearOperator
    from torch import nn

    from lossmap.curvature.hessian import hessian_operator
    from lossmap.objective import Objective

    x, y = load_xy(cfg["samples"])
    data, net = batches(cfg["samples"]), model()
    ops = {m: hessian_operator(Objective(net, (x, y), "nll", metrics={}, batch_size=BATCH), method=m, keep_memory=0)
           for m in ("forward-over-reverse", "double-backward")}
    ops["kept"] = hessian_operator(Objective(net, (x, y), "nll", metrics={}, batch_size=BATCH), method="double-backward")
    eo = he.HessianOperator(net, data, he.supervised_loss(nn.NLLLoss()))
    cl = HessianLinearOperator(net, nn.NLLLoss(), list(net.parameters()), data, check_deterministic=False).to_scipy()
    v = start_vector(ops["double-backward"].shape[0])
    vt, v32 = torch.as_tensor(v, dtype=torch.float32), v.astype(np.float32)
    fns = {"lossmap forward-over-reverse": lambda: ops["forward-over-reverse"].matvec(v),
           "lossmap double-backward": lambda: ops["double-backward"].matvec(v),
           "lossmap kept graphs": lambda: ops["kept"].matvec(v),
           "hessian-eigenthings": lambda: eo.matvec(vt), "curvlinops": lambda: cl @ v32}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(cfg.get("rounds", 3)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {"per_hvp_s": {k: float(np.median(t)) for k, t in times.items()}, "per_hvp_all_s": times}


WORKERS = {"lossmap": w_lossmap, "hessian-eigenthings": w_eigenthings, "curvlinops": w_curvlinops,
           "interleaved": w_interleaved}


def child(name: str, cfg: dict) -> dict:
    if cfg.get("tuned"):  # the same process-wide allocator setting for every contender (what `lossmap` uses)
        from lossmap import tune_allocator

        tune_allocator()
    out = WORKERS[name](cfg)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_child(name: str, cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--config", json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


TIMED = ("setup_s", "eig_s", "eig_s_all_tries", "trace_s")


def fastest_of(runs: list[dict]) -> dict:
    """The first run's record with each timed part the fastest of the runs that worked, and every run's timings
    under ``runs`` (one run: its record as it is)."""
    ok = [r for r in runs if "error" not in r]
    if len(ok) < 2:
        return ok[0] if ok else runs[0]
    best = dict(ok[0])
    for key in TIMED:
        if key in best:
            best[key] = min(r[key] for r in ok)
    best["runs"] = [{k: r[k] for k in TIMED if k in r} for r in ok]
    return best


def table(results: dict) -> str:
    ref = results.get("lossmap", {})
    rows = [f"{'':22s} {'top-5 eigenvalues':44s} {'HVPs':>5s} {'s':>7s} {'trace ± SE':>20s} {'HVPs':>5s} {'s':>7s} {'MB':>6s}"]
    for name, r in results.items():
        if name == "interleaved":
            continue
        if "error" in r:
            rows.append(f"{name:22s} failed: {r['error']}")
            continue
        se = "—" if r.get("trace_se") is None else f"{r['trace_se']:.3g}"
        rows.append(f"{name:22s} {', '.join(f'{v:.5g}' for v in r['top5']):44s} {r['eig_hvps']:5d} {r['eig_s']:7.1f} "
                    f"{r['trace']:11.5g} ± {se:>6s} {r['trace_hvps']:5d} {r['trace_s']:7.1f} {r['peak_rss_mb']:6.0f}")
    if "eig_s" in ref:
        for name, r in results.items():
            if name not in ("lossmap", "interleaved") and "eig_s" in r:
                both = r["eig_s"] + r["trace_s"]
                rows.append(f"lossmap vs {name}: top-5 {r['eig_s'] / ref['eig_s']:.2f}x faster, trace "
                            f"{r['trace_s'] / ref['trace_s']:.2f}x faster, both with lossmap's set-up and probe "
                            f"({ref['setup_s']:.1f} s) {both / (ref['setup_s'] + ref['eig_s'] + ref['trace_s']):.2f}x; "
                            f"top-5 max rel. difference "
                            f"{max(abs(a - b) / abs(b) for a, b in zip(ref['top5'], r['top5'])):.1e}")
    inter = results.get("interleaved", {}).get("per_hvp_s")
    if inter:
        rows.append("one HVP, implementations in turn in one process (median): "
                    + "; ".join(f"{k} {v:.2f} s" for k, v in inter.items()))
    if "grad_s" in ref:
        kept = (f", through the kept graphs {ref['hvp_kept_s']:.2f} s ({ref['hvp_kept_s'] / ref['grad_s']:.2f}x; "
                f"{ref['kept_batches']} batches, {ref['kept_mb']:.0f} MB)") if "hvp_kept_s" in ref else ""
        rows.append(f"one gradient {ref['grad_s']:.2f} s; one HVP: forward-over-reverse {ref['hvp_forward_s']:.2f} s "
                    f"({ref['hvp_forward_s'] / ref['grad_s']:.2f}x), double backward {ref['hvp_double_s']:.2f} s "
                    f"({ref['hvp_double_s'] / ref['grad_s']:.2f}x){kept}; fresh products by {ref['method']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--matvecs", type=int, default=30, help="HVPs of each trace estimate (default 30)")
    p.add_argument("--only", nargs="+", choices=list(WORKERS), default=list(WORKERS))
    p.add_argument("--quick", action="store_true", help="skip the HVP-versus-gradient timing")
    p.add_argument("--glibc-default", action="store_true",
                   help="leave glibc's allocator as it is (default: every contender runs with lossmap.tune_allocator())")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs of each contender, each in a fresh process; the fastest of each timed part counts")
    p.add_argument("--child")
    p.add_argument("--config")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.config))))
        return 0
    ensure_checkpoint()
    results = {}
    for name in args.only:
        cfg = dict(samples=args.samples, tol=args.tol, matvecs=args.matvecs, costs=name == "lossmap" and not args.quick,
                   tuned=not args.glibc_default)
        runs = []
        for k in range(1 if name == "interleaved" else max(1, args.repeat)):
            print(f"running {name} ({k + 1}) ...", flush=True)
            runs.append(run_child(name, cfg if k == 0 else cfg | {"costs": False}))
        results[name] = fastest_of(runs)
    text = table(results)
    print(text)
    out = HERE / "results" / f"hessian-{platform.machine()}-{os.cpu_count()}core-{args.samples}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"when": dt.datetime.now().isoformat(timespec="seconds"), "config": vars(args) | {"batch": BATCH},
                               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "results": results, "table": text}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
