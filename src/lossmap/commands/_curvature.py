"""The curvature options of ``lossmap surface``: ``--directions-from hessian`` and ``--curvature``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LossmapError
from .hessian import HVP_CHOICES, objective_for, reducer

SOURCES = ("hessian",)


def add_surface_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--directions-from", metavar="SOURCE",
                   help="slice along Hessian eigenvectors at θ0 (unit norm; grid units are distances in parameter "
                        "space): 'hessian' (the two largest eigenvalues) or 'hessian:top,bottom' (the largest and "
                        "the most negative)")
    p.add_argument("--curvature", action="store_true",
                   help="also store λmax, λmin and |λmin/λmax| of the Hessian at every grid point (variables "
                        "lambda_max, lambda_min, lambda_ratio; 'lossmap plot --kind curvature' draws them)")
    p.add_argument("--hessian-tol", type=float, default=1e-3, metavar="T",
                   help="relative tolerance of the eigenvalues for --directions-from and --curvature (default: 1e-3)")
    p.add_argument("--hvp", choices=HVP_CHOICES, default="auto",
                   help="Hessian-vector products for --directions-from/--curvature (default: auto, the faster on a probe)")


def picks_of(source: str) -> list[tuple[str, int]]:
    """``hessian`` → the top two; ``hessian:top,bottom`` → top and most negative."""
    from ..curvature.results import parse_picks

    name, _, spec = source.partition(":")
    if name not in SOURCES:
        raise LossmapError(f"--directions-from {source!r} is unknown: use hessian or hessian:top,bottom")
    return parse_picks(spec or "top,top")


def check_surface_args(args: argparse.Namespace) -> None:
    """Contradicting curvature options: one line each, before anything is loaded."""
    if args.directions_from is not None:
        if args.directions:
            raise LossmapError("--directions and --directions-from both give directions: use one of them")
        if args.include_buffers:
            raise LossmapError("--directions-from hessian moves parameters only: drop --include-buffers")
        picks = picks_of(args.directions_from)
        if args.y is not None and len(picks) < 2:
            raise LossmapError(f"a 2-D plane (--y) needs two eigenvectors, {args.directions_from!r} gives one: add a second")
    if (args.curvature or args.directions_from) and not args.hessian_tol >= 0:
        raise LossmapError(f"--hessian-tol {args.hessian_tol} must be 0 or more")
    if getattr(args, "seeds", None) is not None and (args.curvature or args.directions_from):
        flag = "--curvature" if args.curvature else "--directions-from"
        raise LossmapError(f"{flag} works on one plane and --seeds asks for one per seed: drop one of them")
    if args.curvature and args.bn == "recompute":
        raise LossmapError("--curvature takes the Hessian with frozen batch-norm statistics: drop --bn recompute")


def _ends(labels: list[str]) -> list[str]:
    return ["bottom" if "most negative" in label else "top" for label in labels]


def hessian_directions(args: argparse.Namespace, model, data, out: Path, device: str):
    """The eigenvector directions: those saved beside ``out`` when resuming it, else computed at θ0."""
    from .. import store
    from ..curvature.plane import eigen_directions
    from ..directions import Directions
    from ..distributed import is_primary

    picks = picks_of(args.directions_from)
    saved = store.directions_path(out)
    if out.exists() and saved.exists() and not args.overwrite:
        found = Directions.load(saved)
        if found.kind == "hessian" and _ends(found.labels)[: len(picks)] == [end for end, _ in picks]:
            return found  # the file's own eigenvectors: resuming recomputes nothing (and cannot drift by rounding)
        raise LossmapError(f"{str(out)!r} was made along other directions than {args.directions_from!r}: pass "
                           "--overwrite to start over, or choose another --out")
    objective, ranks = objective_for(args, model, data, device, args.tensors)
    directions, spectrum = eigen_directions(objective, picks, tol=args.hessian_tol, seed=args.seed, method=args.hvp,
                                            reduce=reducer(objective, ranks), tensor_filter=args.tensors)
    if is_primary():
        print(f"lossmap: directions: {'; '.join(directions.labels)} ({spectrum.hvps} HVPs)", file=sys.stderr, flush=True)
    return directions


def add_curvature(args: argparse.Namespace, run, model, data, out: Path, device: str):
    """λmax, λmin and their ratio at every point of ``run``'s grid, stored in ``out``; the landscape with them."""
    from .. import store
    from ..curvature.plane import curvature_landscape, curvature_state, with_curvature
    from ..distributed import broadcast, is_primary

    directions = run.origin.directions
    objective, ranks = objective_for(args, model, data, device, directions.tensor_filter, directions.include_buffers)
    previous = curvature_state(store.load(out)) if is_primary() and out.exists() else None
    if ranks is not None:
        previous = broadcast(ranks, previous)
    if previous is not None and previous.tol != args.hessian_tol:
        raise LossmapError(f"{str(out)!r} holds a curvature map made with --hessian-tol {previous.tol:g}: rerun with it "
                           "to resume, or pass --overwrite to start over")
    bar = None
    if is_primary() and (previous is None or not previous.done.all()):
        from tqdm.auto import tqdm

        bar = tqdm(total=run.grid.size, initial=int(previous.done.sum()) if previous else 0, unit="pt", desc="curvature",
                   leave=False, dynamic_ncols=True)

    def save(state) -> None:
        if is_primary():
            store.save(with_curvature(run.landscape(), state, args.seed), out)

    try:
        state = curvature_landscape(
            objective, directions.tensors, run.grid, tol=args.hessian_tol, seed=args.seed, method=args.hvp,
            reduce=reducer(objective, ranks), previous=previous, checkpoint=save, every_seconds=args.flush_seconds,
            on_point=(lambda done, total: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    return with_curvature(run.landscape(), state, args.seed)
