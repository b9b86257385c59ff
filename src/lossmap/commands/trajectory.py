"""``lossmap trajectory``: the plane of recorded training runs, its landscape and every checkpoint on it."""

from __future__ import annotations

import argparse

from . import _common as c

ORIGINS = ("final", "initial", "mean")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "trajectory",
        help="the plane of recorded training run(s): its landscape with every checkpoint's path on it",
        description=(
            "Find the plane of one or several run folders (written by lossmap.trajectory.Recorder or its Lightning / "
            "Hugging Face callbacks): the top two principal directions of the checkpoints' offsets from the origin "
            "(the first run's final checkpoint by default). Evaluate the landscape on that plane, on axes covering "
            "every checkpoint with a margin unless --x/--y are given, and every checkpoint's metrics at its own "
            "weights and on the plane at its projection. Everything goes into one landscape file, which "
            "lossmap plot, report, info and animate read. Several runs share one plane (e.g. two optimizers from "
            "one initialization)."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) holding manifest.json and the checkpoints")
    p.add_argument("--model", required=True, metavar="SPEC", help=c.MODEL_HELP)
    c.add_data_args(p)
    p.add_argument("--origin", choices=ORIGINS, default="final",
                   help="the plane's origin: the first run's final or initial checkpoint, or the mean of all (default: final)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per run (default: the folder names)")
    p.add_argument("--x", metavar="MIN:MAX:N", help="PC1 axis (default: covers every checkpoint with a 15%% margin)")
    p.add_argument("--y", metavar="MIN:MAX:N", help="PC2 axis (default: covers every checkpoint with a 15%% margin)")
    p.add_argument("--points", type=int, default=41, metavar="N", help="points per default axis (default: 41)")
    p.add_argument("--margin", type=float, default=0.15, metavar="F",
                   help="margin of the default axes, a fraction of the path's extent on each side (default: 0.15)")
    c.add_loss_args(p)
    c.add_eval_args(p)
    c.add_output_args(p)
    c.allow_negative_values(p)
    p.set_defaults(func=run)
    return p


def check_args(args: argparse.Namespace):
    """The checks made before anything is loaded: ``(out, device)``."""
    from ..errors import LossmapError
    from ..grid import parse_axis

    out = c.check_output_folder(args.out)
    for name in ("x", "y"):
        if getattr(args, name) is not None:
            parse_axis(getattr(args, name), f"{name} axis")
    c.check_positive(args.samples, "--samples")
    c.check_positive(args.batch_size, "--batch-size")
    if args.points < 2:
        raise LossmapError(f"--points {args.points} must be at least 2")
    if not args.margin >= 0:
        raise LossmapError(f"--margin {args.margin} must be 0 or more, e.g. 0.15")
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise LossmapError(f"{len(args.labels)} --labels for {len(args.runs)} runs: give one label per run")
    return out, c.check_device(args.device)


def run(args: argparse.Namespace) -> int:
    out, device = check_args(args)  # before anything heavy is imported: argument errors answer at once
    from ..distributed import is_primary
    from ..trajectory import load_run, trajectory_run
    from ..trajectory.stored import summary_text

    runs = [load_run(r, min_checkpoints=1) for r in args.runs]  # a bad folder fails before the model is built
    model = c.build_model(args.model)
    data = c.load_data(args.data)
    with c.Timer() as t:
        result = trajectory_run(
            model, runs, data, x=args.x, y=args.y, origin=args.origin, points=args.points, margin=args.margin,
            include_buffers=args.include_buffers, tensor_filter=args.tensors, labels=args.labels,
            **c.compute_options(args, out, device),
        )
    if is_primary():  # under torchrun, rank 0 speaks for all
        ds = result.landscape
        print(c.summary_line(ds, out, t.seconds, computed=result.computed > 0))
        print(summary_text(ds))
    return 0
