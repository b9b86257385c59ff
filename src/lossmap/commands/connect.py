"""``lossmap connect A B``: loss and error barriers on the line between two models, before and after
permutation alignment."""

from __future__ import annotations

import argparse
import sys

from ..errors import LossmapError
from . import _common as c
from . import _connect as cc


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "connect",
        help="loss and error barriers between two models, before and after aligning B's hidden units to A",
        description=(
            "Evaluate the loss and the error (1 − accuracy) along θ(α) = (1 − α)A + αB on one or more data sets, "
            "refine around each worst point, and report both barriers: Frankle et al. (max L(α) − (L(A) + L(B))/2) "
            "and Entezari et al. (max L(α) − (1 − α)L(A) − αL(B)), with the α of each maximum. With --align "
            "weights, B's hidden units are first permuted to match A by weight matching (Ainsworth et al.), the "
            "permutation structure derived from the model's graph (or --spec), and both paths are measured. "
            "Writes one netCDF file, and beside it the aligned checkpoint and its permutation spec."
        ),
    )
    cc.add_models(p)
    p.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help=c.DATA_HELP + "; repeat for several data sets (e.g. --data digits:train --data digits:test)")
    p.add_argument("--out", required=True, metavar="FILE.nc", help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its aligned checkpoint)")
    p.add_argument("--alphas", type=int, default=25, metavar="N", help="evenly spaced α in [0, 1] to start from (default: 25)")
    p.add_argument("--refine", type=int, default=4, metavar="ROUNDS",
                   help="refinement rounds around each maximum (loss and error, each barrier definition; default: 4)")
    p.add_argument("--align", choices=("none", "weights"), default="none",
                   help="weights: permute B's hidden units to match A by weight matching (default: none)")
    p.add_argument("--spec", metavar="FILE.json",
                   help="with --align weights: the permutation structure {perm: [[tensor, axis(, block)], ...]} "
                        "instead of deriving it (the .spec.json a run writes has this format)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight matching's sweep order (default: 0)")
    cc.add_evaluation(p)
    p.add_argument("--bn", choices=("frozen", "recompute"), default="frozen",
                   help="batch-norm statistics: the models' own, interpolated (default), or re-estimated at every α")
    p.add_argument("--bn-data", metavar="SPEC", help="with --bn recompute: the data for it (default: the first --data)")
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace):
    from pathlib import Path

    if args.alphas < 2:
        raise LossmapError(f"--alphas {args.alphas}: a barrier needs at least 2 points along the path (A and B)")
    if args.refine < 0:
        raise LossmapError(f"--refine {args.refine}: use 0 or more refinement rounds")
    if args.spec is not None and args.align != "weights":
        raise LossmapError("--spec gives the permutation structure for alignment: it needs --align weights")
    if args.bn_data is not None and args.bn != "recompute":
        raise LossmapError("--bn-data re-estimates batch-norm statistics: it needs --bn recompute")
    if len(set(args.data)) != len(args.data):
        raise LossmapError("the same --data is given twice: name each data set once")
    out = c.check_output_folder(args.out)
    cc.refuse_existing(Path(out), args.overwrite, "replace it")
    return out, cc.check_common(args)


def run(args: argparse.Namespace) -> int:
    out, device = _check(args)
    from ..connect import barrier_table, connect, save_connection
    from ..connect.files import load_spec

    spec = load_spec(args.spec) if args.spec else None
    a, b = cc.models(args)
    sets = {spec_text: c.load_data(spec_text) for spec_text in args.data}
    bn_data = c.load_data(args.bn_data) if args.bn_data else None
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with c.Timer() as t:
        res = connect(a, a, b, sets, alphas=args.alphas, refine=args.refine, align=args.align, spec=spec, seed=args.seed,
                      bn=args.bn, bn_data=bn_data, device=device, dtype=cc.dtype_of(args.dtype), log_fn=say,
                      **cc.objective_options(args))
    if args.bn_data:
        res.dataset.attrs["bn_data"] = args.bn_data
    written = save_connection(res, out)
    print(barrier_table(res.dataset))
    if res.aligned is not None:
        al = res.aligned
        print(f"alignment: {len(al.spec.perms)} permutation(s) of {sum(al.spec.sizes.values())} units "
              f"({res.dataset.attrs['align_spec']}), {al.iterations} sweep(s); ‖A − B‖ {al.distance_before:.4g} → "
              f"{al.distance_after:.4g}")
    print(f"wrote {', '.join(str(p) for p in written)} ({t.seconds:.1f} s)")
    return 0
