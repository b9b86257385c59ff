"""``lossmap curve A B``: train a low-loss curve between two models, evaluate it, and draw it on its plane."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LossmapError
from . import _common as c
from . import _connect as cc


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "curve",
        help="train a low-loss Bezier curve between two models and draw it on the plane through A, B and its bend",
        description=(
            "Train the bend θ of the quadratic Bezier curve (1 − t)²A + 2t(1 − t)θ + t²B (or the polygonal chain "
            "A → θ → B) on the training data, t drawn uniformly per batch (Garipov et al. 2018); evaluate loss and "
            "error along the curve and along the straight segment at --points values of t; compute the landscape "
            "of the plane through A, B and θ and draw both paths on it. Batch-norm statistics are re-estimated at "
            "every point from the training data where the model has batch norm. Writes OUT.bend.safetensors, "
            "OUT.nc (the curve), OUT_plane.nc (the plane) and the figures OUT.png/.pdf and OUT_profile.png/.pdf."
        ),
    )
    cc.add_models(p)
    p.add_argument("--data", required=True, metavar="SPEC", help="the training data: " + c.DATA_HELP)
    p.add_argument("--out", required=True, metavar="OUT", help="stem of the files to write (e.g. runs/curve)")
    p.add_argument("--overwrite", action="store_true", help="train again, replacing the files of an earlier run")
    p.add_argument("--bends", type=int, default=1, metavar="N", help="bends of the curve (1: the one trained bend)")
    p.add_argument("--kind", choices=("bezier", "polychain"), default="bezier", help="curve shape (default: bezier)")
    p.add_argument("--epochs", type=int, default=10, metavar="E", help="passes over the training data (default: 10)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (default: 0.01)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimizer of the bend (default: sgd)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay on the bend (default: 0)")
    p.add_argument("--t-samples", type=int, default=1, metavar="K", help="values of t per batch (default: 1)")
    p.add_argument("--train-batch-size", type=int, default=64, metavar="N", help="training batch size (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order, the draws of t and dropout (default: 0)")
    p.add_argument("--points", type=int, default=61, metavar="N", help="values of t evaluated (default: 61)")
    p.add_argument("--grid", type=int, default=21, metavar="N", help="plane grid points along each axis (default: 21)")
    p.add_argument("--margin", type=float, default=0.2, help="plane margin around A, B, θ in units of ‖B − A‖ (default: 0.2)")
    cc.add_evaluation(p)
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace) -> tuple[Path, str]:
    if args.bends != 1:
        raise LossmapError(f"--bends {args.bends}: curves with one bend are supported (a Bezier curve or a two-segment chain)")
    for value, name, low in ((args.epochs, "--epochs", 1), (args.points, "--points", 2), (args.grid, "--grid", 2),
                             (args.t_samples, "--t-samples", 1), (args.train_batch_size, "--train-batch-size", 1)):
        if value < low:
            raise LossmapError(f"{name} {value} must be at least {low}")
    if not args.margin >= 0:
        raise LossmapError(f"--margin {args.margin} must be 0 or more")
    stem = Path(args.out[:-3] if args.out.endswith(".nc") else args.out)
    c.check_output_folder(stem.with_name(stem.name + ".nc"))
    cc.refuse_existing(stem.with_name(stem.name + ".bend.safetensors"), args.overwrite, "train the curve again")
    return stem, cc.check_common(args)


def _batches(data, batch_size: int, seed: int):
    """Training batches ``(inputs, target)``: a map-style dataset is shuffled from ``seed`` every epoch."""
    import torch
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return data


def _training_loss(args: argparse.Namespace, batches):
    from ..data.batches import split_batch
    from ..losses import output_transform, resolve_loss

    _, target = split_batch(next(iter(batches)))
    loss = resolve_loss(args.loss, target)
    pick = output_transform(cc.objective_options(args)["output_transform"])
    return lambda out, y: loss.fn(pick(out), y)


def run(args: argparse.Namespace) -> int:
    stem, device = _check(args)
    import xarray as xr  # noqa: F401 - fail early if the stack is incomplete

    from ..connect import train_curve
    from ..connect.curve_eval import bend_state, curve_plane, evaluate_curve, has_batch_norm, save_curve
    from ..connect.files import save_state
    from ..plot.connect import plot_curve_plane, plot_curve_profile
    from ..plot.static import save_figure

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    a, b = cc.models(args)
    data = c.load_data(args.data)
    dtype = cc.dtype_of(args.dtype)
    net = a.to(device=device, dtype=dtype)
    batches = _batches(data, args.train_batch_size, args.seed)
    say(f"training the {args.kind} bend on {args.data}: {args.epochs} epoch(s), {args.optimizer} lr={args.lr:g}")
    with c.Timer() as t:
        curve = train_curve(net, a, b, batches, _training_loss(args, batches), kind=args.kind, epochs=args.epochs,
                            lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                            weight_decay=args.weight_decay, t_samples=args.t_samples, seed=args.seed)
    say(f"training loss per epoch: {', '.join(f'{v:.4g}' for v in curve.losses)} ({t.seconds:.1f} s)")
    bend = bend_state(net, a, curve, bn_data=data, batch_size=args.batch_size)
    written = [save_state(bend, stem.with_name(stem.name + ".bend.safetensors"))]
    options = dict(cc.objective_options(args), device=device, dtype=dtype, bn_data=data)
    if has_batch_norm(net):
        say(f"batch norm: statistics re-estimated at every point from {args.data}")
    ds = evaluate_curve(net, a, b, bend, data, kind=args.kind, points=args.points, **options)
    ds.attrs.update(data=args.data, bend_checkpoint=written[0].name, train_losses=[float(v) for v in curve.losses],
                    training=dict(curve.settings, kind=args.kind, train_batch_size=args.train_batch_size))
    written.append(save_curve(ds, stem.with_name(stem.name + ".nc")))
    say(f"plane through A, B and the bend ({args.grid} points along A → B)")
    plane = curve_plane(net, a, b, bend, data, points=args.grid, margin=args.margin, out=stem.with_name(stem.name + "_plane.nc"),
                        overwrite=args.overwrite, data_description=args.data, bn_description=args.data, progress=True,
                        **options).landscape()
    written.append(stem.with_name(stem.name + "_plane.nc"))
    written += save_figure(plot_curve_plane(plane, ds)[0], stem, ("png", "pdf"))
    written += save_figure(plot_curve_profile(ds)[0], stem.with_name(stem.name + "_profile"), ("png", "pdf"))
    print(curve_summary(ds))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def curve_summary(ds) -> str:
    """Two lines: the largest loss (and error) along the curve and along the straight segment, and the barriers."""
    lines = []
    for path in ("curve", "line"):
        parts = [f"max {q} {float(ds['peak'].sel(path=path, quantity=q)):.4g} at t={float(ds['peak_t'].sel(path=path, quantity=q)):.3g}"
                 for q in (str(v) for v in ds["quantity"].values)]
        bar = float(ds["barrier"].sel(path=path, quantity="loss", definition="frankle"))
        lines.append(f"{path}: {'; '.join(parts)}; loss barrier (Frankle) {bar:.4g}")
    return "\n".join(lines)
