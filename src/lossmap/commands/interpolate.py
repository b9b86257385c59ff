"""``lossmap interpolate``: the line through two checkpoints, or the plane through three."""

from __future__ import annotations

import argparse
import sys

from . import _common as c


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "interpolate",
        help="loss on the line A → B between two checkpoints, or on the plane through A, B, C",
        description=(
            "Two checkpoints: evaluate θ(α) = A + α·(B − A) (Goodfellow et al. 2015); α = 0 is A, α = 1 is B. "
            "Three (--via C): the plane through A, B and C, with A at (0, 0), B at (1, 0) and C at its exact "
            "coordinates; one unit is ‖B − A‖ on both axes. The models are marked on the plots. Every floating-point "
            "tensor that differs between the checkpoints moves, batch-norm running statistics included, so α = 1 "
            "is B exactly."
        ),
    )
    p.add_argument("--model", required=True, metavar="SPEC", help=c.MODEL_HELP)
    p.add_argument("--from", dest="a", required=True, metavar="A", help="checkpoint A (the origin, α = 0)")
    p.add_argument("--to", dest="b", required=True, metavar="B", help="checkpoint B (α = 1)")
    p.add_argument("--via", dest="c", metavar="C", help="checkpoint C: compute the plane through A, B and C")
    c.add_data_args(p)
    p.add_argument("--x", default="-0.5:1.5:41", metavar="MIN:MAX:N", help="α axis (default: -0.5:1.5:41)")
    p.add_argument("--y", metavar="MIN:MAX:N",
                   help="β axis of the plane (with --via; default: covers C with a margin of 0.5, as many points as --x)")
    c.add_loss_args(p)
    c.add_eval_args(p, buffers=False)  # every floating tensor that differs moves, running statistics included
    c.add_precision_args(p)
    c.add_output_args(p)
    c.allow_negative_values(p)
    p.set_defaults(func=run)
    return p


def default_y(directions, x_spec: str) -> str:
    """A β axis covering 0 and C's β with a margin of 0.5 (in units of ‖B − A‖), as many points as x."""
    from ..grid import parse_axis

    s = list(directions.markers.values())[2][1]
    lo, hi = min(0.0, s) - 0.5, max(0.0, s) + 0.5
    n = len(parse_axis(x_spec, "x axis"))
    return f"{lo:.3g}:{hi:.3g}:{n}"


def run(args: argparse.Namespace) -> int:
    from ..errors import LossmapError
    from ..grid import Grid

    if args.y is not None and args.c is None:
        raise LossmapError("--y needs a third checkpoint (--via C): two checkpoints define a line, not a plane")
    out, device = c.check_run_args(args)  # before anything heavy is imported: argument errors answer at once
    from ..directions import target_directions
    from ..distributed import is_primary
    from ..landscape import compute_run

    a = c.build_model(args.model, args.a)
    b = c.build_model(args.model, args.b)
    via = c.build_model(args.model, args.c) if args.c else None
    data = c.load_data(args.data)
    directions = target_directions(a, b, via, tensor_filter=args.tensors)
    del b, via
    y = args.y
    if args.c and y is None:
        y = default_y(directions, args.x)
        if is_primary():
            print(f"β axis: {y} (covers C at β = {list(directions.markers.values())[2][1]:.3g})", file=sys.stderr)
    grid = Grid.from_specs(args.x, y)
    outside = [
        name for name, pos in directions.markers.items()
        if not all(lo - 1e-9 <= v <= hi + 1e-9 for v, (lo, hi) in zip(pos, [(grid.x[0], grid.x[-1])] + ([(grid.y[0], grid.y[-1])] if grid.y is not None else [])))
    ]
    if outside and is_primary():
        print(f"note: model(s) {', '.join(outside)} lie outside the grid; widen --x/--y to see them", file=sys.stderr)
    with c.Timer() as t:
        run = compute_run(a, data, x=args.x, y=y, directions=directions, **c.compute_options(args, out, device),
                          **c.uncertainty_options(args))
    if is_primary():  # under torchrun, rank 0 speaks for all
        ds = run.landscape()
        print(c.summary_line(ds, out, t.seconds, computed=run.computed > 0) + c.uncertainty_text(ds))
    return 0
