"""``lossmap surface``: a 1-D or 2-D slice around a model along random (or saved) directions."""

from __future__ import annotations

import argparse

from . import _common as c
from ._curvature import add_surface_args, check_surface_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "surface",
        help="loss along 1 or 2 filter-normalized random directions around a model",
        description=(
            "Evaluate the model at θ0 + α·δ (+ β·η) for every grid point, where θ0 is the model (with --checkpoint "
            "loaded) and δ, η are Gaussian directions drawn from --seed and normalized (filter normalization by "
            "default, Li et al. 2018). 1-D without --y. Writes a netCDF/HDF5 landscape and its directions."
        ),
    )
    p.add_argument("--model", required=True, metavar="SPEC", help=c.MODEL_HELP)
    p.add_argument("--checkpoint", metavar="FILE", help="parameters θ0 (.safetensors, or .pt/.pth state dict)")
    c.add_data_args(p)
    p.add_argument("--x", default="-1:1:51", metavar="MIN:MAX:N", help="α axis (default: -1:1:51)")
    p.add_argument("--y", metavar="MIN:MAX:N", help="β axis; gives a 2-D plane (default: a 1-D line)")
    p.add_argument("--normalization", choices=("filter", "layer", "model", "none"), default="filter",
                   help="direction scaling relative to θ0 (default: filter)")
    p.add_argument("--bias", choices=("zero", "filter", "keep"), default="zero",
                   help="directions of 1-D tensors (biases, norm scales): zero = they do not move (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions (default: 0)")
    p.add_argument("--orthogonalize", action="store_true", help="make η orthogonal to δ (2-D)")
    p.add_argument("--directions", metavar="FILE",
                   help="reuse saved directions (a .directions.safetensors file) instead of drawing new ones")
    c.add_seeds_arg(p)
    c.add_loss_args(p)
    c.add_eval_args(p)
    c.add_precision_args(p)
    c.add_output_args(p)
    add_surface_args(p)
    c.allow_negative_values(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out, device = c.check_run_args(args)  # before anything heavy is imported: argument errors answer at once
    extra = c.uncertainty_options(args)
    check_surface_args(args)
    from ..directions import Directions
    from ..distributed import is_primary
    from ..landscape import compute_run

    model = c.build_model(args.model, args.checkpoint)
    data = c.load_data(args.data)
    directions = Directions.load(args.directions) if args.directions else None
    if args.directions_from:
        from ._curvature import hessian_directions

        directions = hessian_directions(args, model, data, out, device)
    buffers = (args.include_buffers or None) if directions is not None else args.include_buffers  # None: as the directions
    with c.Timer() as t:
        run = compute_run(
            model, data, x=args.x, y=args.y, directions=directions, seed=args.seed,
            normalization=args.normalization, bias=args.bias, orthogonalize=args.orthogonalize,
            include_buffers=buffers, tensor_filter=args.tensors,
            **c.compute_options(args, out, device), **extra,
        )
    ds = run.landscape()
    if args.curvature:
        from ._curvature import add_curvature

        with c.Timer() as tc:
            ds = add_curvature(args, run, model, data, out, device)
        t.seconds += tc.seconds
    if is_primary():  # under torchrun, rank 0 speaks for all
        print(c.summary_line(ds, out, t.seconds, computed=run.computed > 0 or args.curvature) + c.uncertainty_text(ds))
    return 0
